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


# ------------------------------------------------------------------ DGPO

import baselines.dgpo  # noqa: E402,F401 (registers the dgpo objective, selector, hook and framework)


def _ref_dgpo_step(model_v, old_v, ref_v, target_v, advantages, group_of, beta_dpo, group_size, clip_range):
    """train_sd3_dgpo.py's clipped step and compute_group_dgpo_loss_allreduce, written out again for one
    process (the all-reduce of the group sums is then the identity); float64."""
    batch_size = model_v.shape[0]
    dsm_loss = 1 * (target_v - model_v).square().reshape(batch_size, -1).mean(dim=1)
    old_dsm_loss = 1 * (target_v - old_v).square().reshape(batch_size, -1).mean(dim=1)
    ratio = torch.exp(-dsm_loss + old_dsm_loss)
    should_clip = torch.where(advantages > 0, ratio > 1.0 + clip_range, ratio < 1.0 - clip_range)
    dsm_loss = torch.where(should_clip, dsm_loss.detach(), dsm_loss)
    with torch.no_grad():
        ref_dsm_loss = (target_v - ref_v).square().reshape(batch_size, -1).mean(dim=1)
    delta_diff = dsm_loss.detach() - ref_dsm_loss.detach()
    per_sample_term = advantages * beta_dpo * delta_diff / group_size
    num_groups = int(group_of.max()) + 1
    local_group_sums = torch.zeros(num_groups, dtype=per_sample_term.dtype)
    local_group_sums.scatter_add_(0, group_of, per_sample_term)
    group_weights = torch.sigmoid(local_group_sums.clone().detach())
    local_weights = group_weights[group_of]
    return (local_weights.detach() * advantages * dsm_loss).mean(), should_clip


def _dgpo_case(seed, spread=0.3):
    torch.manual_seed(seed)
    g = flow_grid(10, 0.7, form="grpo", shift=3.0)
    G, n_groups = 4, 3
    B = G * n_groups
    group_of = torch.arange(n_groups).repeat_interleave(G)
    gids = group_of * 7 + 3  # arbitrary ids, as the trainer's
    idx = torch.full((B,), 2)
    s = g.timesteps[idx].view(-1, 1, 1, 1)
    x0 = torch.randn(B, 2, 3, 3, dtype=F64)
    eps = torch.randn(n_groups, 2, 3, 3, dtype=F64)[group_of]  # shared within a group
    xt = (1 - s) * x0 + s * eps
    target = eps - x0
    v = (target + spread * torch.randn_like(x0)).requires_grad_(True)
    old = (v + 0.05 * torch.randn_like(x0)).detach()
    ref = (v + 0.2 * torch.randn_like(x0)).detach()
    adv = torch.randn(B, dtype=F64) * 1.5
    return g, idx, xt, x0, target, v, old, ref, adv, group_of, gids, G


def _ctx(g, idx, xt, x0, v, old, ref, adv, gids, clip_range, options=None):
    from pcpo.objectives import StepContext

    return StepContext(torch.zeros(len(adv), dtype=F64), adv, clip_range, idx=idx, grid=g,
                       options=options or {"beta_dpo": 10.0, "adv_clip_max": 5.0, "clip_dsm": True}, pred=v,
                       old_pred=old, sample=xt, final_sample=x0, group_ids=gids, ref_pred_fn=lambda: ref)


@pytest.mark.parametrize("seed,clip_range", [(0, 5e-2), (1, 1e-3), (2, 10.0)])
def test_dgpo_loss_matches_the_reference_and_its_clip(seed, clip_range):
    from baselines.dgpo import dgpo_loss

    g, idx, xt, x0, target, v, old, ref, adv, group_of, gids, G = _dgpo_case(seed)
    ours, clipped = dgpo_loss(_ctx(g, idx, xt, x0, v, old, ref, adv, gids, clip_range))
    want, want_clip = _ref_dgpo_step(v, old, ref, target, adv.clamp(-5, 5), group_of, 10.0, G, clip_range)
    assert torch.equal(clipped, want_clip)
    if clip_range == 1e-3:
        assert clipped.any() and not clipped.all()  # the case exercises both sides of the clip
    torch.testing.assert_close(ours.mean(), want, rtol=1e-10, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.mean(), v)
    (g_ref,) = torch.autograd.grad(want, v)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-14)
    assert bool((g_ours.flatten(1)[clipped] == 0).all())  # clipped rows give no gradient


def test_dgpo_gradient_is_the_group_dpo_likelihood_gradient():
    """Unclipped, the gradient of mean(w A dsm) is (G / (beta B)) times that of the group-level DPO
    loss sum_g -log sigmoid(beta / G sum_{i in g} A_i (ref_dsm_i - dsm_i)) (the README's objective)."""
    from baselines.dgpo import dgpo_loss

    g, idx, xt, x0, target, v, old, ref, adv, group_of, gids, G = _dgpo_case(4)
    beta, B = 10.0, len(adv)
    ours, clipped = dgpo_loss(_ctx(g, idx, xt, x0, v, old, ref, adv, gids, 1e9))
    assert not clipped.any()
    (g_ours,) = torch.autograd.grad(ours.mean(), v)
    dsm = (target - v).square().flatten(1).mean(1)
    ref_dsm = (target - ref).square().flatten(1).mean(1)
    a = adv.clamp(-5, 5)
    margins = torch.stack([(beta / G * a * (ref_dsm - dsm))[group_of == k].sum() for k in range(int(group_of.max()) + 1)])
    dpo = -torch.nn.functional.logsigmoid(margins).sum()
    (g_dpo,) = torch.autograd.grad(dpo, v)
    torch.testing.assert_close(g_ours, g_dpo * G / (beta * B), rtol=1e-10, atol=1e-14)


def test_dgpo_steps_are_shared_distinct_and_from_the_truncated_pool():
    from baselines.dgpo import select_shared
    from pcpo.trained_steps import trained_step_count

    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        s = select_shared(10, 0.7, 6, gen)  # trunc_steps 6 of 10 steps: pool 0..6, M = 4
        assert s.shape == (6, 4) and bool((s == s[0]).all()) and len(set(s[0].tolist())) == 4
        seen |= set(s[0].tolist())
    assert seen == set(range(7)) and trained_step_count("dgpo", 10, 0.7) == 4
    assert trained_step_count("dgpo", 6, 0.5) == 3  # a pool smaller than M trains all of it


def test_group_micro_batches_keep_groups_whole():
    from pcpo.algorithms import micro_batch_rows

    gids = torch.arange(5).repeat_interleave(4)
    g1 = torch.Generator().manual_seed(3)
    batches = micro_batch_rows("groups", gids, 8, g1)
    assert sorted(torch.cat(batches).tolist()) == list(range(20)) and [len(b) for b in batches] == [8, 8, 4]
    for b in batches:
        for k in gids[b].unique():
            assert int((gids[b] == k).sum()) == 4
    orders = {tuple(gids[torch.cat(micro_batch_rows("groups", gids, 8, torch.Generator().manual_seed(s)))]
                    .unique_consecutive().tolist()) for s in range(10)}
    assert len(orders) > 1  # the groups are shuffled
    # the default is the old behaviour: the same random permutation of the samples
    g2, g3 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(torch.cat(micro_batch_rows("samples", gids, 8, g2)), torch.randperm(20, generator=g3))
    with pytest.raises(ValueError, match="train_batch_size: 6 is not a multiple of the group size"):
        micro_batch_rows("groups", gids, 6, g1)


def test_pcpo_refuses_dgpo_with_its_reason():
    from pcpo.algorithms import NotTransformable, algorithm_names, get_algorithm

    with pytest.raises(NotTransformable, match="does not use per-step log-likelihood ratios"):
        get_algorithm("pcpo-dgpo")
    names = algorithm_names()
    assert "dgpo" in names and "pcpo-dgpo" not in names


def test_slow_copy_decay_is_the_reference_rule():
    from baselines.dgpo import slow_copy_decay

    # ema_ref_decay = min(0.3, 0.001 * global_step), global_step counting the optimizer steps before this one
    assert [slow_copy_decay(s) for s in (0, 1, 150, 299, 300, 5000)] == [min(0.3, 0.001 * s) for s in
                                                                       (0, 1, 150, 299, 300, 5000)]
