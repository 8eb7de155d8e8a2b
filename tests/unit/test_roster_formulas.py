"""The roster baselines' formulas against independent float64 reimplementations of their
reference code: the CPS step (FlowCPS / flow_grpo ``sde_type == 'cps'``) and its
coefficient-preserving property, and Flow-DPPO's KL-ADV mask and loss (UniRL
``_flowdppo_kl_adv_loss``) with finite-difference gradients."""
import math

import pytest
import torch

import baselines.cps  # noqa: F401 (registers the flow-cps step)
from baselines.flow_dppo import dppo_kl, kl_masked_loss
from pcpo.rollout.grid import SAMPLERS, flow_grid, make_grid

F64 = torch.float64


def _ref_cps(v, x, sigma, sigma_prev, noise_level, prev_sample):
    """sde_step_with_logprob's cps branch, written out again in float64 (per-sample sigmas)."""
    sigma = sigma.view(-1, 1, 1, 1)
    sigma_prev = sigma_prev.view(-1, 1, 1, 1)
    std_dev_t = sigma_prev * math.sin(noise_level * math.pi / 2)
    x0 = x - sigma * v
    x1 = x + v * (1 - sigma)
    mean = x0 * (1 - sigma_prev) + x1 * torch.sqrt(sigma_prev**2 - std_dev_t**2)
    log_prob = (-((prev_sample - mean) ** 2)).mean(dim=(1, 2, 3))
    return mean, std_dev_t.view(-1), log_prob


def test_cps_sampler_is_registered_through_the_step_registry():
    assert "flow-cps" in SAMPLERS and "flow-cps" in tuple(SAMPLERS)
    assert "flow-nope" not in SAMPLERS
    with pytest.raises(ValueError, match="built in"):
        from pcpo.rollout.steps import register_step

        register_step("grpo", None, None)


@pytest.mark.parametrize("level", [0.3, 0.7, 1.0])
def test_cps_step_matches_the_reference_formula(level):
    g = flow_grid(6, level, form="cps", shift=3.0)
    torch.manual_seed(0)
    x, v = torch.randn(4, 3, 5, 5, dtype=F64), torch.randn(4, 3, 5, 5, dtype=F64)
    idx = torch.tensor([0, 2, 4, 5])
    z = torch.randn_like(x)
    out = g.step(idx, v, x, noise=z)
    mean, std, _ = _ref_cps(v, x, g.timesteps[idx], g.next_timesteps[idx], level, x)
    eps = torch.finfo(F64).eps * 64
    torch.testing.assert_close(out.mean, mean, rtol=eps, atol=eps)
    torch.testing.assert_close(out.std, std, rtol=eps, atol=eps)
    torch.testing.assert_close(out.prev_sample, mean + std.view(-1, 1, 1, 1) * z, rtol=eps, atol=eps)
    # re-scoring a stored next state: the reference's constant-free log-prob
    prev = torch.randn_like(x)
    again = g.step(idx, v, x, prev_sample=prev)
    torch.testing.assert_close(again.log_prob, _ref_cps(v, x, g.timesteps[idx], g.next_timesteps[idx], level, prev)[2],
                               rtol=eps, atol=eps)
    # the grid's sensitivity C: mean = (terms without v) - C v, checked by perturbing v
    d = torch.randn_like(v)
    shifted = g.step(idx, v + d, x, noise=z).mean
    torch.testing.assert_close(shifted - out.mean, -g.coef[idx].view(-1, 1, 1, 1) * d, rtol=1e-9, atol=1e-12)
    # the last step (s' = 0) is deterministic at any level
    assert float(g.std[-1]) == 0.0 and bool((g.std[:-1] > 0).all())


@pytest.mark.parametrize("level", [0.0, 0.5, 0.9])
def test_cps_preserves_the_schedule_coefficients(level):
    """With the exact x0 and noise as the model's estimates (v = eps - x0 at x_s = (1-s) x0 + s eps),
    x' = a x0 + b eps + std z with a = 1 - s' and sqrt(b^2 + std^2) = s': the deterministic
    schedule's coefficients at s'.  The Flow-GRPO SDE's are not: its total noise exceeds s'."""
    g = flow_grid(8, level, form="cps", shift=3.0)
    s, sn = g.timesteps, g.next_timesteps
    one = torch.ones(8, 1, 1, 1, dtype=F64)
    zero = torch.zeros_like(one)
    # the mean is affine in (x0, eps): read its coefficients off two basis inputs
    def mean_of(x0, eps):
        xs = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * eps
        return g.step(torch.arange(8), eps - x0, xs, noise=torch.zeros_like(xs)).mean.view(-1)
    a, b = mean_of(one, zero), mean_of(zero, one)
    tol = 64 * torch.finfo(F64).eps
    torch.testing.assert_close(a, 1 - sn, rtol=0, atol=tol)
    torch.testing.assert_close((b**2 + g.std**2).sqrt(), sn, rtol=0, atol=tol)
    if level > 0:
        sde = flow_grid(8, level, form="grpo", shift=3.0)
        xs = s.view(-1, 1, 1, 1) * one  # x0 = 0, eps = 1, v = eps - x0 = 1
        b_sde = sde.step(torch.arange(8), one, xs, noise=torch.zeros_like(xs)).mean.view(-1)
        assert bool(((b_sde**2 + sde.std**2).sqrt() > sn + 1e-3).all())


def test_cps_credit_skips_the_deterministic_last_step():
    from pcpo.credit import plan_credit
    from pcpo.models.base import ScheduleSpec

    spec = ScheduleSpec(family="flow", shift=3.0)
    native = plan_credit(spec, "flow-cps", 6, noise_level=0.7)
    assert float(native.native[-1]) == 0.0 and bool((native.native[:-1] > 0).all())
    prop = plan_credit(spec, "flow-cps", 6, noise_level=0.7, proportional=True)
    assert float(prop.train_weight[-1]) == 0.0
    # zeta * ds on the steps with a log-prob, as the PCPO lineage applies it (no renormalisation over the
    # remaining steps: sd3_train_shared.py's ZETA * delta_t), with zeta the native sum (grid_all)
    g = prop.native_grid
    ds = (g.timesteps - g.next_timesteps).to(prop.train_weight.dtype)
    torch.testing.assert_close(prop.train_weight[:-1], native.native.sum() * ds[:-1])
    with pytest.raises(ValueError, match="zero std"):  # built-in forms still refuse a zero-std step
        plan_credit(spec, "flow-dance", 6, noise_level=0.0)
    assert make_grid(spec, "flow-cps", 6).sampler == "flow-cps"


# ------------------------------------------------------------------ Flow-DPPO

def _ref_dppo(new_logp, old_logp, new_means, old_means, adv, sigma, thr):
    """UniRL's _flowdppo_kl_adv_loss, again, per sample (float64)."""
    ratio = torch.exp(new_logp - old_logp)
    kl = ((new_means - old_means) ** 2 / (2 * sigma.view(-1, 1, 1, 1) ** 2)).mean(dim=(1, 2, 3))
    keep_kl = kl < thr
    rm = (~keep_kl & (ratio > 1) & (adv > 0)) | (~keep_kl & (ratio < 1) & (adv < 0))
    return torch.where(~rm, -adv * ratio, torch.zeros_like(ratio)), rm, kl


def test_flow_dppo_mask_and_loss_match_the_reference():
    torch.manual_seed(3)
    B = 16
    old = torch.randn(B, 2, 3, 3, dtype=F64)
    # half the samples barely move (KL below threshold), half move a lot
    scale = torch.where(torch.arange(B) % 2 == 0, 1e-4, 1.0).to(F64).view(-1, 1, 1, 1)
    new = old + scale * torch.randn_like(old)
    sigma = torch.rand(B, dtype=F64) + 0.2
    lr = 0.1 * torch.randn(B, dtype=F64)
    adv = torch.randn(B, dtype=F64)
    kl = dppo_kl(new, old, sigma)
    loss, rm = kl_masked_loss(lr, adv, kl, 1e-5)
    ref_loss, ref_rm, ref_kl = _ref_dppo(lr, torch.zeros(B, dtype=F64), new, old, adv, sigma, 1e-5)
    torch.testing.assert_close(kl, ref_kl)
    assert rm.tolist() == ref_rm.tolist() and rm.any() and (~rm).any()
    torch.testing.assert_close(loss, ref_loss)
    assert not rm[kl < 1e-5].any()  # low-KL samples are never masked


def test_flow_dppo_gradients_match_finite_differences_and_vanish_where_masked():
    A = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.2, -0.3], dtype=F64)
    lr = torch.tensor([0.01, -0.02, 0.1, 0.2, -0.3, 0.04], dtype=F64, requires_grad=True)
    kl = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=F64)  # only sample 0 inside the region

    def f(x):
        return kl_masked_loss(x, A, kl, 1e-5)[0].sum()

    (g,) = torch.autograd.grad(f(lr), lr)
    h = 1e-6
    fd = torch.stack([(f(lr.detach() + h * e) - f(lr.detach() - h * e)) / (2 * h) for e in torch.eye(6, dtype=F64)])
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)
    rm = kl_masked_loss(lr.detach(), A, kl, 1e-5)[1]
    # outside the KL region, removed where rho is already on the advantage's side: 1 (rho < 1, A < 0), 2 (rho > 1, A > 0)
    assert rm.tolist() == [False, True, True, False, False, False]
    assert bool((g[rm] == 0).all()) and bool((g[~rm] != 0).all())
    torch.testing.assert_close(g[~rm], (-A * lr.detach().exp())[~rm])


def test_pcpo_variants_exist_for_cps_and_flow_dppo():
    from pcpo.algorithms import get_algorithm

    for n in ("cps", "flow_dppo"):
        fw = get_algorithm(f"pcpo-{n}")
        assert fw.objective == "log_hinge" and fw.base == n and fw.samplers == get_algorithm(n).samplers


# ------------------------------------------------------------------ AWM

def _ref_awm_log_prob(v, eps, x0, t, power=0.25):
    """compute_log_prob_awm with weighting 'ghuber', written out again (float64)."""
    lp = -((v - (eps - x0)) ** 2)
    lp = lp.mean(dim=tuple(range(1, lp.ndim)))
    return -(torch.pow(-lp + 1e-10, power) - torch.pow(torch.tensor(1e-10, dtype=F64), power)) * t / power


def _awm_ctx(v, x0, eps, t, adv, old_pred, grid, idx, options=None):
    from pcpo.objectives import StepContext

    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    return StepContext(torch.zeros(len(adv), dtype=F64), adv, 1.0, idx=idx, grid=grid, options=options or {},
                       pred=v, old_pred=old_pred, sample=xt, final_sample=x0)


def test_awm_loss_matches_the_reference_and_its_gradient():
    from baselines.awm import awm_log_prob, awm_loss

    g = flow_grid(6, 0.7, form="grpo", shift=3.0)
    torch.manual_seed(5)
    B = 5
    idx = torch.tensor([0, 1, 2, 3, 4])
    t = g.timesteps[idx]
    x0, eps = torch.randn(B, 2, 3, 3, dtype=F64), torch.randn(B, 2, 3, 3, dtype=F64)
    v = (eps - x0 + 0.3 * torch.randn_like(x0)).requires_grad_(True)
    old = (v + 0.05 * torch.randn_like(x0)).detach()
    adv = torch.tensor([3.0, -7.0, 0.5, -1.0, 6.0], dtype=F64)
    ref_lp = _ref_awm_log_prob(v.detach(), eps, x0, t)
    torch.testing.assert_close(awm_log_prob(v.detach(), eps - x0, t), ref_lp)
    loss, inactive = awm_loss(_awm_ctx(v, x0, eps, t, adv, old, g, idx))
    a = adv.clamp(-5, 5) / 5
    ema = ((v.detach() - old) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss.detach(), -a + ema)  # ratio 1 on-policy, clip range 1 never binds
    assert not inactive.any()
    # gradient: -A' grad lp + grad of the slow-copy term, against finite differences of the reference
    (gv,) = torch.autograd.grad(loss.sum(), v)

    def f(vv):
        return (-a * torch.exp(_ref_awm_log_prob(vv, eps, x0, t) - ref_lp) + ((vv - old) ** 2).flatten(1).mean(1)).sum()

    h, fd = 1e-6, torch.zeros_like(v)
    for i in range(v.numel()):
        e = torch.zeros_like(v).view(-1)
        e[i] = h
        e = e.view_as(v)
        fd.view(-1)[i] = (f(v.detach() + e) - f(v.detach() - e)) / (2 * h)
    torch.testing.assert_close(gv, fd, rtol=1e-5, atol=1e-8)


def test_awm_stratified_steps_are_one_per_stratum():
    from baselines.awm import select_stratified
    from pcpo.trained_steps import STEP_SELECTORS

    gen = torch.Generator().manual_seed(0)
    s = select_stratified(14, 0.9, 200, gen)  # the reference's 14 steps, fraction 0.9: 6 strata of 2 over 12
    assert s.shape == (200, 6) and STEP_SELECTORS.get("awm_stratified")[1](14, 0.9) == 6
    for k in range(6):
        assert set(s[:, k].tolist()) == {2 * k, 2 * k + 1}


def test_pcpo_refuses_awm_with_its_reason():
    from pcpo.algorithms import NotTransformable, algorithm_names, get_algorithm

    with pytest.raises(NotTransformable, match="does not use per-step log-likelihood ratios"):
        get_algorithm("pcpo-awm")
    names = algorithm_names()
    assert "awm" in names and "pcpo-awm" not in names


def test_a_registered_step_form_reaches_grids_and_frameworks():
    """The step registry on its own: a form registered here (the Euler step written as a 'new' form)
    becomes sampler flow-<name> for grids, scaled grids and Framework validation."""
    import dataclasses

    from pcpo.algorithms import FRAMEWORKS
    from pcpo.rollout.steps import FLOW_STEP_FORMS, register_step

    register_step("test_euler", lambda s, sn, lv, s_max=None: (s - sn, torch.zeros_like(s), torch.zeros_like(s)),
                  lambda v, x, s, sn, lv, s_max=None: x - (s - sn) * v)
    try:
        g = flow_grid(5, 0.7, form="test_euler")
        ref = flow_grid(5, 0.0, form="dance")
        torch.manual_seed(2)
        x, v, idx = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2), torch.tensor([0, 3, 4])
        torch.testing.assert_close(g.step(idx, v, x).prev_sample, ref.step(idx, v, x).prev_sample)
        torch.testing.assert_close(g.scaled(torch.ones(5)).coef, ref.coef)
        fw = dataclasses.replace(FRAMEWORKS.get("flow_grpo"), name="x", samplers={"flow": "flow-test_euler"})
        assert fw.sampler_for("flow") == "flow-test_euler"
    finally:
        FLOW_STEP_FORMS._items.pop("test_euler", None)
    assert "flow-test_euler" not in SAMPLERS
