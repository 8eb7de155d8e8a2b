"""The trainer on tiny randomly initialised models: every algorithm starts at
ratio 1, losses are finite, runs resume exactly after a kill, a dropped-in
baseline trains, and bad configs fail with the field named."""
import csv
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ROOT, pcpo_cmd

# every test here trains or samples with the tiny models (a trainer, a CLI subprocess or a rollout):
# seconds to minutes each on 2 cores, so they run in the full suite, not in the fast tier
pytestmark = pytest.mark.slow

TIME_COLS = {"time_rollout", "time_reward", "time_train", "time_epoch"}


def make_config(tmp_path: Path, model_path: str, family: str, name: str | None = None, **train) -> Path:
    cfg = {
        "experiment": "test",
        "model": {"kind": "tiny-eps" if family == "eps" else "tiny-flow", "path": model_path},
        "reward": {"name": "jpeg_incompressibility"},
        "prompts": {"source": "tiny"},
        "sampling": {"steps": 4, "guidance_scale": 2.0, "batch_size": 16},
        "train": {"epochs": 2, "prompts_per_epoch": 2, "group_size": 2, "train_batch_size": 2,
                  "checkpoint_every": 1, "lr": 1e-3, **train},
        "lora": {"enabled": True, "rank": 2, "alpha": 2},
    }
    p = tmp_path / (name or f"cfg_{family}.yaml")
    p.write_text(yaml.safe_dump(cfg))
    return p


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


CASES = [
    ("ddpo", "eps"), ("pcpo-ddpo", "eps"), ("pcpo-base-ddpo", "eps"),
    ("dancegrpo", "eps"), ("pcpo-dancegrpo", "eps"),
    ("dancegrpo", "flow"), ("pcpo-dancegrpo", "flow"),
    ("flow_grpo", "flow"), ("pcpo-flow_grpo", "flow"),
]


@pytest.mark.parametrize("algorithm,family", CASES)
def test_every_algorithm_starts_at_ratio_one_and_stays_finite(tmp_path, tiny_models, algorithm, family):
    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models[family], family))
    out = tmp_path / "run"
    tr = Trainer(cfg, algorithm, seed=0, out_dir=out, progress=False)
    tr.run()
    rows = read_rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for r in rows:
        assert float(r["logratio_first_max"]) < 1e-5
        for k in ("loss", "clipfrac", "approx_kl", "grad_norm", "reward_mean"):
            assert math.isfinite(float(r[k])), k
    audit = read_rows(out / "credit_audit.csv")
    assert len(audit) == 2 * 4
    # the gradient shares sum to 1 in every epoch that had a gradient; an epoch whose groups all
    # tied (JPEG sizes are whole bytes, so two images of a group can tie) has zero advantages
    moved = 0
    for r in rows:
        shares = [float(a["grad_share"]) for a in audit if a["epoch"] == r["epoch"]]
        if float(r["adv_abs_mean"]) > 0:
            assert sum(shares) == pytest.approx(1.0, abs=1e-6)
            moved += 1
        else:
            assert sum(shares) == 0.0
    assert moved >= 1, "no epoch had a non-zero advantage"
    assert (out / "checkpoints" / "epoch_000001" / "trainable.safetensors").is_file()
    meta = json.loads((out / "config.json").read_text())
    assert meta["framework"]["proportional"] == (algorithm.startswith("pcpo-") and not algorithm.startswith("pcpo-base"))


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, tiny_models):
    cfg = make_config(tmp_path, tiny_models["eps"], "eps", epochs=4, checkpoint_every=2)
    base = pcpo_cmd("train", "--config", str(cfg), "--algorithm", "pcpo-ddpo", "--seed", "3", "--no-progress")
    full = tmp_path / "full"
    subprocess.run(base + ["--out", str(full)], check=True, capture_output=True, cwd=ROOT)
    killed = tmp_path / "killed"
    env = {**os.environ, "PCPO_FAULT_AFTER_EPOCH": "2"}
    r = subprocess.run(base + ["--out", str(killed)], env=env, capture_output=True, cwd=ROOT)
    assert r.returncode != 0  # SIGKILL after epoch 2 (its checkpoint is epoch 1's)
    assert (killed / "checkpoints" / "latest").read_text().strip() == "epoch_000001"
    r = subprocess.run(base + ["--out", str(killed)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr
    a, b = read_rows(full / "metrics.csv"), read_rows(killed / "metrics.csv")
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in TIME_COLS} == {k: v for k, v in rb.items() if k not in TIME_COLS}


def test_dropped_in_baseline_trains_with_its_pcpo_variant(tmp_path, tiny_models):
    mod = ROOT / "baselines" / "zz_test_dropin.py"
    mod.write_text(
        "from pcpo.algorithms import Framework, register_framework\n"
        "register_framework(Framework(name='zz_dropin', description='test drop-in', samplers={'ddim': 'ddim'},\n"
        "    eta=0.8, advantage='group', timestep_fraction=0.5, share_initial_noise=True))\n")
    try:
        listing = subprocess.run(pcpo_cmd("algorithms", "--json"), capture_output=True, text=True, check=True, cwd=ROOT)
        names = [a["name"] for a in json.loads(listing.stdout)]
        assert {"zz_dropin", "pcpo-zz_dropin", "pcpo-base-zz_dropin"} <= set(names)
        cfg = make_config(tmp_path, tiny_models["eps"], "eps", epochs=1)
        for alg in ("zz_dropin", "pcpo-zz_dropin"):
            out = tmp_path / alg
            r = subprocess.run(pcpo_cmd("train", "--config", str(cfg), "--algorithm", alg, "--out", str(out),
                                        "--no-progress"), capture_output=True, text=True, cwd=ROOT)
            assert r.returncode == 0, r.stderr
            assert "2 trained per sample" in r.stdout  # 4 steps x fraction 0.5
            assert len(read_rows(out / "metrics.csv")) == 1
    finally:
        mod.unlink()


@pytest.mark.parametrize("override,field", [
    ("--algorithm=nosuch", "algorithm"),
    ("reward.name=nosuch", "reward.name"),
    ("model.kind=nosuch", "model.kind"),
    ("train.epochs=three", "train.epochs"),
    ("train.train_batch_size=3", "train.train_batch_size"),
    ("train.lrr=0.1", "train.lrr"),
])
def test_bad_config_fails_with_the_field_named(tmp_path, tiny_models, override, field):
    cfg = make_config(tmp_path, tiny_models["eps"], "eps")
    args = ["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]
    if override.startswith("--algorithm="):
        args += [override]
    else:
        args += ["--algorithm", "ddpo", "--set", override]
    r = subprocess.run(pcpo_cmd(*args), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert field in r.stderr
    assert not (tmp_path / "o" / "metrics.csv").exists()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, tiny_models):
    from pcpo.config import load_config
    from pcpo.rewards import REWARDS
    from pcpo.trainer import Trainer, TrainingError

    calls = {"n": 0}

    def factory(**_):
        def fn(images, prompts, metadata):
            calls["n"] += 1
            r = images.mean(dim=(1, 2, 3))
            return (r * float("nan") if calls["n"] >= 2 else r), {}
        return fn

    REWARDS.register("test_nan_reward", factory, overwrite=True)
    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", epochs=3),
                      {"reward": {"name": "test_nan_reward"}})
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="non-finite loss.*epoch_000000"):
        Trainer(cfg, "dancegrpo", 0, out, progress=False).run()
    assert (out / "checkpoints" / "latest").read_text().strip() == "epoch_000000"
    assert len(read_rows(out / "metrics.csv")) == 1
    _ = torch


def test_restart_after_the_final_checkpoint_restores_deleted_logs(tmp_path, tiny_models):
    """Snakemake deletes an interrupted job's outputs; a run whose last checkpoint is final
    must write metrics.csv and DONE again from the checkpoint."""
    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", epochs=2))
    out = tmp_path / "run"
    Trainer(cfg, "ddpo", 0, out, progress=False).run()
    before = (out / "metrics.csv").read_text()
    (out / "metrics.csv").unlink()
    (out / "DONE").unlink()
    Trainer(cfg, "ddpo", 0, out, progress=False).run()
    assert (out / "metrics.csv").read_text() == before
    assert (out / "DONE").is_file()
