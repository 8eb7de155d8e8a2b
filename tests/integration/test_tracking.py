"""Runs you can watch: a default tiny run writes TensorBoard events that TensorBoard's own reader
reads back (every metrics.csv column, one value per epoch, a sample grid at each checkpoint), a
resumed run does not duplicate epochs, wandb writes an offline run, and a switched-on logger whose
package is missing stops the run in one line before anything is written."""
import csv
import json
import logging
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.integration.test_trainer import make_config

pytestmark = pytest.mark.usefixtures("one_thread")

ALGORITHM = "pcpo-ddpo"


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def numeric_columns(rows: list[dict]) -> list[str]:
    def num(v):
        try:
            float(v)
            return True
        except ValueError:
            return False

    return [k for k in rows[0] if k != "epoch" and all(num(r[k]) for r in rows)]


def accumulate(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 0: keep every event (the defaults sample some tags down)
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def train(cfg_path: Path, out: Path, **overrides):
    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    cfg = load_config(cfg_path, overrides or None)
    Trainer(cfg, ALGORITHM, seed=0, out_dir=out, progress=False).run()
    return cfg


# ---------------------------------------------------------------- tags (no training)
def test_metrics_columns_map_to_grouped_tags():
    from pcpo.tracking import scalars, tag_for

    assert tag_for("reward_mean") == "reward/mean"
    assert tag_for("reward_std") == "reward/std"
    assert tag_for("reward_info_accuracy") == "reward/info_accuracy"
    assert tag_for("time_rollout") == "timing/rollout"
    assert tag_for("rollout_mismatch_max") == "mismatch/rollout_max"
    assert tag_for("logratio_first_max") == "mismatch/logratio_first_max"
    assert tag_for("clipfrac") == "train/clipfrac"
    assert tag_for("grad_norm") == "train/grad_norm"
    assert tag_for("nfe_total") == "compute/nfe_total"
    assert tag_for("a_new_column") == "train/a_new_column"
    # the epoch is the step, not a scalar; strings and flags are no scalars
    assert scalars({"epoch": 3, "reward_mean": 0.5, "zero_grad": 0, "note": "x", "flag": True}) == {
        "reward/mean": 0.5, "train/zero_grad": 0.0}


def test_wandb_is_resumable_and_checked(tmp_path):
    from pcpo.config import ConfigError, load_config
    from pcpo.trainer import RESUMABLE_CHANGES

    assert "train.tensorboard" in RESUMABLE_CHANGES and "train.wandb.enabled" in RESUMABLE_CHANGES
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"wandb": {"enabled": True, "mode": "offlne"}}}))
    with pytest.raises(ConfigError, match="train.wandb.mode"):
        load_config(p)
    p.write_text(yaml.safe_dump({"train": {"wandb": {"projct": "x"}}}))
    with pytest.raises(ConfigError, match="train.wandb.projct"):
        load_config(p)
    assert load_config(None).train.tensorboard is True  # on by default


# ---------------------------------------------------------------- a missing package: one line, nothing written
@pytest.mark.parametrize("module,setting,fix", [
    ("torch.utils.tensorboard", "train.tensorboard", "pip install tensorboard"),
    ("wandb", "train.wandb.enabled", "pip install wandb"),
])
def test_missing_logger_package_is_a_one_line_error(tmp_path, monkeypatch, capsys, module, setting, fix):
    from pcpo import cli

    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)  # cli.main sets it
    # no model at all: the check comes before anything loads or is written
    cfg = make_config(tmp_path, str(tmp_path / "no-model-here"), "eps")
    out = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--algorithm", ALGORITHM, "--out", str(out), "--no-progress"]
    if module == "wandb":
        argv += ["--set", "train.wandb.enabled=true"]
    rc = cli.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2
    assert len(err) == 1, err
    assert setting in err[0] and fix in err[0] and f"{setting}: false" in err[0], err[0]
    assert not out.exists() or sorted(p.name for p in out.iterdir()) in ([], [".lock"])


def test_wandb_init_refused_is_a_one_line_error(tmp_path, monkeypatch):
    import wandb

    from pcpo.config import load_config
    from pcpo.tracking import RunLoggers, TrackingError

    def refuse(**kw):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore")

    monkeypatch.setattr(wandb, "init", refuse)
    cfg = load_config(None, {"train": {"wandb": {"enabled": True, "mode": "online"}}})
    with pytest.raises(TrackingError) as e:
        RunLoggers(cfg, tmp_path / "run", ALGORITHM, 0, 0, {})
    msg = str(e.value)
    assert "\n" not in msg and "api_key not configured" in msg and "train.wandb.mode: offline" in msg, msg
    # the id a rerun would resume with is kept
    assert (tmp_path / "run" / "wandb_run_id").is_file()


# ---------------------------------------------------------------- TensorBoard, the default
@pytest.mark.slow
def test_default_run_writes_tensorboard_events_and_resume_does_not_duplicate(tmp_path, tiny_models):
    cfg_path = make_config(tmp_path, tiny_models["eps"], "eps", epochs=3, checkpoint_every=2)
    assert "tensorboard" not in yaml.safe_load(cfg_path.read_text())["train"]  # the default
    out = tmp_path / "run"
    cfg = train(cfg_path, out)
    rows = read_rows(out / "metrics.csv")
    logdir = out / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*")), sorted(p.name for p in out.iterdir())

    def check(ea, rows):
        from pcpo.tracking import tag_for

        tags = set(ea.Tags()["scalars"])
        cols = numeric_columns(rows)
        assert len(cols) >= 20, cols
        for want in ("reward/mean", "reward/std", "train/clipfrac", "train/clipfrac_inactive", "train/approx_kl",
                     "train/grad_norm", "mismatch/rollout_mean", "mismatch/rollout_max", "timing/rollout",
                     "timing/reward", "timing/train", "timing/epoch"):
            assert want in tags, (want, sorted(tags))
        assert {tag_for(c) for c in cols} == tags
        for c in cols:
            ev = ea.Scalars(tag_for(c))
            assert [e.step for e in ev] == [0, 1, 2], (c, [e.step for e in ev])
            # TensorBoard stores float32: the csv's value rounded to float32, exactly
            assert [e.value for e in ev] == [float(np.float32(float(r[c]))) for r in rows], c
        # a sample grid at each checkpoint (epochs 1 and 2 with checkpoint_every 2 and 3 epochs)
        assert ea.Tags()["images"] == ["samples/grid"]
        imgs = ea.Images("samples/grid")
        assert [e.step for e in imgs] == [1, 2]
        n = cfg.train.prompts_per_epoch * cfg.train.group_size  # 4 samples: one row of the grid
        side = json.loads((Path(tiny_models["eps"]) / "pcpo_model.json").read_text())["resolution"]
        assert (imgs[0].width, imgs[0].height) == (n * (side + 2) + 2, side + 4)
        # the prompts and rewards beside it, as text (torch names an add_text tag <tag>/text_summary); read
        # with the accumulator behind TensorBoard's plugins, which purges text on a restart as the UI does (the
        # legacy one above purges scalars and images only)
        from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

        pea = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
        pea.Reload()
        texts = pea.Tensors("samples/prompts/text_summary")
        assert [e.step for e in texts] == [1, 2]
        table = texts[-1].tensor_proto.string_val[0].decode()
        assert "| reward |" in table and table.count("\n") == n + 1, table
        assert [e.step for e in pea.Tensors("reward/mean")] == [0, 1, 2]

    check(accumulate(logdir), rows)

    # drop the last checkpoint: a rerun resumes after epoch 1 and writes epoch 2 again; the reader
    # must still see every epoch once (purge_step), with the rerun's values
    import shutil

    shutil.rmtree(out / "checkpoints" / "epoch_000002")
    (out / "checkpoints" / "latest").unlink()
    train(cfg_path, out)
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2
    rows = read_rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    check(accumulate(logdir), rows)


# ---------------------------------------------------------------- wandb, offline
def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` run file: wandb's LevelDB-style log (a 7-byte file header, then
    32 KiB blocks of records with a 7-byte header each: crc32, length, type; types 1 = full,
    2/3/4 = first/middle/last piece), each a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:
            break
        buf += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


@pytest.mark.slow
def test_wandb_offline_writes_its_run(tmp_path, tiny_models, monkeypatch):
    wdir = tmp_path / "wandb_dir"
    monkeypatch.setenv("WANDB_DIR", str(wdir))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written outside tmp_path
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    cfg_path = make_config(tmp_path, tiny_models["eps"], "eps", epochs=2, checkpoint_every=2, tensorboard=False,
                           wandb={"enabled": True, "mode": "offline", "project": "pcpo-test", "tags": ["ci"]})
    out = tmp_path / "run"
    train(cfg_path, out)
    assert not (out / "tensorboard").exists()  # switched off
    run_id = (out / "wandb_run_id").read_text().strip()
    runs = list((wdir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1, sorted(p.name for p in (wdir / "wandb").iterdir())
    records = wandb_records(runs[0] / f"run-{run_id}.wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "pcpo-test" and run.display_name == f"{ALGORITHM} s0" and list(run.tags) == ["ci"]
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == [0, 1]
    rows = read_rows(out / "metrics.csv")
    for h, row in zip(history, rows):
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in h.item}
        assert items["reward/mean"] == float(row["reward_mean"])
        assert items["train/grad_norm"] == float(row["grad_norm"])
        assert items["timing/epoch"] == float(row["time_epoch"])
    # the checkpoint's samples (epoch 1 only) as images with their prompts and rewards
    last = {i.key or "/".join(i.nested_key): i.value_json for i in history[1].item}
    assert json.loads(last["samples/count"]) == 4
    assert all("reward" in c for c in json.loads(last["samples/captions"]))
    assert not any((i.key or "/".join(i.nested_key)).startswith("samples") for i in history[0].item)
    files = json.loads(last["samples/filenames"])
    assert len(files) == 4 and all((runs[0] / "files" / f).is_file() for f in files), files
