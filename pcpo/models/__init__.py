"""Model adapters, looked up by name.

``load_model(name, path, **options)`` returns a :class:`ModelAdapter`.
Adapter modules register themselves on import; the built-in ones are imported
lazily so that importing :mod:`pcpo` stays cheap.
"""
from __future__ import annotations

import importlib

from pcpo.models.base import Cond, ModelAdapter, ScheduleSpec, cond_cat, cond_index, cond_to
from pcpo.registry import Registry

MODELS: Registry = Registry("model")

# name -> module that registers it (imported on first use)
_BUILTIN = {
    "tiny-eps": "pcpo.models.tiny",
    "tiny-flow": "pcpo.models.tiny",
    "sd1": "pcpo.models.sd",
    "flux": "pcpo.models.flux",
    "sd3": "pcpo.models.sd3",
}


def register_model(name: str):
    return MODELS.register(name)


def _ensure(name: str) -> None:
    if name not in MODELS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])


def model_names() -> list[str]:
    return sorted(set(MODELS.names()) | set(_BUILTIN))


def load_model(name: str, path: str, **options) -> ModelAdapter:
    """Load a model adapter by registered name from a local folder or hub id."""
    _ensure(name)
    if name not in MODELS:
        raise KeyError(f"model.kind: unknown model {name!r}; known: {', '.join(model_names())}")
    return MODELS.get(name)(path, **options)


__all__ = [
    "Cond", "ModelAdapter", "ScheduleSpec", "cond_cat", "cond_index", "cond_to",
    "MODELS", "register_model", "load_model", "model_names",
]
