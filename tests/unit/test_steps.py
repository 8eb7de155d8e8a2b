"""Sampler steps against independent references: diffusers' DDIMScheduler.step,
torch.distributions.Normal, and float64 recomputation."""
import math

import pytest
import torch
from diffusers import DDIMScheduler

from pcpo.credit import sd15_schedule
from pcpo.models.base import spec_from_scheduler
from pcpo.rollout import ddim_grid, ddim_step, flow_grid, flow_step, matching_log_ratio, reduce_dims
from pcpo.rollout.steps import flow_grpo_sigma


def sd15_scheduler():
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, steps_offset=1, set_alpha_to_one=False, clip_sample=False)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(dtype, rtol, eta):
    sched = sd15_scheduler()
    sched.set_timesteps(50)
    # same alphas as diffusers (it builds its betas in float32), so the step itself is compared
    grid = ddim_grid(spec_from_scheduler(sched), 50, eta=eta)
    assert torch.equal(grid.timesteps, sched.timesteps.long())
    g = torch.Generator().manual_seed(0)
    for i in [0, 1, 17, 30, 48, 49]:  # includes the last step
        x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64).to(dtype)
        eps = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64).to(dtype)
        z = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64).to(dtype)
        t = int(sched.timesteps[i])
        # diffusers in float64 / float32 with its alphas in the same dtype
        sched.alphas_cumprod = sched.alphas_cumprod.to(dtype)
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(dtype)
        ref = sched.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        idx = torch.full((3,), i, dtype=torch.long)
        ours = grid.step(idx, eps, x, noise=z).prev_sample
        assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(ours.to(dtype), ref, rtol=rtol, atol=rtol * ref.abs().max().item())


def test_sd15_schedule_matches_diffusers_config():
    sched = sd15_scheduler()
    ours = sd15_schedule()
    torch.testing.assert_close(ours.alphas_cumprod.float(), sched.alphas_cumprod, rtol=1e-6, atol=1e-7)
    assert ours.final_alpha_cumprod == pytest.approx(float(sched.final_alpha_cumprod), rel=1e-6)
    sched.set_timesteps(50)
    assert torch.equal(ddim_grid(ours, 50).timesteps, sched.timesteps.long())


def test_ddim_grid_last_step_uses_final_alpha():
    grid = ddim_grid(sd15_schedule(), 50, eta=1.0)
    assert int(grid.timesteps[-1]) == 1 and int(grid.next_timesteps[-1]) < 0
    assert float(grid.alpha_prod_next[-1]) == pytest.approx(float(sd15_schedule().alphas_cumprod[0]))
    assert (grid.std > 0).all()


def test_per_sample_timesteps_in_one_batch():
    grid = ddim_grid(sd15_schedule(), 20, eta=1.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    e = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    idx = torch.tensor([0, 5, 12, 19])
    out = grid.step(idx, e, x, noise=z)
    for b in range(4):
        one = grid.step(idx[b:b + 1], e[b:b + 1], x[b:b + 1], noise=z[b:b + 1])
        torch.testing.assert_close(out.prev_sample[b:b + 1], one.prev_sample, rtol=0, atol=0)
        torch.testing.assert_close(out.log_prob[b:b + 1], one.log_prob, rtol=0, atol=0)


def _normal_ref(x, mean, std, reduction):
    lp = torch.distributions.Normal(mean, std.reshape(-1, *[1] * (x.ndim - 1)).expand_as(mean)).log_prob(x)
    return reduce_dims(lp, reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("sampler", ["ddim", "flow-dance", "flow-grpo"])
def test_log_prob_equals_torch_normal(sampler, reduction):
    g = torch.Generator().manual_seed(2)
    if sampler == "ddim":
        grid = ddim_grid(sd15_schedule(), 10, eta=1.0)
    else:
        grid = flow_grid(10, 0.7, form=sampler.split("-")[1], shift=3.0)
    for i in range(grid.num_steps):
        x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
        pred = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
        idx = torch.full((2,), i)
        out = grid.step(idx, pred, x, generator=g, reduction=reduction)
        ref = _normal_ref(out.prev_sample, out.mean, out.std, reduction)
        torch.testing.assert_close(out.log_prob, ref, rtol=1e-12, atol=1e-12)
        # re-scoring a given next state returns the same log-prob and recovers the noise
        again = grid.step(idx, pred, x, prev_sample=out.prev_sample, reduction=reduction)
        torch.testing.assert_close(again.log_prob, out.log_prob, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(again.noise, out.noise, rtol=1e-9, atol=1e-9)


def test_flow_dance_matches_its_written_form():
    """The DanceGRPO mean via the score and the Flow-GRPO-style affine form agree
    when Flow-GRPO's sigma~ is replaced by a constant (same SDE, different noise)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    s = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    sn = s - torch.tensor([0.1, 0.05, 0.2], dtype=torch.float64)
    eta = 0.3
    out = flow_step(v, x, s, sn, eta, form="dance", noise=torch.zeros_like(x))
    S = s.view(-1, 1, 1, 1)
    ds = (s - sn).view(-1, 1, 1, 1)
    affine = x * (1 - eta**2 * ds / (2 * S)) - v * (1 + eta**2 * (1 - S) / (2 * S)) * ds
    torch.testing.assert_close(out.mean, affine, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.std, eta * (s - sn).sqrt(), rtol=1e-12, atol=0)


def test_flow_grpo_sigma_guard_at_s_one():
    s = torch.tensor([1.0, 0.5], dtype=torch.float64)
    sig = flow_grpo_sigma(s, 0.7, s_max=0.9)
    assert sig[0] == pytest.approx(0.7 * math.sqrt(1.0 / (1 - 0.9)))
    assert sig[1] == pytest.approx(0.7)


def test_zero_noise_flow_step_is_euler():
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    v = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    s, sn = torch.tensor([0.8, 0.4], dtype=torch.float64), torch.tensor([0.6, 0.1], dtype=torch.float64)
    out = flow_step(v, x, s, sn, 0.0, form="dance")
    torch.testing.assert_close(out.prev_sample, x - (s - sn).view(-1, 1, 1, 1) * v)
    assert torch.equal(out.log_prob, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("sampler", ["ddim", "flow-dance", "flow-grpo"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matching_form_equals_log_prob_difference_float64(sampler, reduction):
    g = torch.Generator().manual_seed(4)
    grid = ddim_grid(sd15_schedule(), 20, eta=1.0) if sampler == "ddim" else flow_grid(16, 0.5, sampler[5:], 3.0)
    for i in range(grid.num_steps):
        idx = torch.full((3,), i)
        x = torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
        old = torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
        new = old + 0.05 * torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
        o = grid.step(idx, old, x, generator=g, reduction=reduction)
        n = grid.step(idx, new, x, prev_sample=o.prev_sample, reduction=reduction)
        diff = n.log_prob - o.log_prob
        w = grid.native_weight[idx]
        match = matching_log_ratio(new - old, o.noise, w, reduction)
        torch.testing.assert_close(match, diff, rtol=1e-10, atol=1e-10)


def _precision_errors(dtype, seed=5):
    """Errors of the two log-ratio forms, computed in ``dtype``, against float64.

    The policy network runs in ``dtype``: its predictions, the states and the
    stored noise are ``dtype`` tensors, and so is all the arithmetic of the
    form, as in a pipeline that does not upcast (the situation the paper blames).
    """
    g = torch.Generator().manual_seed(seed)
    grid = ddim_grid(sd15_schedule(), 50, eta=1.0)
    errs = {"difference": [], "matching": []}
    for i in [0, 10, 25, 40, 48, 49]:
        idx = torch.full((8,), i)
        x = torch.randn(8, 4, 16, 16, generator=g, dtype=torch.float64).to(dtype).double()
        old = torch.randn(8, 4, 16, 16, generator=g, dtype=torch.float64).to(dtype).double()
        new = (old + 1e-2 * torch.randn(8, 4, 16, 16, generator=g, dtype=torch.float64)).to(dtype).double()
        o = grid.step(idx, old, x, generator=g)
        xn = o.prev_sample.to(dtype).double()
        ref = grid.step(idx, new, x, prev_sample=xn).log_prob - grid.step(idx, old, x, prev_sample=xn).log_prob

        def lowp_logprob(pred):
            a_t = grid.alpha_prod[idx].view(-1, 1, 1, 1).to(dtype)
            a_p = grid.alpha_prod_next[idx].view(-1, 1, 1, 1).to(dtype)
            sig = grid.std[idx].view(-1, 1, 1, 1).to(dtype)
            p, xx, y = pred.to(dtype), x.to(dtype), xn.to(dtype)
            x0 = (xx - (1 - a_t).sqrt() * p) / a_t.sqrt()
            mean = a_p.sqrt() * x0 + (1 - a_p - sig**2).sqrt() * p
            lp = -((y - mean) ** 2) / (2 * sig**2) - sig.log() - math.log(math.sqrt(2 * math.pi))
            return lp.mean(dim=(1, 2, 3))

        diff_form = (lowp_logprob(new) - lowp_logprob(old)).double()
        z = ((xn - o.mean) / grid.std[idx].view(-1, 1, 1, 1)).to(dtype)
        w = grid.native_weight[idx].to(dtype)
        match_form = matching_log_ratio((new.to(dtype) - old.to(dtype)), z, w).double()
        assert match_form.dtype == torch.float64
        errs["difference"].append((diff_form - ref).abs().max().item())
        errs["matching"].append((match_form - ref).abs().max().item())
    return {k: max(v) for k, v in errs.items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matching_form_beats_difference_form_in_low_precision(dtype, capsys):
    """The matching form avoids the cancellation of two large log-densities."""
    errs = _precision_errors(dtype)
    with capsys.disabled():
        print(f"\n[{dtype}] max |log-ratio error| vs float64: difference form {errs['difference']:.3e}, "
              f"matching form {errs['matching']:.3e}")
    assert errs["matching"] < errs["difference"]
