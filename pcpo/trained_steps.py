"""Which sampler steps a framework trains: named selection rules.

Each rule maps ``(T, fraction, B, generator)`` to a ``(B, K)`` LongTensor of step
indices, column ``j`` being the step sample ``b`` trains at its ``j``-th
forward/backward pass.  The references differ here, and the step one of them
drops is the one where the rollout/training precision mismatch is largest, so
the rule is a framework field (``Framework.step_selection``), not a trainer
constant:

* ``random`` (DDPO, ``scripts/train.py``): ``int(T * fraction)`` steps drawn
  without replacement from all T, independently per sample, in random order;
* ``random_but_last`` (DanceGRPO, ``train_grpo_sd.py`` / ``train_grpo_flux.py``):
  the last step is never trained; ``int((T - 1) * fraction)`` random steps of
  the first ``T - 1``, per sample;
* ``first`` (Flow-GRPO, ``scripts/train_sd3.py``): the first ``int(T * fraction)``
  steps, in sampling order, the same for every sample.

* ``stochastic`` (MixGRPO): every stochastic step of the epoch's noise schedule
  (its sliding SDE window), in sampling order, the same for every sample.

A module in ``baselines/`` may register its own rule with
:func:`register_step_selector`.  A rule that takes a ``stochastic`` keyword gets
the epoch's mask of stochastic steps (``pcpo.noise_schedules``), and a count that
takes ``n_stochastic`` gets their number; no rule may pick an ODE step.
"""
from __future__ import annotations

import inspect

from typing import Callable

import torch

from pcpo.registry import Registry

StepSelector = Callable[[int, float, int, torch.Generator], torch.Tensor]

STEP_SELECTORS: Registry[tuple[StepSelector, Callable[[int, float], int]]] = Registry("step selection rule")


def register_step_selector(name: str, count: Callable[[int, float], int]):
    """Decorator: register ``fn(T, fraction, B, generator) -> (B, K)`` under ``name``;
    ``count(T, fraction)`` is its K (so batch arithmetic can be printed before a rollout)."""

    def deco(fn: StepSelector) -> StepSelector:
        STEP_SELECTORS.register(name, (fn, count), overwrite=True)
        return fn

    return deco


def _count_all(T: int, fraction: float) -> int:
    return max(1, int(T * fraction))


def _count_but_last(T: int, fraction: float) -> int:
    if T < 2:
        raise ValueError("step selection 'random_but_last' needs at least 2 sampler steps")
    return max(1, int((T - 1) * fraction))


@register_step_selector("random", _count_all)
def select_random(T: int, fraction: float, B: int, generator: torch.Generator) -> torch.Tensor:
    K = _count_all(T, fraction)
    return torch.stack([torch.randperm(T, generator=generator)[:K] for _ in range(B)])


@register_step_selector("random_but_last", _count_but_last)
def select_random_but_last(T: int, fraction: float, B: int, generator: torch.Generator) -> torch.Tensor:
    K = _count_but_last(T, fraction)
    return torch.stack([torch.randperm(T - 1, generator=generator)[:K] for _ in range(B)])


@register_step_selector("first", _count_all)
def select_first(T: int, fraction: float, B: int, generator: torch.Generator) -> torch.Tensor:
    K = _count_all(T, fraction)
    return torch.arange(K).unsqueeze(0).expand(B, K).clone()


@register_step_selector("stochastic", lambda T, fraction, n_stochastic=None: n_stochastic or T)
def select_stochastic(T: int, fraction: float, B: int, generator: torch.Generator,
                      stochastic: torch.Tensor | None = None) -> torch.Tensor:
    idx = torch.arange(T) if stochastic is None else torch.nonzero(stochastic.reshape(-1)).reshape(-1)
    return idx.unsqueeze(0).expand(B, idx.numel()).clone()


def _takes(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def trained_step_count(rule: str, T: int, fraction: float, n_stochastic: int | None = None) -> int:
    count = STEP_SELECTORS.get(rule, "step_selection")[1]
    return count(T, fraction, n_stochastic=n_stochastic) if _takes(count, "n_stochastic") else count(T, fraction)


def select_steps(rule: str, T: int, fraction: float, B: int, generator: torch.Generator,
                 stochastic: torch.Tensor | None = None) -> torch.Tensor:
    fn, _ = STEP_SELECTORS.get(rule, "step_selection")
    out = fn(T, fraction, B, generator, stochastic=stochastic) if _takes(fn, "stochastic") else \
        fn(T, fraction, B, generator)
    n_st = None if stochastic is None else int(stochastic.sum())
    K = trained_step_count(rule, T, fraction, n_st)
    if tuple(out.shape) != (B, K) or out.dtype != torch.long:
        raise ValueError(f"step selection {rule!r} returned {tuple(out.shape)} {out.dtype}, expected ({B}, {K}) long")
    if (out < 0).any() or (out >= T).any():
        raise ValueError(f"step selection {rule!r} returned step indices outside [0, {T})")
    if stochastic is not None and not bool(stochastic[out].all()):
        raise ValueError(f"step selection {rule!r} picked deterministic (ODE) steps of this epoch's noise schedule; "
                         "they have no log-probability: use step_selection 'stochastic' or a rule that takes "
                         "the stochastic mask")
    return out
