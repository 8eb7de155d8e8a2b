"""``benchmarks/memory_estimate.py`` reads its settings from ``config/paper`` the way the trainer does.

The table used to be a hand-written list that had drifted from the files (a LoRA rank for a full
fine-tune, rank 64 for a rank-128 run, micro-batch 8 for 9, 256 T5 tokens for 128).  These tests
pin it to the files and check the per-process arithmetic of what the trainer allocates.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "config" / "paper"


@pytest.fixture(scope="module")
def me():
    name = "pcpo_test_memory_estimate"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "memory_estimate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rows(me):
    return me.paper_configs()


def _raw(row):
    return yaml.safe_load((ROOT / row.source).read_text())


def test_every_paper_file_and_algorithm_has_a_row(rows):
    files = {p.relative_to(ROOT).as_posix() for p in PAPER.glob("*.yaml")}
    assert {r.source for r in rows} == files
    for path in files:
        raw = yaml.safe_load((ROOT / path).read_text())
        want = sorted({a for m in raw["matrix"] for a in m["algorithms"]})
        got = sorted(a for r in rows if r.source == path for a in r.algorithms)
        assert got == want, path


def test_rows_carry_the_files_settings(rows):
    for r in rows:
        raw = _raw(r)
        assert r.micro_batch == raw["train"]["train_batch_size"], r.name
        assert r.resolution == raw["model"]["options"]["resolution"], r.name
        assert r.model == raw["model"]["kind"]
        lora = raw.get("lora", {})
        assert r.lora_rank == (lora["rank"] if lora.get("enabled", True) else None), r.name
        assert r.processes == raw["resources"]["train"]["gpus"] * raw["resources"]["train"].get("nodes", 1)
        assert "not counted" not in r.note, r.note
    by = {r.name: r for r in rows}
    sd14 = by["dancegrpo_sd14_hpsv21"]
    assert sd14.lora_rank is None and sd14.cfg and not sd14.kl_copy
    flux = by["dancegrpo_flux_hpsv21"]
    assert flux.lora_rank == 128 and not flux.cfg and flux.text_tokens == 512  # distilled guidance, adapter default
    fg = by["flowgrpo_sd35m_pickscore"]
    assert fg.cfg and fg.ema and fg.text_tokens == 128 and not fg.kl_copy  # KL through the disabled adapter
    nft = by["diffusionnft_sd35m_pickscore"]
    assert not nft.cfg and nft.policy_copies == 2  # samples and trains CFG-free; theta_old + the live weights


def test_a_changed_file_changes_its_row(me, tmp_path):
    src = PAPER / "dancegrpo_sd14_hpsv21.yaml"
    raw = yaml.safe_load(src.read_text())
    raw["lora"] = {"enabled": True, "rank": 8, "alpha": 8}
    raw["train"]["kl_beta"] = 0.01
    raw["train"]["kl_reference"] = "copy"
    raw["algorithms"] = {"pcpo-dancegrpo": {"ema_decay": 0.99}}
    (tmp_path / src.name).write_text(yaml.safe_dump(raw))
    rows = me.paper_configs(tmp_path)
    assert len(rows) == 2  # the EMA override splits the algorithm from its pcpo- variant
    assert all(r.lora_rank == 8 and r.kl_copy for r in rows)
    assert {r.name: r.ema for r in rows} == {"dancegrpo_sd14_hpsv21:dancegrpo": False,
                                             "dancegrpo_sd14_hpsv21:pcpo-dancegrpo": True}


def test_a_file_without_a_resolution_is_refused_by_name(me, tmp_path):
    src = PAPER / "ddpo_sd15_aesthetic_bs256.yaml"
    raw = yaml.safe_load(src.read_text())
    del raw["model"]["options"]["resolution"]
    (tmp_path / src.name).write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"model\.options\.resolution"):
        me.paper_configs(tmp_path)


def test_train_state_arithmetic(me):
    base = dict(name="x", model="sd1", reward="aesthetic", resolution=512, micro_batch=1, cfg=False, lora_rank=None)
    n = 1000
    assert me.train_state_bytes(me.PaperConfig(**base), n) == 16 * n  # fp32 weight + grad + 2 moments
    assert me.train_state_bytes(me.PaperConfig(**base, ema=True), n) == 20 * n
    assert me.train_state_bytes(me.PaperConfig(**base, processes=8), n) == 20 * n  # + DDP gradient buckets
    assert me.train_state_bytes(me.PaperConfig(**base, processes=8, sharded=True, ema=True), n) == 20 * n // 8
    assert me.train_state_bytes(me.PaperConfig(**base, policy_copies=2), n) == 24 * n


def test_the_hook_keeps_the_copies_the_table_counts(me):
    """NFTSamplingPolicy holds theta_old and, during the rollout, the live weights: 2 float32 copies."""
    from pcpo.algorithms import discover
    from pcpo.rollout_hooks import ROLLOUT_HOOKS

    discover()
    params = [torch.zeros(3, 4), torch.zeros(5)]
    trainer = types.SimpleNamespace(model=types.SimpleNamespace(family="flow"), sharded=False, params=params)
    hook = ROLLOUT_HOOKS.get("nft_sampling_policy")(trainer)
    hook.before_rollout(trainer, 0)
    held = [t for v in vars(hook).values() if isinstance(v, list) for t in v if isinstance(t, torch.Tensor)]
    n = sum(p.numel() for p in params)
    assert sum(t.numel() for t in held) == me.HOOK_WEIGHT_COPIES["nft_sampling_policy"] * n


def test_full_fine_tune_estimate_counts_the_denoiser_once(me, rows):
    """SD1.4 full fine-tune: the UNet lives only as float32 trainables (+ DDP buckets), not also in bf16."""
    r = next(r for r in rows if r.name == "dancegrpo_sd14_hpsv21")
    e = me.estimate(r)
    n_den = round(e.denoiser_params_m * 1e6)
    assert round(e.trainable_params_m * 1e6) == n_den == 859_520_964
    assert e.train_gib * me.GiB == pytest.approx(20 * n_den)
    lora = me.estimate(me.PaperConfig(**{**r.__dict__, "lora_rank": 4}))
    assert lora.weights_gib - e.weights_gib == pytest.approx(n_den * 2 / me.GiB)  # the frozen bf16 UNet
    # the same graph, plus LoRA's own saved rank-r intermediates (a few percent more)
    assert e.act_gib < lora.act_gib < 1.1 * e.act_gib
