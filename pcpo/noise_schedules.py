"""Per-step noise schedules: which sampler steps are stochastic in an epoch's
rollout, and at what level.

A schedule maps ``(T, epoch, **options)`` to ``T`` non-negative levels that
multiply each step's noise (``SamplerGrid.scaled``): 1 is the framework's own
level, 0 the deterministic ODE step of the same sampler (deterministic DDIM, or
the flow's Euler step).  Only stochastic steps have a log-probability, so only
they can be trained: the trained-step selectors draw from them, and the trainer
refuses a selection that lands on an ODE step.

``count(T, **options)`` is the number of stochastic steps, the same in every epoch
(the batch arithmetic is printed before the first rollout).  ``binary`` says the
levels are only ever 0 or 1: PCPO's proportional credit is computed on the
framework's own grid, so the PCPO transform needs a binary schedule.

A module in ``baselines/`` registers its own schedule with
:func:`register_noise_schedule` (MixGRPO's sliding window is one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pcpo.registry import Registry


@dataclass(frozen=True)
class NoiseSchedule:
    name: str
    levels: Callable[..., torch.Tensor]  # (T, epoch, **options) -> (T,) float
    count: Callable[..., int]  # (T, **options) -> stochastic steps per epoch
    binary: bool = True


NOISE_SCHEDULES: Registry[NoiseSchedule] = Registry("noise schedule")


def register_noise_schedule(name: str, count: Callable[..., int], binary: bool = True):
    """Decorator: register ``fn(T, epoch, **options) -> (T,) levels`` under ``name``."""

    def deco(fn):
        NOISE_SCHEDULES.register(name, NoiseSchedule(name, fn, count, binary), overwrite=True)
        return fn

    return deco


@register_noise_schedule("constant", count=lambda T, **_: T)
def constant(T: int, epoch: int) -> torch.Tensor:
    """Every step at the framework's own level (DDPO, DanceGRPO, Flow-GRPO)."""
    return torch.ones(T, dtype=torch.float64)


@register_noise_schedule("ode", count=lambda T, **_: 0)
def ode(T: int, epoch: int) -> torch.Tensor:
    """Every step deterministic: the sampler's ODE (DiffusionNFT's rollouts)."""
    return torch.zeros(T, dtype=torch.float64)


def schedule_levels(name: str, T: int, epoch: int, options: dict | None = None) -> torch.Tensor:
    """The levels of schedule ``name`` for ``epoch``, checked against its contract."""
    sch = NOISE_SCHEDULES.get(name, "noise_schedule")
    opts = dict(options or {})
    lv = torch.as_tensor(sch.levels(T, epoch, **opts), dtype=torch.float64).reshape(-1)
    if lv.shape[0] != T or (lv < 0).any() or not torch.isfinite(lv).all():
        raise ValueError(f"noise schedule {name!r} returned {lv.tolist()} for {T} steps (need {T} finite levels >= 0)")
    n = int((lv > 0).sum())
    if n != sch.count(T, **opts):
        raise ValueError(f"noise schedule {name!r}: {n} stochastic steps at epoch {epoch}, but its count says "
                         f"{sch.count(T, **opts)}")
    if sch.binary and not bool(((lv == 0) | (lv == 1)).all()):
        raise ValueError(f"noise schedule {name!r} is registered binary but returned levels {lv.tolist()}")
    return lv


def stochastic_count(name: str, T: int, options: dict | None = None) -> int:
    return int(NOISE_SCHEDULES.get(name, "noise_schedule").count(T, **dict(options or {})))


__all__ = ["NoiseSchedule", "NOISE_SCHEDULES", "register_noise_schedule", "schedule_levels", "stochastic_count"]
