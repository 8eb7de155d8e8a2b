"""The tolerance helpers the cross-process and cross-batch tests use hold what they promise:
the reordered-sum bound covers float32 sums in any order, and the Adam-step tolerance covers a
rounding-level gradient change while a sign change of the gradient exceeds it."""
import torch

from tests.helpers import F32_U, adam_step_atol, reordered_sum_tol


def test_unit_roundoff_is_half_float32_eps():
    assert F32_U == torch.finfo(torch.float32).eps / 2


def test_reordered_sums_stay_within_the_bound():
    g = torch.Generator().manual_seed(0)
    for n in (2, 7, 64, 1000, 20000):
        x = torch.randn(n, generator=g, dtype=torch.float32) * torch.logspace(-3, 3, n, dtype=torch.float32)
        exact = float(x.double().sum())
        scale = float(x.double().abs().sum())
        sums = [float(x.sum()), float(x.flip(0).sum()), float(x[torch.randperm(n, generator=g)].sum()),
                float(x.reshape(-1, 1).sum(0)) if n < 100 else float(torch.cumsum(x, 0)[-1])]
        seq = torch.zeros((), dtype=torch.float32)
        for v in x[: min(n, 2000)]:  # strictly sequential float32 accumulation (the bound's worst order)
            seq = seq + v
        if n <= 2000:
            sums.append(float(seq))
        tol = reordered_sum_tol(n, scale)
        for a in sums:
            assert abs(a - exact) <= tol / 2, (n, a, exact)
        for a in sums:
            for b in sums:
                assert abs(a - b) <= tol


def test_adam_step_tolerance_separates_rounding_from_a_real_difference():
    lr, eps = 1e-3, 1e-8

    def adam_first_step(grad):
        w = torch.nn.Parameter(torch.zeros_like(grad))
        opt = torch.optim.AdamW([w], lr=lr, eps=eps, weight_decay=0.0)
        w.grad = grad.clone()
        opt.step()
        return w.detach()

    g = torch.Generator().manual_seed(1)
    # 32 per-(sample, step) gradient contributions per weight that partly cancel (advantages of
    # both signs), so some sums land within rounding of zero on Adam's eps scale
    c = torch.randn(32, 4096, generator=g) * torch.logspace(-9, -3, 4096)
    one_process = torch.zeros(4096)
    for row in c:  # accumulated in order
        one_process = one_process + row
    half = [torch.zeros(4096), torch.zeros(4096)]
    for k, row in enumerate(c):  # two processes accumulate their halves, then all-reduce
        half[k % 2] = half[k % 2] + row
    two_processes = half[0] + half[1]
    assert not torch.equal(one_process, two_processes)  # the orders do round differently
    tol = adam_step_atol(lr, steps=1)
    assert float((adam_first_step(one_process) - adam_first_step(two_processes)).abs().max()) <= tol
    # a real difference: half the contributions with the other sign (flipped advantages)
    flipped = (c * torch.where(torch.arange(32) % 2 == 0, 1.0, -1.0)[:, None]).sum(0)
    assert float((adam_first_step(one_process) - adam_first_step(flipped)).abs().max()) > 10 * tol
