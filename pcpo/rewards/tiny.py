"""Learned rewards of the tiny world, on the tiny digit classifier.

Both rewards read a classifier folder written by ``pcpo pretrain --model
classifier`` (see :mod:`pcpo.tiny.classifier`), given by the option
``classifier_path`` or else the environment variable ``PCPO_TINY_CLASSIFIER``.
The model is loaded on first use and cached per resolved path.

* ``digit_alignment`` -- the text-image alignment reward: the classifier's
  probability of the digit the prompt asks for (``metadata["digit"]``, else
  parsed from the prompt).  Range [0, 1].  The analogue of a VQA/CLIP-score
  alignment reward; base models start high but not at 1, and RL can lose it
  (the reward to watch for collapse when optimising something else).

* ``digit_boldness`` -- the "aesthetic" analogue: a learned regression head
  on the classifier's features that predicts stroke thickness (mean ink of
  the real scan, in [0, 1] units; real digits span about 0.15-0.45, mean
  ~0.29).  It is prompt independent, has clear headroom over the base models
  (bolder digits score higher) and, being a learned proxy evaluated off its
  training distribution, it can be over-optimised: blobs of ink may score
  well while ceasing to be digits, which ``digit_alignment`` then exposes.
  That tension is exactly the reward-hacking trade-off the DDPO aesthetic
  experiments show, at a size a CPU can run.

Both return ``info`` with the predicted class and whether it matches the
prompted digit, so any run can report alignment accuracy for free.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from pcpo.rewards import register_reward

ENV_VAR = "PCPO_TINY_CLASSIFIER"

_CACHE: dict[str, torch.nn.Module] = {}
_LOCK = threading.Lock()


def resolve_classifier_path(classifier_path: str | os.PathLike | None, reward: str) -> Path:
    """The classifier folder from the option or the environment, with a helpful error."""
    path = classifier_path if classifier_path not in (None, "") else os.environ.get(ENV_VAR) or None
    if path is None:
        raise ValueError(
            f"reward {reward}: option classifier_path is not set (and ${ENV_VAR} is empty); "
            "train the tiny classifier with `pcpo pretrain --model classifier --out DIR` and pass "
            f"classifier_path=DIR (or export {ENV_VAR}=DIR)"
        )
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"reward {reward}: classifier_path {str(p)!r} is not a tiny classifier folder; "
            "create it with `pcpo pretrain --model classifier --out DIR`"
        )
    return p


def get_classifier(path: Path) -> torch.nn.Module:
    """Load (once per resolved path) and return the classifier."""
    key = str(path.resolve())
    with _LOCK:
        if key not in _CACHE:
            from pcpo.tiny.classifier import load_classifier

            model = load_classifier(key)
            model.requires_grad_(False)
            _CACHE[key] = model
        return _CACHE[key]


def prompted_digits(prompts, metadata, reward: str) -> torch.Tensor:
    """The prompted digit of each sample: ``metadata[i]["digit"]``, else parsed from the prompt."""
    from pcpo.tiny.prompts import parse_digit

    n = len(prompts) if prompts is not None else len(metadata)
    out = []
    for i in range(n):
        d = None
        if metadata is not None and i < len(metadata) and metadata[i] is not None:
            d = metadata[i].get("digit")
        if d is None and prompts is not None:
            d = parse_digit(prompts[i])
        if d is None:
            prompt = prompts[i] if prompts is not None else None
            raise ValueError(f"reward {reward}: no digit in metadata['digit'] or in the prompt {prompt!r}")
        out.append(int(d))
    return torch.tensor(out, dtype=torch.long)


def _run(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.predict(images.detach().float().cpu())


@register_reward("digit_alignment")
def digit_alignment(classifier_path: str | None = None):
    """Reward = classifier probability of the prompted digit, in [0, 1]."""
    path = resolve_classifier_path(classifier_path, "digit_alignment")

    def fn(images, prompts, metadata):
        digits = prompted_digits(prompts, metadata, "digit_alignment")
        if digits.shape[0] != images.shape[0]:
            raise ValueError(f"reward digit_alignment: {images.shape[0]} images but {digits.shape[0]} prompts")
        out = _run(get_classifier(path), images)
        probs = out["probs"]
        reward = probs.gather(1, digits.view(-1, 1)).squeeze(1).float()
        pred = probs.argmax(1)
        return reward, {"predicted_digit": pred, "correct": (pred == digits).float(),
                        "thickness": out["thickness"].float()}

    return fn


@register_reward("digit_boldness")
def digit_boldness(classifier_path: str | None = None):
    """Reward = predicted stroke thickness (mean ink, [0, 1] units; prompt independent)."""
    path = resolve_classifier_path(classifier_path, "digit_boldness")

    def fn(images, prompts=None, metadata=None):
        out = _run(get_classifier(path), images)
        info = {"predicted_digit": out["probs"].argmax(1),
                "measured_ink": images.detach().float().cpu().flatten(1).mean(1)}
        try:
            digits = prompted_digits(prompts, metadata, "digit_boldness") if prompts is not None else None
        except ValueError:
            digits = None
        if digits is not None and digits.shape[0] == images.shape[0]:
            info["correct"] = (info["predicted_digit"] == digits).float()
            info["alignment"] = out["probs"].gather(1, digits.view(-1, 1)).squeeze(1).float()
        return out["thickness"].float(), info

    return fn
