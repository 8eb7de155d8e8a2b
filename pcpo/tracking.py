"""Live run tracking: every epoch's ``metrics.csv`` row as scalars, and at every checkpoint a grid of
that epoch's samples with their prompts and rewards, to TensorBoard (``train.tensorboard``, on by
default) and optionally to Weights & Biases (``train.wandb.enabled``).

Only the main process writes.  The x axis is the epoch (``global_step = epoch``, the ``epoch``
column of ``metrics.csv``).  A resumed run restarts at the epoch after its checkpoint: TensorBoard's
writer is opened with ``purge_step`` set to that epoch, so the events a killed run wrote after its
last checkpoint are dropped when read and each epoch appears once.  wandb keeps the first value it
was given for a step and ignores a step logged again (it warns), so a resumed wandb run has no
duplicate either; its id is kept in ``<run>/wandb_run_id`` so the resume continues the same run.

A logger switched on whose package is missing is an error naming the fix (:class:`TrackingError`,
one line from the CLI), raised before any model loads, never a silent skip.  Both packages are
imported only when switched on.
"""
from __future__ import annotations

import importlib
import logging
import os
import uuid
from pathlib import Path

import torch

from pcpo.config import ConfigError, TrainingConfig
from pcpo.utils import atomic_write_text

log = logging.getLogger("pcpo.tracking")

#: at most this many of an epoch's samples go into the checkpoint's image grid, each at most
#: IMAGE_SIDE pixels on its longer side (a full-scale run's 1024 px images are shrunk)
MAX_IMAGES = 16
IMAGE_SIDE = 256

#: metrics.csv column prefix -> tag prefix (first match wins); every other numeric column is train/<name>
_PREFIXES = (
    ("time_", "timing/"),
    ("reward_info_", "reward/info_"),
    ("reward_", "reward/"),
    ("rollout_mismatch_", "mismatch/rollout_"),
    ("logratio_", "mismatch/logratio_"),
    ("nfe_", "compute/nfe_"),
)
_EXACT = {"samples": "compute/samples", "stochastic_steps": "compute/stochastic_steps",
          "optimizer_steps": "compute/optimizer_steps"}


class TrackingError(ConfigError):
    """A logger is switched on but cannot run (package missing, wandb.init refused); the message
    names the setting and the fix."""


def tag_for(column: str) -> str:
    """The TensorBoard / wandb tag of a ``metrics.csv`` column: ``reward_mean`` -> ``reward/mean``,
    ``time_rollout`` -> ``timing/rollout``, ``rollout_mismatch_max`` -> ``mismatch/rollout_max``,
    ``clipfrac`` -> ``train/clipfrac``."""
    if column in _EXACT:
        return _EXACT[column]
    for prefix, group in _PREFIXES:
        if column.startswith(prefix) and len(column) > len(prefix):
            return group + column[len(prefix):]
    return f"train/{column}"


def scalars(row: dict) -> dict[str, float]:
    """Every numeric column of a metrics row but ``epoch``, under its tag."""
    return {tag_for(k): float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _import(module: str, setting: str, package: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrackingError(f"{setting}: is on but the {package} package cannot be imported ({e}); "
                            f"pip install {extra}, or set {setting}: false") from None


def check_available(cfg: TrainingConfig) -> None:
    """Fail before anything loads if a switched-on logger's package is missing (every process
    checks, so all of them stop together)."""
    if cfg.train.tensorboard:
        _import("torch.utils.tensorboard", "train.tensorboard", "tensorboard", "tensorboard")
    if cfg.train.wandb.enabled:
        _import("wandb", "train.wandb.enabled", "wandb", "wandb (or pip install -e '.[wandb]')")


class RunLoggers:
    """The switched-on loggers of one run (none on processes other than the main one)."""

    def __init__(self, cfg: TrainingConfig, out: Path, name: str, seed: int, start_epoch: int, config: dict,
                 main_process: bool = True):
        self.out = Path(out)
        self.tb = None
        self.wandb_run = None
        self._samples = None
        if not main_process:
            return
        if cfg.train.tensorboard:
            tb = _import("torch.utils.tensorboard", "train.tensorboard", "tensorboard", "tensorboard")
            # purge_step writes a session start at this epoch: a reader drops the events at or after it that
            # an earlier start wrote (the first start too, as TensorBoard's readers take a restart from the
            # second session start they see)
            self.tb = tb.SummaryWriter(str(self.out / "tensorboard"), purge_step=start_epoch)
            if start_epoch == 0:
                import json

                self.tb.add_text("run/config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)
            log.info("TensorBoard events in %s (watch with: tensorboard --logdir %s)", self.out / "tensorboard",
                     self.out)
        if cfg.train.wandb.enabled:
            try:
                self.wandb_run = self._open_wandb(cfg, name, seed, config)
            except BaseException:
                self.close(failed=True)
                raise

    def _open_wandb(self, cfg: TrainingConfig, name: str, seed: int, config: dict):
        w = cfg.train.wandb
        wandb = _import("wandb", "train.wandb.enabled", "wandb", "wandb (or pip install -e '.[wandb]')")
        id_file = self.out / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = uuid.uuid4().hex[:12]
            atomic_write_text(id_file, run_id + "\n")
        # where wandb keeps its files: train.wandb.dir, else $WANDB_DIR, else the run folder
        wdir = w.dir or os.environ.get("WANDB_DIR") or str(self.out)
        Path(wdir).mkdir(parents=True, exist_ok=True)
        try:
            run = wandb.init(project=w.project, entity=w.entity, group=w.group or cfg.experiment,
                             name=f"{name} s{seed}", tags=list(w.tags), job_type="train", config=config,
                             id=run_id, resume="allow", dir=wdir, mode=w.mode,
                             settings=wandb.Settings(console="off"))
        except Exception as e:  # wandb's own errors (no API key online, a refused project ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TrackingError(f"train.wandb: wandb.init failed ({first}); run `wandb login`, set "
                                "train.wandb.mode: offline (upload later with `wandb sync`), or set "
                                "train.wandb.enabled: false") from None
        log.info("wandb run %s (%s mode) in %s", run_id, w.mode or os.environ.get("WANDB_MODE", "online"), run.dir)
        return run

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wandb_run is not None

    def stash(self, traj) -> None:
        """Keep a few of this epoch's samples (on the CPU, shrunk) for the checkpoint's image grid."""
        if not self.active or traj.images is None:
            return
        n = min(MAX_IMAGES, traj.images.shape[0])
        img = traj.images[:n].detach().float().cpu().clamp(0, 1)
        side = max(img.shape[-2:])
        if side > IMAGE_SIDE:
            size = [max(1, round(s * IMAGE_SIDE / side)) for s in img.shape[-2:]]
            img = torch.nn.functional.interpolate(img, size=size, mode="bilinear", antialias=True).clamp(0, 1)
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        rewards = traj.rewards[:n].tolist() if traj.rewards is not None else [float("nan")] * n
        self._samples = {"images": img, "prompts": list(traj.prompts[:n]), "rewards": rewards}

    def log_epoch(self, row: dict, images: bool = False) -> None:
        """This epoch's scalars; with ``images``, the stashed samples as a grid with their prompts."""
        if not self.active:
            return
        epoch = int(row["epoch"])
        values = scalars(row)
        samples = self._samples if images else None
        self._samples = None
        if self.tb is not None:
            for tag, v in values.items():
                self.tb.add_scalar(tag, v, epoch)
            if samples is not None:
                from torchvision.utils import make_grid

                grid = make_grid(samples["images"], nrow=min(8, len(samples["images"])), padding=2, pad_value=1.0)
                self.tb.add_image("samples/grid", grid, epoch)
                self.tb.add_text("samples/prompts", _caption_table(samples), epoch)
            self.tb.flush()  # visible to a watching TensorBoard now, not in two minutes
        if self.wandb_run is not None:
            payload = dict(values)
            if samples is not None:
                import wandb

                payload["samples"] = [wandb.Image(im.permute(1, 2, 0).numpy(), caption=f"{p} | reward {r:.4g}")
                                      for im, p, r in zip(samples["images"], samples["prompts"], samples["rewards"])]
            self.wandb_run.log(payload, step=epoch)

    def close(self, failed: bool = False) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
            self.wandb_run = None


def _caption_table(samples: dict) -> str:
    lines = ["| image | prompt | reward |", "| ---: | --- | ---: |"]
    for i, (p, r) in enumerate(zip(samples["prompts"], samples["rewards"])):
        lines.append(f"| {i} | {str(p).replace('|', '/')} | {r:.4g} |")
    return "\n".join(lines)


__all__ = ["RunLoggers", "TrackingError", "check_available", "scalars", "tag_for"]
