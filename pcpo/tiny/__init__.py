"""The tiny world: a real-data text-to-image setting that runs on a small CPU.

* :mod:`pcpo.tiny.data` -- scikit-learn's 1,797 real handwritten digits,
  upsampled to 16x16, a fixed stratified train/held-out split, and measured
  attributes (ink thickness, slant) bucketed into words;
* :mod:`pcpo.tiny.prompts` -- prompt templates, the training and evaluation
  prompt sets, :func:`~pcpo.tiny.prompts.parse_digit`;
* :mod:`pcpo.tiny.text` -- a WordLevel tokenizer and a small CLIP text encoder;
* :mod:`pcpo.tiny.pretrain` -- pretraining of the epsilon ("eps") and
  rectified-flow ("flow") ``UNet2DConditionModel`` base models;
* :mod:`pcpo.tiny.classifier` -- the CNN evaluator behind the learned rewards;
* :mod:`pcpo.tiny.cli` -- ``pcpo pretrain``.

The model adapter is :mod:`pcpo.models.tiny` ("tiny-eps", "tiny-flow"), the
rewards are in :mod:`pcpo.rewards.simple` and :mod:`pcpo.rewards.tiny`.
Submodules are imported on demand; importing this package is cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load_split": "pcpo.tiny.data",
    "DigitsSplit": "pcpo.tiny.data",
    "training_prompts": "pcpo.tiny.prompts",
    "eval_prompts": "pcpo.tiny.prompts",
    "parse_digit": "pcpo.tiny.prompts",
    "build_tokenizer": "pcpo.tiny.text",
    "build_text_encoder": "pcpo.tiny.text",
    "TinyPretrainConfig": "pcpo.tiny.pretrain",
    "pretrain": "pcpo.tiny.pretrain",
    "TinyClassifierConfig": "pcpo.tiny.classifier",
    "train_classifier": "pcpo.tiny.classifier",
    "load_classifier": "pcpo.tiny.classifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pcpo.tiny' has no attribute {name!r}")
