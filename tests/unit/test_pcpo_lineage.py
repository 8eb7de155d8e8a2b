"""PCPO against its authors' lineage (jaylee2000/rsm@e8be3df, "adapted from the PCPO codebase"):
sigma~ times eta, the zeta setting and its default, one credit plan for `pcpo train` and `pcpo
credit`, the uw-lambda and logrho ablations, and the pcpo card.  Every formula is recomputed here
in float64 from the lineage's lines, independent of pcpo.rollout / pcpo.credit."""
import contextlib
import io
import json
import math

import pytest
import torch

from pcpo.cli import main
from pcpo.credit import plan_credit, sd15_schedule
from tests.helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

FLOWGRPO = ROOT / "config/paper/flowgrpo_sd35m_pickscore.yaml"
FLUX = ROOT / "config/paper/dancegrpo_flux_hpsv21.yaml"
AUTHORS_ZETA = 4.3152134639895925  # sd35_zeroth_order/flow_grpo/sd3_train_shared.py:7


def _credit_json(*args):
    """`pcpo credit ... --json`, in this process (the command's own main; a subprocess per call costs
    half a minute of imports on a loaded machine; test_credit.py runs the command as a process)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["credit", *args, "--json"])
    assert rc == 0
    return json.loads(buf.getvalue())


def _authors_ddim(ac: torch.Tensor, final: float, t: int, prev: int, eta: float, weight: float | None):
    """ddim_step.py:16-49 and :141-160 written out: the native std or _get_std(weight), times eta."""
    a_t = ac[t]
    a_p = ac[prev] if prev >= 0 else torch.tensor(final, dtype=torch.float64)
    if weight is None:
        return eta * torch.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)), a_t, a_p
    c1sq = (1 - a_t) / (a_t / a_p)
    sig = (weight * c1sq**0.5 + ((1 - a_p) * (weight**2 + 1) - c1sq) ** 0.5) / (weight**2 + 1)
    return sig * eta, a_t, a_p


# --------------------------------------------------------------------------- eta
@pytest.mark.parametrize("eta", [0.5, 0.8, 1.0])
def test_sigma_tilde_is_the_authors_root_times_eta(eta):
    spec = sd15_schedule()
    plan = plan_credit(spec, "ddim", 50, eta=eta, proportional=True, w_star=4.5)
    g = plan.sample_grid
    ac = spec.alphas_cumprod.double()
    for i in (0, 10, 48, 49):
        t, prev = int(g.timesteps[i]), int(g.timesteps[i]) - 20
        want, _, _ = _authors_ddim(ac, spec.final_alpha_cumprod, t, max(prev, 0), eta, 4.5)
        assert float(g.std[i]) == pytest.approx(float(want), rel=1e-12)
    # the native grid scales with eta too, and the trained weight stays its mean
    for i in (0, 25, 48):
        t = int(g.timesteps[i])
        want, _, _ = _authors_ddim(ac, spec.final_alpha_cumprod, t, t - 20, eta, None)
        assert float(plan.native_grid.std[i]) == pytest.approx(float(want), rel=1e-12)
    torch.testing.assert_close(plan.train_weight, plan.native.mean().expand(50))
    if eta == 1.0:
        assert float(g.std[0]) == pytest.approx(0.4467, abs=1e-4)


def test_eta_changes_the_sampler_a_run_uses(tmp_path, tiny_models):
    from pcpo.config import load_config
    from pcpo.trainer import Trainer
    from tests.integration.test_trainer import make_config

    stds = {}
    for eta in (1.0, 0.6):
        cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps"), {"sampling": {"eta": eta}})
        tr = Trainer(cfg, "pcpo-ddpo", 0, tmp_path / f"r{eta}", progress=False)
        stds[eta] = tr.grid.std
    torch.testing.assert_close(stds[0.6], 0.6 * stds[1.0], rtol=1e-12, atol=0)


# -------------------------------------------------------------------------- zeta
def _pipeline_sigmas(steps: int, shift: float) -> torch.Tensor:
    """diffusers' own FlowMatchEulerDiscreteScheduler.set_timesteps (the SD3 pipeline's grid)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(steps)
    return s.sigmas.double()


def _flow_grpo_weights(sig: torch.Tensor, a: float) -> torch.Tensor:
    """sd3_train_shared.py:52-62 compute_base_reweight_factor with sd3_sde_with_logprob.py:108's sigma~."""
    s, ds = sig[:-1], sig[:-1] - sig[1:]
    ts = a * torch.sqrt(s / (1 - torch.where(s == 1, sig[1], s)))
    return torch.sqrt(ds) / ts * (1 + (1 - s) / (2 * s) * ts**2)


def test_config_schedule_is_diffusers_pipeline_grid():
    from pcpo.config import load_config
    from pcpo.credit import config_schedule
    from pcpo.rollout.grid import make_grid

    cfg = load_config(FLOWGRPO)
    spec, src = config_schedule(cfg)
    g = make_grid(spec, "flow-grpo", 10, noise_level=0.7)
    sig = _pipeline_sigmas(10, 3.0)
    # float32 sigmas in diffusers
    torch.testing.assert_close(torch.cat([g.timesteps, g.next_timesteps[-1:]]), sig, rtol=1e-6, atol=1e-7)
    assert "defaults" in src
    # DanceGRPO's FLUX grid: sd3_time_shift(3, linspace(1, 0, N + 1))
    spec, _ = config_schedule(load_config(FLUX))
    g = make_grid(spec, "flow-dance", 12, noise_level=0.3)
    u = torch.linspace(1, 0, 13, dtype=torch.float64)
    torch.testing.assert_close(torch.cat([g.timesteps, g.next_timesteps[-1:]]), 3 * u / (1 + 2 * u), rtol=1e-12, atol=0)


def test_flow_grpo_on_sd35_defaults_to_the_authors_zeta_both_ways():
    from pcpo.cli import run_credit_plan
    from pcpo.config import load_config

    _, plan, _ = run_credit_plan(load_config(FLOWGRPO), "pcpo-flow_grpo")
    assert plan.zeta == AUTHORS_ZETA and "sd3_train_shared.py:7" in plan.zeta_source
    by_config = _credit_json("--config", str(FLOWGRPO))
    by_kind = _credit_json("--model-kind", "sd3", "--time-grid", "pipeline", "--steps", "10",
                           "--algorithm", "pcpo-flow_grpo")
    assert by_config["zeta"] == by_kind["zeta"] == AUTHORS_ZETA
    assert by_config["pcpo"] == by_kind["pcpo"] == [float(w) for w in plan.train_weight]
    # zeta * ds of the sampling grid, on the first 9 of 10 steps: their sum is zeta (1 - s_9) < zeta
    sig = _pipeline_sigmas(10, 3.0)
    want = AUTHORS_ZETA * (sig[:-1] - sig[1:])
    torch.testing.assert_close(torch.tensor(by_config["pcpo"], dtype=torch.float64), want, rtol=1e-6, atol=0)
    assert by_config["trained_steps"] == list(range(9))
    trained = sum(by_config["pcpo"][:9])
    assert trained == pytest.approx(AUTHORS_ZETA * (1 - float(sig[9])), rel=1e-6) and trained < AUTHORS_ZETA
    # the grid sums the issue quotes, from the lineage's own weight formula
    w = _flow_grpo_weights(sig, 0.7)
    assert float(w.sum()) == pytest.approx(5.7054, abs=1e-4) and float(w[:9].sum()) == pytest.approx(3.9348, abs=1e-4)
    assert by_config["native_sum"] == pytest.approx(float(w.sum()), rel=1e-5)
    other = _credit_json("--config", str(FLOWGRPO), "--set", "pcpo.zeta=grid_all")
    assert other["zeta"] == pytest.approx(float(w.sum()), rel=1e-5)
    other = _credit_json("--config", str(FLOWGRPO), "--set", "pcpo.zeta=grid_trained")
    assert other["zeta"] == pytest.approx(float(w[:9].sum()), rel=1e-5)


def test_flux_dancegrpo_zeta_is_the_trained_steps_sum_both_ways():
    from pcpo.cli import run_credit_plan
    from pcpo.config import load_config

    _, plan, _ = run_credit_plan(load_config(FLUX), "pcpo-dancegrpo")
    got = _credit_json("--config", str(FLUX))
    u = torch.linspace(1, 0, 13, dtype=torch.float64)
    s_all = 3 * u / (1 + 2 * u)
    s, ds = s_all[:-1], s_all[:-1] - s_all[1:]
    w = ds.sqrt() / 0.3 * (1 + (1 - s) * 0.09 / (2 * s))  # DanceGRPO's form, docs/method.md §2
    assert got["zeta"] == plan.zeta == pytest.approx(float(w[:11].sum()), rel=1e-12)
    assert got["trained_steps"] == list(range(11)) and "grid_trained" in got["zeta_source"]


def test_trainer_and_credit_cli_print_the_same_plan(tmp_path, tiny_models, caplog):
    import logging

    from pcpo.cli import run_credit_plan
    from pcpo.config import load_config
    from pcpo.trainer import Trainer
    from tests.integration.test_trainer import make_config

    path = make_config(tmp_path, tiny_models["flow"], "flow")
    for algo, zeta in (("pcpo-dancegrpo", "auto"), ("pcpo-flow_grpo", "grid_all"), ("pcpo-dancegrpo", 2.5)):
        cfg = load_config(path, {"pcpo": {"zeta": zeta}})
        with caplog.at_level(logging.INFO, logger="pcpo.train"):
            tr = Trainer(cfg, algo, 0, tmp_path / "run", progress=False)
        _, plan, _ = run_credit_plan(cfg, algo)
        assert tr.plan.zeta == plan.zeta and f"zeta {plan.zeta:.10g}" in caplog.text
        torch.testing.assert_close(tr.plan.train_weight, plan.train_weight, rtol=0, atol=0)
        cli = _credit_json("--config", str(path), "--algorithm", algo, "--set", f"pcpo.zeta={zeta}")
        assert cli["zeta"] == plan.zeta and cli["pcpo"] == [float(x) for x in plan.train_weight]
        native = tr.plan.native
        want = {"auto": float(native[tr.plan.trained_pool].sum()), "grid_all": float(native.sum()), 2.5: 2.5}[zeta]
        assert plan.zeta == pytest.approx(want, rel=1e-12)
    assert tr.plan.trained_pool.tolist() == list(range(3))  # DanceGRPO: never the last of 4 steps


def test_zeta_setting_errors_are_one_line():
    from pcpo.cli import run_credit_plan
    from pcpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="pcpo.zeta: the authors have no zeta"):
        run_credit_plan(load_config(FLUX, {"pcpo": {"zeta": "authors"}}), "pcpo-dancegrpo")
    with pytest.raises(ConfigError, match="pcpo.zeta: must be a number or one of"):
        load_config(FLUX, {"pcpo": {"zeta": "sum"}})
    with pytest.raises(ConfigError, match="pcpo.zeta: must be > 0"):
        load_config(FLUX, {"pcpo": {"zeta": -1.0}})
    with pytest.raises(ConfigError, match="pcpo.variant"):
        load_config(FLUX, {"pcpo": {"variant": "uw-mu"}})


# ------------------------------------------------------------------------ ablations
def test_uw_lambda_is_the_authors_interpolation():
    """lambda_t = const * std / (c1 - c2) with native std (ddim_step.py:163-171), and the native-weight
    matching log-ratio of the interpolated policy equals the authors' w_bar term on the raw difference."""
    from pcpo.rollout.steps import ddim_step, matching_log_ratio

    spec = sd15_schedule()
    eta = 0.8
    plan = plan_credit(spec, "ddim", 50, eta=eta, proportional=True, variant="uw-lambda")
    g = plan.sample_grid
    assert g is plan.native_grid
    ac = spec.alphas_cumprod.double()
    w_bar = float(plan.native.mean())
    gen = torch.Generator().manual_seed(0)
    for i in (0, 17, 48):
        t = int(g.timesteps[i])
        std, a_t, a_p = _authors_ddim(ac, spec.final_alpha_cumprod, t, t - 20, eta, None)
        c1 = torch.sqrt(1 - a_t) / torch.sqrt(a_t / a_p)
        c2 = torch.sqrt(1 - a_p - std**2)
        assert float(plan.mix[i]) == pytest.approx(float(w_bar * std / (c1 - c2)), rel=1e-12)
        # the interpolated policy's exact log-density ratio at the drawn sample
        x = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
        e_ref, e_old = torch.randn(2, 2, 4, 8, 8, generator=gen, dtype=torch.float64)
        e_new = e_old + 0.01 * torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
        lam = plan.mix[i]
        mix = lambda e: e_ref + lam * (e - e_ref)  # noqa: E731
        idx = torch.full((2,), i)
        a, ap, sd = g.alpha_prod[idx], g.alpha_prod_next[idx], g.std[idx]
        z = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
        old = ddim_step(mix(e_old), x, a, ap, sd, noise=z)
        new = ddim_step(mix(e_new), x, a, ap, sd, prev_sample=old.prev_sample)
        exact = new.log_prob - old.log_prob
        ours = matching_log_ratio(mix(e_new) - mix(e_old), z, plan.native[idx])
        d = e_new - e_old  # train_grpo.py:1093-1102 with weight_t = const_weight, weight_scale_factor 1
        authors = -(0.5 * (w_bar * d).pow(2).mean(dim=(1, 2, 3)) + (w_bar * d * z).mean(dim=(1, 2, 3)))
        torch.testing.assert_close(ours, authors, rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(ours, exact, rtol=1e-6, atol=1e-12)


def test_logrho_objective_formula_and_gradient():
    from pcpo.objectives import Objective, logrho_clip_loss

    xi = 0.05
    A = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.2, -0.3], dtype=torch.float64)
    lr = torch.tensor([0.01, -0.02, 0.1, 0.2, -0.3, 0.04], dtype=torch.float64, requires_grad=True)
    loss, inactive = Objective("ppo_clip_logrho", "ratio", xi).loss(lr, A)
    x = 1 + lr.detach()
    want = torch.maximum(-A * x, -A * x.clamp(1 - xi, 1 + xi))  # train_grpo.py:1070-1083
    torch.testing.assert_close(loss.detach(), want)
    assert inactive.tolist() == [False, False, True, False, False, False]  # the clip binds on A's side only
    (g,) = torch.autograd.grad(loss.sum(), lr)
    h = 1e-6
    fd = torch.stack([(logrho_clip_loss(lr.detach() + h * e, A, xi)[0].sum() -
                       logrho_clip_loss(lr.detach() - h * e, A, xi)[0].sum()) / (2 * h) for e in torch.eye(6,
                                                                                              dtype=torch.float64)])
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)
    at_one, _ = logrho_clip_loss(torch.zeros(6, dtype=torch.float64), A, xi)
    torch.testing.assert_close(at_one, -A)


@pytest.mark.parametrize("variant", ["uw-lambda", "logrho"])
def test_ablations_run_on_the_tiny_world(tmp_path, tiny_models, variant):
    """A few epochs: the first inner step at ratio 1 (the trainer's own gate), every number finite,
    and with one optimizer step per epoch the logged loss is the objective at ratio 1."""
    import csv

    from pcpo.config import load_config
    from pcpo.trainer import Trainer
    from tests.integration.test_trainer import make_config

    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", epochs=3, prompts_per_epoch=2, group_size=4,
                                  train_batch_size=4, gradient_accumulation=2), {"pcpo": {"variant": variant}})
    tr = Trainer(cfg, "pcpo-dancegrpo", 0, tmp_path / "run", progress=False)
    if variant == "uw-lambda":
        assert tr.plan.mix is not None and tr.fw.objective == "log_hinge"
        torch.testing.assert_close(tr.plan.mix * tr.plan.native, tr.plan.native.mean().expand_as(tr.plan.mix))
    else:
        assert tr.fw.objective == "ppo_clip_logrho" and not tr.fw.proportional and tr.plan.mix is None
    tr.run()
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for r in rows:
        assert int(r["optimizer_steps"]) == 1
        for k in ("loss", "reward_mean", "grad_norm", "approx_kl"):
            assert math.isfinite(float(r[k])), (k, r[k])
        assert float(r["logratio_first_max"]) <= cfg.train.logratio_tolerance
        # every loss is taken before the epoch's one optimizer step, at ratio 1
        xi, adv = tr.st.clip_range, float(r["adv_abs_mean"])
        if variant == "uw-lambda":  # xi |A|, averaged
            assert float(r["loss"]) == pytest.approx(xi * adv, rel=1e-3, abs=1e-9)
        else:  # -A averaged over whole groups of group-normalised advantages: 0
            assert abs(float(r["loss"])) < 1e-6 * max(adv, 1.0)
    if variant == "uw-lambda":
        assert int(rows[0]["nfe_reference"]) > 0  # the reference forward per step, through the KL path
    assert float(rows[-1]["grad_norm"]) > 0


def _hand_uw_lambda_loop(policy, base, texts, indices, seed, steps, eta, scale, w_bar, mix, dtype):
    """The authors' evaluation loop written out (reverse_pipeline.py:150-167 the reference pass with
    CFG, ddim_step.py:141-171 the native std, lambda_t = w_bar std / (c1 - c2) and the interpolation,
    then the DDIM-SDE step), in ``dtype``, on the same per-image noise as `pcpo sample`;
    ``mix=False``: the fine-tuned model alone (lambda_t = 1).  Returns images in [0, 1]."""
    import copy

    from pcpo.sample_cli import image_noise

    spec = base.schedule()
    ac = spec.alphas_cumprod.to(torch.float64)
    jump = spec.num_train_timesteps // steps
    ts = [jump * (steps - 1 - i) + spec.steps_offset for i in range(steps)]  # "leading" spacing
    models = [copy.deepcopy(m).to(dtype=dtype) for m in (policy, base)]

    def guided(m, x, t, c, u):
        tt = torch.full((x.shape[0],), t)
        return m.predict(x, tt, u) + scale * (m.predict(x, tt, c) - m.predict(x, tt, u))

    noise = [image_noise(seed, k, steps, tuple(base.latent_shape())) for k in indices]
    x = torch.stack([a for a, _ in noise]).to(dtype)
    z = torch.stack([b for _, b in noise]).to(dtype)
    with torch.no_grad():
        c = {k: v.to(dtype) for k, v in models[0].encode_prompts(texts).items()}
        u = {k: v.to(dtype) for k, v in models[0].null_cond(len(texts)).items()}
        for i, t in enumerate(ts):
            a_t = ac[t]
            a_p = ac[t - jump] if t - jump >= 0 else torch.tensor(spec.final_alpha_cumprod, dtype=torch.float64)
            std = eta * torch.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
            c1 = torch.sqrt(1 - a_t) / torch.sqrt(a_t / a_p)
            c2 = torch.sqrt(1 - a_p - std**2)
            e = guided(models[0], x, t, c, u)
            if mix:
                e_ref = guided(models[1], x, t, c, u)
                e = e_ref + (w_bar * std / (c1 - c2)).to(dtype) * (e - e_ref)
            x0 = (x - torch.sqrt(1 - a_t).to(dtype) * e) / torch.sqrt(a_t).to(dtype)
            x = torch.sqrt(a_p).to(dtype) * x0 + c2.to(dtype) * e + std.to(dtype) * z[:, i]
    return ((x + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("lora", [True, False])
def test_uw_lambda_checkpoint_samples_the_interpolated_policy(tmp_path, tiny_models, lora):
    """`pcpo sample --checkpoint` of a uw-lambda run draws from pred_ref + lambda_t (pred - pred_ref) with
    lambda_t of the evaluation grid (train_grpo.py:226-244 eval=True): its PNGs equal the hand-written
    loop in float64 up to the PNG's rounding plus float32's own error on this loop, and differ from
    the fine-tuned model's plain samples; a deterministic sample (lambda_t = 0) is refused."""
    import numpy as np
    from PIL import Image

    from pcpo.checkpoint import latest_checkpoint, load_base_model, load_policy, read_meta
    from pcpo.config import load_config
    from pcpo.trainer import Trainer
    from tests.integration.test_trainer import make_config

    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", epochs=1, prompts_per_epoch=2, group_size=4,
                                  train_batch_size=4, lr=0.05), {"pcpo": {"variant": "uw-lambda"},
                                                                 "lora": {"enabled": lora}})
    Trainer(cfg, "pcpo-dancegrpo", 0, tmp_path / "run", progress=False).run()
    ckpt = latest_checkpoint(tmp_path / "run")
    meta = read_meta(ckpt)
    out = tmp_path / "s"
    rc = main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--n-per-prompt", "2", "--max-prompts", "2",
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    man = json.loads((out / "manifest.json").read_text())
    steps, eta, scale = man["steps"], man["eta"], man["guidance_scale"]
    assert (steps, eta, scale) == (meta["sampling_steps"], meta["eta"], meta["guidance_scale"]) and eta > 0
    # w_bar: the mean native weight (c1 - c2) / std of the training grid (the run's constant)
    spec = load_base_model("tiny-eps", tiny_models["eps"]).schedule()
    ac, jump = spec.alphas_cumprod.to(torch.float64), spec.num_train_timesteps // steps
    ws, lams = [], []
    for i in range(steps):
        t = jump * (steps - 1 - i) + spec.steps_offset
        std, a_t, a_p = _authors_ddim(ac, spec.final_alpha_cumprod, t, t - jump, eta, None)
        ws.append(float((torch.sqrt(1 - a_t) / torch.sqrt(a_t / a_p) - torch.sqrt(1 - a_p - std**2)) / std))
    w_bar = sum(ws) / steps
    lams = [w_bar / w for w in ws]
    pol = man["policy"]
    assert pol["variant"] == "uw-lambda" and ("LoRA" in pol["reference"]) == lora
    np.testing.assert_allclose(pol["lambda"], lams, rtol=1e-12)
    assert max(abs(x - 1) for x in lams) > 0.05  # the interpolation is not the plain policy on this grid

    policy = load_policy(ckpt, "cpu")
    base = load_base_model("tiny-eps", tiny_models["eps"])
    texts = [r["prompt"] for r in man["images"]]
    idx = list(range(len(texts)))
    png = torch.stack([torch.from_numpy(np.asarray(Image.open(out / r["file"]), dtype=np.float64))
                       for r in man["images"]]) / 255
    run = lambda dt, mix=True: _hand_uw_lambda_loop(policy, base, texts, idx, man["seed"], steps, eta,  # noqa: E731
                                                    scale, w_bar, mix, dt).reshape(png.shape)
    want64 = run(torch.float64)
    f32 = float((run(torch.float32).double() - want64).abs().max())  # float32's error on this very loop
    tol = 0.5 / 255 + 4 * f32 + 1e-12  # PNG rounding + the sampler's float32 arithmetic
    assert float((png - want64).abs().max()) <= tol
    plain = run(torch.float64, mix=False)
    assert float((png - plain).abs().max()) > 10 * tol  # not the fine-tuned model's own samples

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "d"), "--deterministic",
                   "--max-prompts", "1", "--n-per-prompt", "1", "--no-progress", "--device", "cpu"])
    assert rc == 2 and "uw-lambda" in err.getvalue() and "eta > 0" in err.getvalue()
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- card
def test_pcpo_card_rows_are_cited_and_the_doc_is_fresh():
    from pcpo.recipes import pcpo_rows, render_card, sd15_rows

    rows = pcpo_rows() + sd15_rows()
    bad = [(r.setting, r.ours, r.reference, r.status) for r in rows if r.status in ("DIFFERS", "not cited")]
    assert not bad, bad
    for r in rows:
        assert r.ref is not None and r.ref.source, r.setting
        assert r.status == "no counterpart" or "jaylee2000/rsm@e8be3df" in r.ref.source, r.setting
    names = {r.setting for r in pcpo_rows()}
    for want in ("objective", "log-ratio form", "xi (clip range)", "DDIM: w*", "DDIM: sigma~ root",
                 "DDIM: eta scaling of sigma~", "flow: zeta, Flow-GRPO on SD3.5-M", "reduction over the latent",
                 "advantage clip", "ablation uw-lambda", "ablation uw-lambda: evaluation sampling",
                 "ablation logrho"):
        assert want in names, want
    card = render_card("pcpo")
    assert (ROOT / "docs/recipes/pcpo.md").read_text() == card, "run `pcpo algorithms --write-docs docs/recipes`"
    assert "| `flow: zeta, Flow-GRPO on SD3.5-M` | 4.31521 | 4.31521 | matches |" in card


def test_a_wrong_sd15_setting_shows_as_differs(tmp_path, monkeypatch):
    import pcpo.recipes as rc

    text = (ROOT / rc.SD15_PAPER).read_text().replace("rank: 16, alpha: 16", "rank: 8, alpha: 16")
    p = tmp_path / "pcpo_sd15_hpsv21.yaml"
    p.write_text(text)
    monkeypatch.setattr(rc, "SD15_PAPER", str(p))
    row = next(r for r in rc.sd15_rows() if r.setting == "lora.rank")
    assert row.status == "DIFFERS"
