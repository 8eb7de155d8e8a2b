"""The tiny world's evaluator: a small CNN digit classifier with a boldness probe.

Trained only on the real train split (never on generated images) and
evaluated on the real held-out split.  It is

* the judge of the base models' quality bar (is a sample for "seven"
  classified as 7?), and
* the backbone of the learned rewards in :mod:`pcpo.rewards.tiny`: the
  prompted digit's probability (``digit_alignment``) and a linear probe on the
  penultimate features that predicts stroke thickness (``digit_boldness``),
  the way the LAION aesthetic predictor is a linear head on CLIP features
  (here trained jointly with the classifier, as an auxiliary regression task).

Inputs are images in [0, 1] of shape (B, C, H, W); RGB is averaged to grey
and other sizes are resized to 16x16, so the reward works on any image.

Training uses random one-pixel translations as augmentation (robustness to
the small misplacements generated digits show), AdamW and a cosine schedule,
all seeded; it takes seconds on a CPU.  The boldness head regresses the
standardised thickness (mean ink of the real 8x8 scan).

Saved as a folder: ``model.safetensors`` (CNN + probe) and ``config.json``
(architecture, thickness mean/std, held-out metrics).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcpo.tiny.data import NUM_CLASSES, RESOLUTION, from_unit, load_split, resize, to_unit

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class TinyClassifierConfig:
    """Knobs of the classifier and its boldness probe."""

    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    dropout: float = 0.2
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1  # random translation augmentation, in pixels
    boldness_weight: float = 0.3  # weight of the thickness-regression loss of the boldness head
    num_threads: int = 1  # 0: torch's default; 1 is fastest on a small shared CPU
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "pretrain.classifier") -> "TinyClassifierConfig":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in names:
                raise ValueError(f"{where}.{k}: unknown option; known: {', '.join(sorted(names))}")
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def smoke(cls, **overrides) -> "TinyClassifierConfig":
        base = dict(channels=(8, 16), hidden=32, epochs=1, progress=False)
        base.update(overrides)
        return cls.from_dict(base, where="pretrain.classifier(smoke)")


class DigitClassifier(nn.Module):
    """conv-conv-pool-conv-conv-pool-MLP on 16x16 grey digits, plus a linear
    thickness probe on the penultimate features."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64, dropout: float = 0.2,
                 thickness_mean: float = 0.0, thickness_std: float = 1.0):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c2 * (RESOLUTION // 4) ** 2, hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, NUM_CLASSES)
        self.boldness = nn.Linear(hidden, 1)
        self.register_buffer("thickness_stats", torch.tensor([thickness_mean, thickness_std]))
        self.arch = {"channels": list(channels), "hidden": hidden, "dropout": dropout}

    @staticmethod
    def prepare(images01: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size/channels -> (B, 1, 16, 16) in [-1, 1]."""
        x = images01.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        return from_unit(resize(x.clamp(0.0, 1.0), RESOLUTION))

    def embed(self, images01: torch.Tensor) -> torch.Tensor:
        return self.features(self.prepare(images01))

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 10) of [0, 1] images."""
        return self.head(self.embed(images01))

    def predict(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits, probabilities and predicted thickness (mean ink in [0, 1] units)."""
        h = self.embed(images01)
        logits = self.head(h)
        mean, std = self.thickness_stats
        thickness = self.boldness(h).squeeze(1) * std + mean
        return {"logits": logits, "probs": logits.softmax(-1), "thickness": thickness}


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random integer translations by up to ``max_shift`` pixels (zero = background fill)."""
    if max_shift <= 0:
        return x
    b = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    h, w = x.shape[-2:]
    return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


@torch.no_grad()
def evaluate_classifier(model: DigitClassifier, split: str = "heldout") -> dict[str, float]:
    """Accuracy and thickness-probe R^2 / MAE on a real split."""
    model.eval()
    data = load_split(split)
    out = model.predict(data.unit_images())
    acc = (out["logits"].argmax(-1) == data.labels).float().mean().item()
    err = out["thickness"] - data.thickness
    var = data.thickness.var(unbiased=False).item()
    return {"accuracy": acc, "thickness_r2": 1.0 - err.pow(2).mean().item() / var,
            "thickness_mae": err.abs().mean().item(), "n": len(data)}


def train_classifier(out_dir: str | os.PathLike, cfg: TinyClassifierConfig | None = None, seed: int = 0) -> Path:
    """Train the classifier and its boldness probe; save to ``out_dir`` (atomically)."""
    from pcpo.tiny.pretrain import torch_threads

    cfg = cfg or TinyClassifierConfig()
    with torch_threads(cfg.num_threads):
        return _train_classifier(out_dir, cfg, seed)


def _train_classifier(out_dir: str | os.PathLike, cfg: TinyClassifierConfig, seed: int) -> Path:
    from tqdm.auto import tqdm

    from pcpo.tiny.pretrain import atomic_dir, commit_dir

    t0 = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = load_split("train")
    x, y = data.images, data.labels  # [-1, 1]
    tmean, tstd = data.thickness.mean().item(), data.thickness.std().item()
    model = DigitClassifier(tuple(cfg.channels), cfg.hidden, cfg.dropout, tmean, tstd)

    n = x.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, total) / total)))
    z_thick = (data.thickness - tmean) / tstd
    model.train()
    bar = tqdm(range(cfg.epochs), desc="pretrain tiny classifier", disable=not cfg.progress, dynamic_ncols=True)
    for _ in bar:
        order = torch.randperm(n, generator=gen)
        tot = 0.0
        for j in range(steps_per_epoch):
            idx = order[j * cfg.batch_size:(j + 1) * cfg.batch_size]
            # the thickness target is translation invariant, so the same shifted batch serves both heads
            h = model.features(_shift(x[idx], gen, cfg.max_shift))
            ce = F.cross_entropy(model.head(h), y[idx])
            mse = F.mse_loss(model.boldness(h).squeeze(1), z_thick[idx])
            loss = ce + cfg.boldness_weight * mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += ce.item() * len(idx)
        bar.set_postfix(ce=f"{tot / n:.4f}")
    bar.close()
    model.eval()

    metrics = {"heldout": evaluate_classifier(model, "heldout"), "train": evaluate_classifier(model, "train"),
               "wall_time_s": time.time() - t0, "seed": seed}
    tmp = atomic_dir(out_dir)
    try:
        save_classifier(model, tmp, extra={"train_config": cfg.to_dict(), "metrics": metrics})
        return commit_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_classifier(model: DigitClassifier, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    config = {"model": "tiny-digit-classifier", "arch": model.arch,
              "thickness_mean": model.thickness_stats[0].item(), "thickness_std": model.thickness_stats[1].item()}
    config.update(extra or {})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> DigitClassifier:
    """Load a classifier folder written by :func:`train_classifier` (eval mode)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / CONFIG_NAME).is_file() or not (p / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{p}: not a tiny classifier folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
            "create one with `pcpo pretrain --model classifier --out DIR`"
        )
    config = json.loads((p / CONFIG_NAME).read_text())
    arch = config["arch"]
    model = DigitClassifier(tuple(arch["channels"]), arch["hidden"], arch["dropout"],
                            config["thickness_mean"], config["thickness_std"])
    model.load_state_dict(load_file(str(p / WEIGHTS_NAME)))
    model.eval()
    return model.to(device)


__all__ = ["TinyClassifierConfig", "DigitClassifier", "train_classifier", "evaluate_classifier",
           "save_classifier", "load_classifier", "to_unit"]
