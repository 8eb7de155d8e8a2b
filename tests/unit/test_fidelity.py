"""Each baseline setting as its reference code has it (issue: baselines that are their
references).  Every test here fails on the behaviour before the fix: the KL form, the
detached CFG branch, global-std advantages, trained-step sets, two-sided clip
fraction, Flow-GRPO's EMA rule, the batch arithmetic over processes, DDPO's i.i.d.
prompts, the paper configs' numbers and the recipe cards."""
import math

import numpy as np
import pytest
import torch

from pcpo.algorithms import get_algorithm
from tests.helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- KL
def _flow_grpo_reference_std_dev_t(sigmas: torch.Tensor, i: int, noise_level: float) -> torch.Tensor:
    """sd3_sde_with_logprob.py: std_dev_t = sqrt(sigma / (1 - where(sigma == 1, sigma_max, sigma))) * noise_level,
    sigma_max = sigmas[1] (written out here, independent of pcpo.rollout)."""
    sigma = sigmas[i]
    sigma_max = sigmas[1]
    denom = sigma_max if sigma == 1 else sigma
    return torch.sqrt(sigma / (1 - denom)) * noise_level


@pytest.mark.parametrize("i", [0, 3, 8])
def test_flow_grpo_kl_is_the_reference_formula(i):
    from pcpo.objectives import step_kl
    from pcpo.rollout.grid import flow_grid

    grid = flow_grid(10, 0.7, form="grpo", shift=3.0, spacing="pipeline", span=(1.0, 0.003))
    g = torch.Generator().manual_seed(i)
    mean = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    ref_mean = mean + 0.01 * torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    idx = torch.full((3,), i)
    sigmas = torch.cat([grid.timesteps, grid.next_timesteps[-1:]])
    sd = _flow_grpo_reference_std_dev_t(sigmas, i, 0.7)
    want = ((mean - ref_mean) ** 2).mean(dim=(1, 2, 3)) / (2 * sd**2)
    got = step_kl(mean, ref_mean, grid.std[idx], grid.sde_sigma[idx], "flow_grpo")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # the exact Gaussian KL (the old default) is 1/ds times the reference's
    exact = step_kl(mean, ref_mean, grid.std[idx], grid.sde_sigma[idx], "gaussian")
    ds = float(grid.timesteps[i] - grid.next_timesteps[i])
    torch.testing.assert_close(exact * ds, want, rtol=1e-10, atol=0)
    assert get_algorithm("flow_grpo").kl_form == "flow_grpo"
    assert get_algorithm("flow_grpo").kl_beta == 0.01


# ---------------------------------------------------------------------- CFG grad
class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.5))


def _adapter():
    from pcpo.models.base import ModelAdapter

    class A(ModelAdapter):
        prediction_type, family, lora_target_modules = "velocity", "flow", []

        def __init__(self):
            self.net = _Linear()

        denoiser = property(lambda self: self.net)

        def to(self, device=None, dtype=None):
            return self

        def encode_prompts(self, prompts):
            return {"c": torch.ones(len(prompts), 1)}

        def null_cond(self, n):
            return {"c": torch.zeros(n, 1)}

        def latent_shape(self):
            return (1,)

        def predict(self, x, t, cond):  # uncond rows: w^2 x, cond rows: w x + c
            c = cond["c"]
            return torch.where(c > 0, self.net.w * x + c, self.net.w**2 * x)

        def decode(self, x0):
            return x0

        def schedule(self):
            raise NotImplementedError

        def save_pretrained(self, path):
            raise NotImplementedError

    return A()


def test_cond_only_cfg_detaches_the_unconditional_branch():
    a = _adapter()
    x, t = torch.ones(2, 1), torch.zeros(2)
    cond, unc = a.encode_prompts(["a", "b"]), a.null_cond(2)
    g = 4.5
    grads = {}
    for mode in ("both", "cond_only"):
        a.net.w.grad = None
        out = a.predict_guided(x, t, cond, unc, g, cfg_grad=mode)
        out.sum().backward()
        grads[mode] = float(a.net.w.grad)
        # the value does not depend on where the gradient flows
        assert torch.allclose(out, a.predict_guided(x, t, cond, unc, g))
    w = 1.5
    # d/dw [u + g (c - u)] summed over 2 rows; u = w^2, c = w + 1
    assert grads["both"] == pytest.approx(2 * ((1 - g) * 2 * w + g))
    assert grads["cond_only"] == pytest.approx(2 * g)
    assert get_algorithm("flow_grpo").cfg_grad == "cond_only"
    assert get_algorithm("ddpo").cfg_grad == "both" and get_algorithm("dancegrpo").cfg_grad == "both"


# --------------------------------------------------------------------- advantages
def _flow_grpo_reference_advantages(prompts, rewards):
    """flow_grpo/stat_tracking.py, PerPromptStatTracker(global_std=True).update, numpy."""
    prompts = np.array(prompts)
    rewards = np.asarray(rewards, dtype=np.float64)
    adv = np.empty_like(rewards)
    for p in np.unique(prompts):
        mean = np.mean(rewards[prompts == p])
        std = np.std(rewards) + 1e-4
        adv[prompts == p] = (rewards[prompts == p] - mean) / std
    return adv


def test_flow_grpo_advantages_use_the_global_std_and_forget_each_epoch():
    from pcpo.advantages import PerPromptStatTracker

    fw = get_algorithm("flow_grpo")
    tr = PerPromptStatTracker(**fw.advantage_options)
    rng = np.random.default_rng(0)
    prompts = ["a"] * 4 + ["b"] * 4 + ["a"] * 4  # "a" drawn twice in one epoch: pooled, as there
    for _ in range(3):
        r = rng.normal(size=12) * np.repeat([1.0, 5.0, 1.0], 4)
        got = tr.update(prompts, torch.tensor(r)).double().numpy()
        np.testing.assert_allclose(got, _flow_grpo_reference_advantages(prompts, r), rtol=1e-6, atol=1e-6)
        assert tr.buffers == {}  # stat_tracker.clear() every epoch
    # the per-group std would have given the low-variance group unit-std advantages
    assert np.std(got[4:8]) > 2 * np.std(got[:4])


def test_ddpo_tracker_keeps_history_with_the_batch_fallback():
    from pcpo.advantages import PerPromptStatTracker

    tr = PerPromptStatTracker(**get_algorithm("ddpo").advantage_options)
    assert tr.history and not tr.global_std


# ------------------------------------------------------------------ trained steps
def test_trained_step_sets_of_each_framework():
    from pcpo.trained_steps import select_steps, trained_step_count

    g = torch.Generator().manual_seed(0)
    # DDPO: int(T f) random steps of all T, per sample
    fw = get_algorithm("ddpo").for_family("ddim")
    sel = select_steps(fw.step_selection, 50, fw.timestep_fraction, 64, g)
    assert sel.shape == (64, 50) and all(sorted(r.tolist()) == list(range(50)) for r in sel)
    # DanceGRPO: never the last step; int((T-1) f) of the first T-1, per sample
    fw = get_algorithm("dancegrpo").for_family("flow")
    sel = select_steps(fw.step_selection, 16, fw.timestep_fraction, 256, g)
    assert sel.shape[1] == int(15 * fw.timestep_fraction) == trained_step_count(fw.step_selection, 16, fw.timestep_fraction)
    assert int(sel.max()) == 14 and 15 not in sel
    assert len({tuple(r.tolist()) for r in sel}) > 1  # drawn per sample
    fw = get_algorithm("dancegrpo").for_family("ddim")
    sel = select_steps(fw.step_selection, 50, fw.timestep_fraction, 8, g)
    assert all(sorted(r.tolist()) == list(range(49)) for r in sel)  # SD: fraction 1.0 of the first 49
    # Flow-GRPO: the first int(0.99 T) steps, in order, the same for every sample
    fw = get_algorithm("flow_grpo").for_family("flow")
    sel = select_steps(fw.step_selection, 10, fw.timestep_fraction, 5, g)
    assert sel.tolist() == [list(range(9))] * 5


# -------------------------------------------------------------------- clip frac
def test_two_clip_fractions():
    from pcpo.objectives import log_hinge_loss, outside_clip_range, ppo_clip_loss

    xi = 1e-4
    lr = torch.tensor([3e-4, 3e-4, -3e-4, 5e-5])
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0])
    _, inactive = ppo_clip_loss(lr, adv, xi)
    outside = outside_clip_range(lr, xi)
    # the references' clipfrac: |rho - 1| > xi on either side, whatever the advantage
    assert outside.tolist() == [True, True, True, False]
    # the gradient is removed only where the clip binds on the advantage's side
    assert inactive.tolist() == [True, False, False, False]
    _, hinge_inactive = log_hinge_loss(lr, adv, xi)
    assert hinge_inactive.tolist() == [True, False, False, False]


# --------------------------------------------------------------------------- EMA
class _FlowGrpoEMA:
    """flow_grpo/ema.py EMAModuleWrapper, written out: decay min((1+s)/(10+s), decay),
    an update when (s + 1) % interval == 0, called after every training batch with s
    the optimizer-step count."""

    def __init__(self, params, decay, interval):
        self.e = [p.detach().clone() for p in params]
        self.decay, self.interval = decay, interval

    def step(self, params, s):
        d = min((1 + s) / (10 + s), self.decay)
        if (s + 1) % self.interval == 0:
            for e, p in zip(self.e, params):
                e.add_((1 - d) * (p.detach() - e))


def test_flow_grpo_ema_follows_the_reference_rule(tmp_path, tiny_models):
    from pcpo.config import load_config
    from tests.integration.test_trainer import make_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models["flow"], "flow"))
    tr = Trainer(cfg, "flow_grpo", 0, tmp_path / "run", progress=False)
    assert (tr.st.ema_decay, tr.st.ema_warmup, tr.st.ema_every) == (0.9, True, 8)
    ref = _FlowGrpoEMA(tr.params, 0.9, 8)
    g = torch.Generator().manual_seed(0)
    accum = 2
    for batch in range(40):  # 40 micro-batches, an optimizer step after every second
        with torch.no_grad():
            for p in tr.params:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        if (batch + 1) % accum == 0:
            tr.global_step += 1
        tr._ema_step()
        ref.step(tr.params, tr.global_step)
    for a, b in zip(tr.ema, ref.e):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert tr.ema_updates == sum(1 for b in range(40) if ((b + 1) // accum + 1) % 8 == 0)
    # the other baselines run without EMA unless a config asks
    tr2 = Trainer(cfg, "dancegrpo", 0, tmp_path / "run2", progress=False)
    assert tr2.ema is None


# --------------------------------------------------------------- batch arithmetic
def _cfg(**train):
    from pcpo.config import TrainingConfig, from_dict

    return from_dict(TrainingConfig, {"train": train})


def test_batch_arithmetic_for_one_and_eight_processes():
    from pcpo.config import ConfigError, batch_arithmetic, load_config

    cfg = load_config(ROOT / "config/paper/flowgrpo_sd35m_pickscore.yaml")
    a8 = batch_arithmetic(cfg, 8, 10, 9)
    assert (a8["samples_per_epoch"], a8["samples_per_process"], a8["optimizer_steps_per_epoch"],
            a8["samples_per_optimizer_step"]) == (1152, 144, 2, 576)
    a1 = batch_arithmetic(cfg, 1, 10, 9)
    assert (a1["optimizer_steps_per_epoch"], a1["samples_per_optimizer_step"]) == (16, 72)
    # the case that used to run a second, half-weight step silently: 8 groups x 24 on 8 processes,
    # micro-batch 8 x accumulation 2 -> 3 micro-batches per process
    bad = _cfg(prompts_per_epoch=8, group_size=24, train_batch_size=8, gradient_accumulation=2)
    assert batch_arithmetic(bad, 1, 10, 9)["optimizer_steps_per_epoch"] == 12
    with pytest.raises(ConfigError, match="train.gradient_accumulation: 3 micro-batches per process"):
        batch_arithmetic(bad, 8, 10, 9)
    with pytest.raises(ConfigError, match="train.prompts_per_epoch: 8 groups cannot be split evenly over 3"):
        batch_arithmetic(bad, 3, 10, 9)
    with pytest.raises(ConfigError, match="train.train_batch_size: 24 samples per process"):
        batch_arithmetic(_cfg(prompts_per_epoch=8, group_size=24, train_batch_size=9), 8, 10, 9)


def test_the_printed_arithmetic_is_what_runs(tmp_path, tiny_models):
    import csv

    from pcpo.config import load_config
    from tests.integration.test_trainer import make_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", epochs=1, prompts_per_epoch=4, group_size=2,
                                  train_batch_size=2, gradient_accumulation=2))
    tr = Trainer(cfg, "ddpo", 0, tmp_path / "run", progress=False)
    a = tr.batch_arithmetic()
    assert "2 optimizer steps/epoch" in tr.describe() and a["samples_per_optimizer_step"] == 4
    tr.run()
    with open(tmp_path / "run" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert int(row["optimizer_steps"]) == a["optimizer_steps_per_epoch"] == 2


# ----------------------------------------------------------------------- prompts
def test_ddpo_draws_an_iid_prompt_per_sample_and_grpo_whole_groups(tmp_path, tiny_models):
    from pcpo.config import load_config
    from tests.integration.test_trainer import make_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", prompts_per_epoch=8, group_size=4,
                                  train_batch_size=8))
    tr = Trainer(cfg, "ddpo", 0, tmp_path / "a", progress=False)
    prompts, _, gids = tr.sample_prompts()
    assert len(prompts) == 32 and gids.tolist() == list(range(32))
    assert max(prompts.count(p) for p in set(prompts)) < 4 or len(set(prompts)) > 8  # not 8 groups of 4
    tr = Trainer(cfg, "dancegrpo", 0, tmp_path / "b", progress=False)
    prompts, _, gids = tr.sample_prompts()
    assert gids.tolist() == [i // 4 for i in range(32)]
    assert all(len(set(prompts[4 * k:4 * k + 4])) == 1 for k in range(8))


# ------------------------------------------------------------------- recipe cards
def test_recipe_cards_cite_every_setting_and_match_the_docs():
    from pcpo.recipes import cited_baselines, framework_rows, config_rows, render_card

    names = cited_baselines()
    assert {"ddpo", "dancegrpo", "flow_grpo"} <= set(names)
    for n in names:
        fw = get_algorithm(n)
        for fam in fw.samplers:
            rows = framework_rows(fw, fam)
            bad = [(r.setting, r.ours, r.reference, r.status) for r in rows if r.status in ("DIFFERS", "not cited")]
            assert not bad, (n, fam, bad)
            for r in rows:
                assert r.ref is None or r.ref.source, (n, r.setting)
        for path, rows in config_rows(fw).items():
            bad = [(r.setting, r.ours, r.reference) for r in rows if r.status in ("DIFFERS", "not cited")]
            assert not bad, (n, path, bad)
        from pcpo.algorithms import untransformable

        for name in (n, f"pcpo-{n}") if untransformable(fw) is None else (n,):
            doc = ROOT / "docs" / "recipes" / f"{name}.md"
            assert doc.is_file(), f"run `pcpo algorithms --write-docs docs/recipes` ({doc} is missing)"
            assert doc.read_text() == render_card(name), f"{doc} is stale: run `pcpo algorithms --write-docs docs/recipes`"
    card = render_card("pcpo-ddpo")
    assert "| `objective` | log_hinge | ppo_clip | PCPO |" in card
    # the transform itself against its authors' lineage (jaylee2000/rsm), and the lineage's SD1.5 run
    from pcpo.recipes import pcpo_rows, sd15_rows

    for r in pcpo_rows() + sd15_rows():
        assert r.status not in ("DIFFERS", "not cited") and r.ref is not None and r.ref.source, r
    doc = ROOT / "docs" / "recipes" / "pcpo.md"
    assert doc.read_text() == render_card("pcpo"), f"{doc} is stale: run `pcpo algorithms --write-docs docs/recipes`"


def test_a_wrong_value_shows_as_differs():
    import dataclasses

    from pcpo.recipes import framework_rows

    fw = dataclasses.replace(get_algorithm("flow_grpo"), kl_beta=0.04)
    row = next(r for r in framework_rows(fw, "flow") if r.setting == "kl_beta")
    assert row.status == "DIFFERS"


def test_paper_config_headline_numbers():
    from pcpo.recipes import config_value

    table = {
        "config/paper/ddpo_sd15_aesthetic_bs256.yaml": (256, 2),
        "config/paper/ddpo_sd15_aesthetic_bs512.yaml": (512, 2),
        "config/paper/ddpo_sd15_bertscore.yaml": (288, 2),
        "config/paper/dancegrpo_sd14_hpsv21.yaml": (512, 2),
        "config/paper/dancegrpo_flux_hpsv21.yaml": (192, 2),
        "config/paper/flowgrpo_sd35m_pickscore.yaml": (1152, 2),
        "config/paper/diffusionnft_sd35m_pickscore.yaml": (1152, 1),
        "config/paper/pcpo_sd15_hpsv21.yaml": (128, 2),
    }
    for path, (samples, steps) in table.items():
        assert config_value(path, "samples_per_epoch") == samples, path
        assert config_value(path, "optimizer_steps_per_epoch") == steps, path
        header = (ROOT / path).read_text().splitlines()[:3]
        assert any("Reference:" in line for line in header), f"{path}: the header must cite its reference"
    _ = math


def test_epoch_ema_steps_once_per_epoch(tmp_path, tiny_models):
    """DanceGRPO's full FLUX script: FSDP_EMA.update once per iteration, decay 0.995, no warm-up."""
    from pcpo.config import load_config
    from tests.integration.test_trainer import make_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models["flow"], "flow", epochs=2, gradient_accumulation=1),
                      {"algorithms": {"dancegrpo": {"ema_decay": 0.995, "ema_unit": "epoch"}}})
    tr = Trainer(cfg, "dancegrpo", 0, tmp_path / "run", progress=False)
    init = [p.detach().clone() for p in tr.params]
    row, _ = tr.epoch(0)
    assert row["optimizer_steps"] == 2 and tr.ema_updates == 1
    for e, p0, p in zip(tr.ema, init, tr.params):
        torch.testing.assert_close(e, 0.995 * p0 + 0.005 * p.detach(), rtol=1e-6, atol=1e-8)


# -------------------------------------------------------------------- rough edges
def test_malformed_yaml_and_missing_model_are_one_line_errors(tmp_path):
    import subprocess

    from tests.helpers import pcpo_cmd

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n   lr: [1\n")
    r = subprocess.run(pcpo_cmd("train", "--config", str(bad), "--algorithm", "ddpo", "--out", str(tmp_path / "o")),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}, line 3, column 6" in lines[0] and "fix the syntax" in lines[0], r.stderr
    r = subprocess.run(pcpo_cmd("train", "--config", str(ROOT / "config/tiny.yaml"), "--algorithm", "ddpo",
                                "--out", str(tmp_path / "o"), "--set", f"model.path={tmp_path / 'nowhere'}",
                                "--set", "reward.name=jpeg_compressibility"),  # the reward is checked first
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("pcpo train: error: model.path:"), r.stderr
    r = subprocess.run(pcpo_cmd("sample", "--checkpoint", str(tmp_path / "nockpt"), "--out", str(tmp_path / "s")),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--checkpoint:" in r.stderr and "Traceback" not in r.stderr


def test_networks_table_names_weights_by_file_and_checksum():
    from evaluation.aggregate import _flatten

    _, nets = _flatten({"fid": {"value": 1.0, "network": "inception", "sha256": "ab" * 32,
                                "weights": "/root/.cache/pcpo/inception-2015-12-05.pth"}})
    assert nets[0]["weights"] == "inception-2015-12-05.pth" and nets[0]["sha256"] == "ab" * 32
    report = (ROOT / "results/reference/tiny/report/index.md").read_text()
    assert "/root/" not in report and ".cache/" not in report


def test_show_prints_the_card():
    import subprocess

    from tests.helpers import pcpo_cmd

    r = subprocess.run(pcpo_cmd("algorithms", "--show", "flow_grpo"), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "| `kl_form` | flow_grpo | flow_grpo | matches |" in r.stdout
    assert "scripts/train_sd3.py" in r.stdout
