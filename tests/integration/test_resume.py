"""Verified resume: a damaged newest checkpoint is skipped (logged, kept) and the run resumes
from the previous one; a missing ``latest`` falls back to the newest usable folder; either
way the run ends exactly where an uninterrupted one ends (metrics and final weights equal)."""
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.integration.test_trainer import TIME_COLS, read_rows

pytestmark = pytest.mark.usefixtures("one_thread")

ALG = "dancegrpo"


def _cfg_path(tmp: Path, model: str) -> Path:
    cfg = {
        "experiment": "test",
        "model": {"kind": "tiny-eps", "path": model},
        "reward": {"name": "jpeg_incompressibility"},
        "prompts": {"source": "tiny"},
        "sampling": {"steps": 4, "guidance_scale": 2.0, "batch_size": 16},
        "train": {"epochs": 3, "prompts_per_epoch": 2, "group_size": 2, "train_batch_size": 2,
                  "checkpoint_every": 1, "lr": 1e-3},
        "lora": {"enabled": True, "rank": 2, "alpha": 2},
    }
    p = tmp / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _train(cfg_file: Path, out: Path, **over):
    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    cfg = load_config(cfg_file, over or None)
    Trainer(cfg, ALG, 1, out, progress=False).run()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models):
    """An uninterrupted 3-epoch run with a checkpoint after every epoch."""
    tmp = tmp_path_factory.mktemp("resume_ref")
    cfg = _cfg_path(tmp, tiny_models["eps"])
    out = tmp / "full"
    _train(cfg, out)
    return cfg, out


def _interrupted_after(ref: Path, dst: Path, epoch: int) -> Path:
    """The run folder as a run stopped right after writing checkpoint ``epoch`` leaves it: the
    reference's own checkpoints up to ``epoch`` (the run is deterministic, so they are the ones
    an interrupted run writes), no later ones, no DONE."""
    shutil.copytree(ref, dst)
    for d in (dst / "checkpoints").glob("epoch_*"):
        if int(d.name.split("_")[1]) > epoch:
            shutil.rmtree(d)
    (dst / "DONE").unlink()
    rows = read_rows(dst / "metrics.csv")[: epoch + 1]
    from pcpo.trainer import _write_csv

    _write_csv(dst / "metrics.csv", rows)
    (dst / "checkpoints" / "latest").write_text(f"epoch_{epoch:06d}\n")
    return dst


def _assert_same_run(a: Path, b: Path) -> None:
    ra, rb = read_rows(a / "metrics.csv"), read_rows(b / "metrics.csv")
    assert len(ra) == len(rb) == 3
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k not in TIME_COLS} == {k: v for k, v in y.items() if k not in TIME_COLS}
    wa = load_file(str(a / "checkpoints" / "epoch_000002" / "trainable.safetensors"))
    wb = load_file(str(b / "checkpoints" / "epoch_000002" / "trainable.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((b / "DONE").read_text())["epochs"] == 3


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("victim", ["state.pt", "trainable.safetensors", "checkpoint.json"])
def test_truncated_newest_checkpoint_resumes_from_the_previous_one(reference, tmp_path, caplog, victim):
    cfg, full = reference
    run = _interrupted_after(full, tmp_path / "run", 1)
    bad = run / "checkpoints" / "epoch_000001" / victim
    _truncate(bad)
    with caplog.at_level(logging.INFO, logger="pcpo"):
        _train(cfg, run)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipping" in r.getMessage()]
    assert len(warnings) == 1 and str(bad) in warnings[0], warnings
    assert any("resuming from" in r.getMessage() and r.getMessage().split()[2].endswith("epoch_000000")
               for r in caplog.records)
    _assert_same_run(full, run)
    # the unreadable folder was not deleted: it was set aside when epoch 1 was written again
    kept = list((run / "checkpoints").glob("epoch_000001.untrusted-*"))
    assert len(kept) == 1, kept
    assert (kept[0] / victim).read_bytes() != (full / "checkpoints" / "epoch_000001" / victim).read_bytes()


def test_missing_latest_resumes_from_the_newest_usable_checkpoint(reference, tmp_path, caplog):
    cfg, full = reference
    run = _interrupted_after(full, tmp_path / "run", 1)
    (run / "checkpoints" / "latest").unlink()
    # a writer that died mid-save left its temporary folder: removed under the lock, never read
    stale = run / "checkpoints" / ".epoch_000002.tmp-999999-deadbeef"
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"half")
    with caplog.at_level(logging.INFO, logger="pcpo"):
        _train(cfg, run)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("latest is missing" in m for m in msgs), msgs
    assert any(m.startswith("resuming from") and "epoch_000001" in m for m in msgs), msgs
    assert not stale.exists()
    _assert_same_run(full, run)


def test_a_checkpoint_of_another_config_is_refused_naming_the_field(reference, tmp_path):
    from pcpo.config import ConfigError

    cfg, full = reference
    run = _interrupted_after(full, tmp_path / "run", 0)
    with pytest.raises(ConfigError, match=r"^train\.lr: .*epoch_000000 was written with 0\.001"):
        _train(cfg, run, train={"lr": 2e-3})
    # nothing was changed: the checkpoint is still the only one, metrics untouched
    assert sorted(d.name for d in (run / "checkpoints").iterdir()) == ["epoch_000000", "latest"]


def test_verify_checkpoint_names_the_file_and_reason(reference, tmp_path):
    from pcpo import checkpoint as ck

    _, full = reference
    good = full / "checkpoints" / "epoch_000000"
    meta, state, trainable, ema = ck.verify_checkpoint(good)
    assert meta["epoch"] == state["epoch"] == 0 and ema is None and trainable
    shapes = {k: tuple(v.shape) for k, v in trainable.items()}
    ck.verify_checkpoint(good, shapes)
    bad = tmp_path / "epoch_000000"
    shutil.copytree(good, bad)
    (bad / "state.pt").unlink()
    with pytest.raises(ck.CheckpointInvalid, match="state.pt: missing"):
        ck.verify_checkpoint(bad)
    shutil.copy(good / "state.pt", bad / "state.pt")
    k0 = sorted(shapes)[0]
    with pytest.raises(ck.CheckpointInvalid, match="trainable.safetensors: lacks"):
        ck.verify_checkpoint(bad, {**shapes, k0 + ".extra": (1,)})
