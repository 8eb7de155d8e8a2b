"""pcpo evaluation: FID/KID/IS/diversity metrics (see :mod:`evaluation.metrics`).

Kept import-light: submodules (which pull in torch / torch-fidelity) load on
first attribute access, e.g. ``evaluation.metrics`` or ``from evaluation import metrics``.
"""

import importlib

__all__ = ["inception", "metrics"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
