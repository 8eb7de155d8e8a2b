"""Flow-GRPO-Fast and DGPO against independent float64 reimplementations of their reference
code: the fast pipeline's SDE window and its branched ODE/CPS trajectory
(yifan123/flow_grpo ``sd3_pipeline_with_logprob_fast.py``), and DGPO's group preference loss
(Luo-Yihong/DGPO ``compute_group_dgpo_loss_allreduce`` and the clipped training step of
``scripts/train_sd3_dgpo.py``)."""
import math

import pytest
import torch
from scipy import stats

import baselines.flow_grpo_fast  # noqa: F401 (registers the window schedule and the framework)
from pcpo.rollout.grid import flow_grid

F64 = torch.float64


# ------------------------------------------------------------------ Flow-GRPO-Fast

def test_fast_window_starts_are_uniform_on_the_reference_support():
    """``random.randint(r0, r1 - w)``: every start in [r0, r1 - w], each equally likely."""
    from baselines.flow_grpo_fast import window_start

    T, w = 10, 3  # the reference config: window 3 in (0, T // 2) -> starts 0, 1, 2
    n = 3000
    starts = [window_start(e, T, w) for e in range(n)]
    support = set(range(0, T // 2 - w + 1))
    assert set(starts) == support
    counts = [starts.count(k) for k in sorted(support)]
    # chi-square goodness of fit against the uniform law; 1e-6 is a level no fair draw reaches by chance
    assert stats.chisquare(counts).pvalue > 1e-6, counts
    # an explicit range, as config/base.py's (0, 10) with a window of 2
    assert set(window_start(e, 10, 2, (0, 10)) for e in range(500)) == set(range(9))
    with pytest.raises(ValueError, match="window_range"):
        window_start(0, 4, 3)  # (0, 2) cannot hold 3 steps


def _ref_fast_rollout(x, vs, zs, sigmas, noise_level, start, w):
    """The fast pipeline's denoising loop with the cps step, written out again (float64):
    ``cur_noise_level`` is ``noise_level`` for ``start <= i < start + w``, else 0; the latents,
    log-probs and timesteps of the window are kept."""
    kept_lat, kept_lp, kept_i = [], [], []
    for i in range(len(sigmas) - 1):
        lvl = noise_level if start <= i < start + w else 0.0
        if i == start:
            kept_lat.append(x)
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        std_dev_t = sigma_prev * math.sin(lvl * math.pi / 2)
        x0 = x - sigma * vs[i]
        x1 = x + vs[i] * (1 - sigma)
        mean = x0 * (1 - sigma_prev) + x1 * torch.sqrt(sigma_prev**2 - std_dev_t**2)
        x = mean + std_dev_t * zs[i]
        lp = (-((x - mean) ** 2)).mean(dim=(1, 2, 3))
        if start <= i < start + w:
            kept_lat.append(x)
            kept_lp.append(lp)
            kept_i.append(i)
    return x, kept_lat, kept_lp, kept_i


@pytest.mark.parametrize("epoch", [0, 1, 7])
def test_fast_trajectory_is_the_reference_ode_with_a_cps_window(epoch):
    from pcpo.noise_schedules import schedule_levels
    from pcpo.trained_steps import select_steps

    T, w, a = 10, 3, 0.8
    g = flow_grid(T, a, form="cps", shift=3.0, spacing="pipeline", span=(1.0, 1e-3))
    lv = schedule_levels("flow_grpo_fast_window", T, epoch, {"window_size": w, "window_range": None})
    start = int(torch.nonzero(lv)[0])
    eg = g.scaled(lv)
    torch.manual_seed(epoch)
    B = 3
    x = torch.randn(B, 2, 4, 4, dtype=F64)
    vs = [torch.randn(B, 2, 4, 4, dtype=F64) for _ in range(T)]
    zs = [torch.randn(B, 2, 4, 4, dtype=F64) for _ in range(T)]
    sigmas = torch.cat([g.timesteps, g.next_timesteps[-1:]])
    x_ref, lat, lps, kept = _ref_fast_rollout(x, vs, zs, sigmas, a, start, w)
    states, lp_ours = [x], []
    for i in range(T):
        out = eg.step(torch.full((B,), i), vs[i], states[-1], noise=zs[i])
        states.append(out.prev_sample)
        lp_ours.append(out.log_prob)
    torch.testing.assert_close(states[-1], x_ref, rtol=1e-12, atol=1e-12)
    for k, i in enumerate(kept):
        torch.testing.assert_close(states[i], lat[k], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lp_ours[i], lps[k], rtol=1e-12, atol=1e-12)
    # the ODE steps outside the window are deterministic (std 0), the window's are not
    assert bool((eg.std[lv == 0] == 0).all()) and bool((eg.std[lv == 1] > 0).all())
    # only the window is trained, every step of it, in order, for every sample
    sel = select_steps("stochastic", T, 1.0, 4, torch.Generator().manual_seed(0), stochastic=lv > 0)
    assert sel.tolist() == [kept] * 4


def test_fast_has_a_pcpo_variant_over_its_window():
    from pcpo.algorithms import algorithm_names, get_algorithm

    fw = get_algorithm("flow_grpo_fast")
    assert fw.samplers == {"flow": "flow-cps"} and fw.noise_schedule == "flow_grpo_fast_window"
    assert fw.clip_range == 1e-5 and fw.kl_beta == 0.0 and fw.defaults["guidance_scale"] == 1.0
    p = get_algorithm("pcpo-flow_grpo_fast")
    assert p.objective == "log_hinge" and p.proportional and p.noise_schedule == fw.noise_schedule
    assert {"flow_grpo_fast", "pcpo-flow_grpo_fast", "pcpo-base-flow_grpo_fast"} <= set(algorithm_names())
