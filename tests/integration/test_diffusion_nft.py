"""DiffusionNFT: a likelihood-free baseline on the same contracts (a rollout hook with
state, an ODE noise schedule, an objective on predictions).  Its loss is checked
against a float64 recomputation of the reference's formula, its sampling policy
against the reference's soft update, and its run against an uninterrupted one."""
import math

import pytest
import torch

from tests.integration.test_trainer import make_config, read_rows


def reference_loss(v, v_old, x, x0, t, adv, beta, amax):
    """train_nft_sd3.py's policy loss, written out in float64 on plain tensors."""
    v, v_old, x, x0 = (a.double() for a in (v, v_old, x, x0))
    t = t.double().view(-1, 1, 1, 1)
    a = adv.double().clamp(-amax, amax)
    r = ((a / amax) / 2 + 0.5).clamp(0, 1)
    pos = beta * v + (1 - beta) * v_old
    neg = (1 + beta) * v_old - beta * v
    out = []
    for p in (pos, neg):
        x0p = x - t * p
        w = (x0p - x0).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-5)
        out.append(((x0p - x0) ** 2 / w).mean(dim=(1, 2, 3)))
    return (r * out[0] / beta + (1 - r) * out[1] / beta) * amax


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_nft_loss_is_the_reference_formula(beta):
    from baselines.diffusion_nft import nft_loss
    from pcpo.objectives import StepContext
    from pcpo.rollout.grid import flow_grid

    torch.manual_seed(0)
    g = flow_grid(6, 0.7, form="grpo", shift=3.0)
    idx = torch.tensor([0, 2, 3, 5])
    x0, eps = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    t = g.timesteps[idx].float()
    x = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    v = torch.randn(4, 1, 4, 4, requires_grad=True)
    v_old = torch.randn(4, 1, 4, 4)
    adv = torch.tensor([7.0, 1.5, -0.3, -9.0])  # beyond the clip on both sides
    ctx = StepContext(torch.zeros(4), adv, 1e-4, idx=idx, grid=g, options={"beta": beta, "adv_clip_max": 5.0},
                      pred=v, old_pred=v_old, sample=x, final_sample=x0)
    loss, inactive = nft_loss(ctx)
    ref = reference_loss(v.detach(), v_old, x, x0, t, adv, beta, 5.0)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    assert not inactive.any()
    # r = 1 (A >= 5) moves x0(v+) towards x0, r = 0 (A <= -5) moves x0(v-) there
    loss.sum().backward()
    with torch.no_grad():
        v2 = v - 1e-3 * v.grad
        tb = t.view(-1, 1, 1, 1)
        err = lambda vv, s: ((x[s] - tb[s] * vv[s] - x0[s]) ** 2).sum()  # noqa: E731
        pos = lambda vv: beta * vv + (1 - beta) * v_old  # noqa: E731
        neg = lambda vv: (1 + beta) * v_old - beta * vv  # noqa: E731
        assert err(pos(v2), 0) < err(pos(v), 0)
        assert err(neg(v2), 3) < err(neg(v), 3)


def test_sampling_policy_decay_is_the_reference_schedule():
    from baselines.diffusion_nft import old_policy_decay

    assert [old_policy_decay(s) for s in (0, 1, 100, 499, 500, 10_000)] == [0.0, 0.001, 0.1, 0.499, 0.5, 0.5]
    # decay_type 2 (the OCR config): flat for 75 steps, then 0.0075 per step up to 0.999
    assert old_policy_decay(74, 75, 0.0075, 0.999) == 0.0
    assert old_policy_decay(175, 75, 0.0075, 0.999) == pytest.approx(0.75)
    assert old_policy_decay(10_000, 75, 0.0075, 0.999) == 0.999


def test_pcpo_is_not_defined_on_diffusion_nft():
    from pcpo.algorithms import NotTransformable, algorithm_names, get_algorithm

    with pytest.raises(NotTransformable, match="does not use per-step log-likelihood ratios"):
        get_algorithm("pcpo-diffusion_nft")
    names = algorithm_names()
    assert "diffusion_nft" in names and "pcpo-diffusion_nft" not in names


def _cfg(tmp_path, tiny_models, epochs, **over):
    from pcpo.config import load_config

    return load_config(make_config(tmp_path, tiny_models["flow"], "flow", epochs=epochs),
                       {"sampling": {"steps": 5}, "algorithms": {"diffusion_nft": over}} if over else
                       {"sampling": {"steps": 5}})


@pytest.mark.slow  # trains on the tiny world
def test_the_hook_samples_with_the_old_policy_and_scores_it_at_forward_noised_states(tmp_path, tiny_models):
    from pcpo.trainer import Trainer

    cfg = _cfg(tmp_path, tiny_models, 1)
    tr = Trainer(cfg, "diffusion_nft", seed=0, out_dir=tmp_path / "run", progress=False)
    assert tr.recompute is False and not tr.likelihood
    hook = tr.hook
    with torch.no_grad():  # a sampling policy that differs from the trained weights
        for e in hook.old:
            e.add_(0.05 * torch.randn_like(e))
    live = [p.detach().clone() for p in tr.params]
    prompts, meta, gids = tr.sample_prompts()
    from pcpo.noise_schedules import schedule_levels
    from pcpo.rollout import rollout

    tr.epoch_grid = tr.grid.scaled(schedule_levels("ode", tr.grid.num_steps, 0))
    hook.before_rollout(tr, 0)
    for p, e in zip(tr.params, hook.old):
        assert torch.equal(p, e)
    gen = torch.Generator().manual_seed(3)
    traj = rollout(tr.model, prompts, tr.epoch_grid, tr.st.guidance_scale, gen, meta, gids, batch_size=16)
    end = traj.states[:, -1].clone()
    traj = hook.after_rollout(tr, traj, 0)
    for p, v in zip(tr.params, live):  # the trained weights are back
        assert torch.equal(p, v)
    T = traj.num_steps
    t = tr.epoch_grid.timesteps.float()
    eps = traj.noise
    for i in range(T):
        torch.testing.assert_close(traj.states[:, i], (1 - t[i]) * end + t[i] * eps[:, i])
    assert torch.equal(traj.states[:, -1], end)
    # the stored predictions are the sampling policy's at those states, not the trained weights'
    with torch.no_grad():
        for p, e in zip(tr.params, hook.old):
            p.copy_(e)
        c = {k: v.to(tr.acc.device) for k, v in traj.cond.items()}
        u = {k: v for k, v in traj.uncond.items()} if traj.uncond is not None else None
        i = 2
        old = tr.model.predict_guided(traj.states[:, i], t[i].expand(traj.batch_size), c, u, tr.st.guidance_scale)
        for p, v in zip(tr.params, live):
            p.copy_(v)
        now = tr.model.predict_guided(traj.states[:, i], t[i].expand(traj.batch_size), c, u, tr.st.guidance_scale)
    torch.testing.assert_close(traj.preds[:, i], old, rtol=1e-5, atol=1e-5)
    assert float((traj.preds[:, i] - now).abs().max()) > 1e-3
    # the soft update: old <- d old + (1 - d) theta with d from the optimizer steps so far
    tr.global_step = 300
    before = [e.clone() for e in hook.old]
    hook.after_update(tr, 0)
    for e, b, p in zip(hook.old, before, tr.params):
        torch.testing.assert_close(e, 0.3 * b + 0.7 * p.detach())


@pytest.mark.slow  # trains on the tiny world
def test_diffusion_nft_trains_and_resumes_exactly(tmp_path, tiny_models):
    from pcpo.trainer import Trainer

    # a sampling policy that moves fast, so a resume that lost it would show
    over = {"rollout_hook_options": {"flat": 0, "uprate": 0.2, "uphold": 0.5}}
    straight = tmp_path / "straight"
    Trainer(_cfg(tmp_path, tiny_models, 3, **over), "diffusion_nft", 0, straight, progress=False).run()
    rows = read_rows(straight / "metrics.csv")
    B, T = 4, 5
    K = int(T * 0.99)
    for r in rows:
        assert math.isfinite(float(r["loss"])) and float(r["grad_norm"]) > 0
        assert r["stochastic_steps"] == "0" and float(r["clipfrac"]) == 0.0
        # guidance 2.0 from the config (CFG counted twice); the framework's own default is 1.0
        assert int(r["nfe_rollout"]) == B * T * 2 and int(r["nfe_hook"]) == B * T * 2
        assert int(r["nfe_train"]) == B * K * 2 and int(r["nfe_reference"]) == B * K * 2
        assert int(r["nfe_recompute"]) == 0
    resumed = tmp_path / "resumed"
    Trainer(_cfg(tmp_path, tiny_models, 2, **over), "diffusion_nft", 0, resumed, progress=False).run()
    Trainer(_cfg(tmp_path, tiny_models, 3, **over), "diffusion_nft", 0, resumed, progress=False).run()
    again = read_rows(resumed / "metrics.csv")
    for a, b in zip(rows, again):
        for k in ("reward_mean", "loss", "grad_norm", "kl"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6, abs=1e-9), (k, a["epoch"])


@pytest.mark.slow  # trains on the tiny world
def test_the_framework_guidance_default_applies_without_a_config_value(tmp_path, tiny_models):
    import yaml

    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    p = make_config(tmp_path, tiny_models["flow"], "flow", epochs=1)
    raw = yaml.safe_load(p.read_text())
    raw["sampling"].pop("guidance_scale")
    p.write_text(yaml.safe_dump(raw))
    over = {"algorithms": {"diffusion_nft": {"defaults": {"max_grad_norm": 1.0, "guidance_scale": 3.0}}}}
    tr = Trainer(load_config(p, over), "diffusion_nft", 0, tmp_path / "g", progress=False)
    assert tr.st.guidance_scale == 3.0  # the framework's default, over the model's (1.0 for the tiny world)
    raw["sampling"]["guidance_scale"] = 2.0
    p.write_text(yaml.safe_dump(raw))
    assert Trainer(load_config(p, over), "diffusion_nft", 0, tmp_path / "h", progress=False).st.guidance_scale == 2.0
