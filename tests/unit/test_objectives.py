"""Objectives: known values at ratio 1, finite-difference gradients (float64),
first-order agreement of log-hinge and PPO-clip, and the credit hook."""
import pytest
import torch

from pcpo.objectives import Objective, approx_kl, gaussian_mean_kl, log_hinge_loss, ppo_clip_loss
from pcpo.rollout import flow_grid


def test_values_at_ratio_one():
    A = torch.tensor([1.5, -0.7, 0.0, 2.0], dtype=torch.float64)
    lr = torch.zeros(4, dtype=torch.float64)
    ppo, inact = ppo_clip_loss(lr, A, 1e-4)
    torch.testing.assert_close(ppo, -A)
    assert not inact.any()
    hinge, inact = log_hinge_loss(lr, A, 1e-4)
    torch.testing.assert_close(hinge, 1e-4 * A.abs())
    assert inact.tolist() == [False, False, True, False]  # A = 0 gives a flat hinge
    from pcpo.objectives import logrho_clip_loss

    lrho, inact = logrho_clip_loss(lr, A, 1e-4)  # the lineage's logrho: -A (1 + log rho) at rho = 1
    torch.testing.assert_close(lrho, -A)
    assert not inact.any()


def _fd_grad(f, x, h=1e-6):
    g = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e.view(-1)[i] = h
        g.view(-1)[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("name", ["ppo_clip", "log_hinge", "ppo_clip_logrho"])
def test_gradients_match_finite_differences(name):
    torch.manual_seed(0)
    xi = 0.05
    A = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.2, -0.3], dtype=torch.float64)
    # points away from the kinks, on both sides of the trust region
    lr = torch.tensor([0.01, -0.02, 0.1, 0.2, -0.3, 0.04], dtype=torch.float64, requires_grad=True)
    obj = Objective(name, "ratio", xi)
    loss = obj.loss(lr, A)[0].sum()
    (g,) = torch.autograd.grad(loss, lr)
    fd = _fd_grad(lambda x: obj.loss(x, A)[0].sum(), lr.detach())
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)


def test_hinge_and_ppo_gradients_agree_to_first_order():
    xi = 1e-4
    A = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    for eps in [1e-7, 1e-6, 1e-5]:
        lr = (torch.tensor([1.0, -1.0, 0.5, 0.25], dtype=torch.float64) * eps).requires_grad_(True)
        (g1,) = torch.autograd.grad(ppo_clip_loss(lr, A, xi)[0].sum(), lr)
        (g2,) = torch.autograd.grad(log_hinge_loss(lr, A, xi)[0].sum(), lr)
        # d/dlr of -A exp(lr) is -A exp(lr) = -A (1 + O(lr)); the hinge gives exactly -A
        torch.testing.assert_close(g1, g2, rtol=3 * eps, atol=0)
        torch.testing.assert_close(g2, -A)


def test_clip_fraction_definitions():
    xi = 0.1
    A = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    lr = torch.log(torch.tensor([1.2, 0.8, 0.8, 1.2], dtype=torch.float64))
    _, inact = ppo_clip_loss(lr, A, xi)
    assert inact.tolist() == [True, False, True, False]
    _, inact = log_hinge_loss(lr, A, xi)
    assert inact.tolist() == [True, False, True, False]


def test_credit_hook_scales_ratio_form():
    """With step_weight == grid_weight both forms give log p_new - log p_old; the hook
    rescales ratio-form log-ratios by step_weight / grid_weight."""
    g = torch.Generator().manual_seed(1)
    grid = flow_grid(8, 0.7, "grpo", 3.0)
    idx = torch.arange(8)
    x = torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    old = torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    new = old + 1e-3 * torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    o = grid.step(idx, old, x, generator=g)
    n = grid.step(idx, new, x, prev_sample=o.prev_sample)
    gw = grid.native_weight
    for w in [gw, 2 * gw, torch.linspace(0.1, 1.0, 8, dtype=torch.float64)]:
        r = Objective("ppo_clip", "ratio").log_ratio(step_weight=w, grid_weight=gw, new_log_prob=n.log_prob, old_log_prob=o.log_prob)
        m = Objective("log_hinge", "matching").log_ratio(step_weight=w, grid_weight=gw, delta=new - old, noise=o.noise)
        torch.testing.assert_close(r, (n.log_prob - o.log_prob) * w / gw, rtol=1e-12, atol=1e-14)
        if w is gw:
            torch.testing.assert_close(m, r, rtol=1e-10, atol=1e-12)
        else:  # matching form with another weight: same first-order term, scaled by w / gw
            torch.testing.assert_close(m, r, rtol=5e-2, atol=1e-7)


def test_gaussian_kl_closed_form_matches_torch():
    g = torch.Generator().manual_seed(2)
    m1 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    m2 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    std = torch.tensor([0.3, 0.1, 1.0], dtype=torch.float64)
    kl = gaussian_mean_kl(m1, m2, std, "sum")
    s = std.view(-1, 1, 1, 1).expand_as(m1)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, s), torch.distributions.Normal(m2, s)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(kl, ref, rtol=1e-12, atol=1e-12)
    assert float(approx_kl(torch.tensor([0.2, -0.2]))) == pytest.approx(0.02)


def test_bad_objective_settings_are_rejected():
    with pytest.raises(ValueError, match="objective must be"):
        Objective("reinforce")
    with pytest.raises(ValueError, match="form"):
        Objective("ppo_clip", "difference")
    with pytest.raises(ValueError, match="clip_range"):
        Objective("ppo_clip", "ratio", 0.0)
