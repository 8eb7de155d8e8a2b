"""Advantages: a registry of estimators, with DDPO's per-prompt running tracker and
GRPO's group normalisation built in.

An estimator is made by ``factory(**Framework.advantage_options)`` once per run and
called every epoch as ``estimator(prompts, rewards, group_ids) -> advantages`` with
every process's samples (the trainer gathers them first and keeps its own rows
after).  One that keeps state across epochs defines ``state_dict()`` and
``load_state_dict(state)``, and the state travels with the checkpoints.  A module in
``baselines/`` registers its own with :func:`register_advantage`.

An estimator that gives only zeros for some batch shapes (a group of one image
normalised against itself) declares it, so that such a run is refused before any
model loads instead of training nothing: ``register_advantage(name,
min_group_size=2)``, or ``check=fn`` with ``fn(shape: BatchShape, **options) ->
str | None`` returning the one-line reason (naming the config field and the fix)
when every advantage would be zero.  :func:`zero_advantage_reason` asks it.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import Callable

import torch

from pcpo.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")
#: kept for older imports: the registry answers ``name in ADVANTAGE_SCHEMES``
ADVANTAGE_SCHEMES = ADVANTAGES
#: name -> check(shape, **options) -> reason or None (see the module docstring)
ADVANTAGE_CHECKS: dict[str, Callable] = {}


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """What is known about every epoch's batch before anything runs."""

    algorithm: str
    group_size: int  # train.group_size
    groups: int  # train.prompts_per_epoch (over all processes)
    prompt_draw: str  # per_group (a group of group_size images shares a prompt) | per_sample
    epochs: int
    distinct_prompts: int | None = None  # the prompt pool's size, when known

    @property
    def samples(self) -> int:
        return self.groups * self.group_size

    @property
    def images_per_group(self) -> int:
        """Samples that share a group id (what a group normalisation compares)."""
        return self.group_size if self.prompt_draw == "per_group" else 1


def register_advantage(name: str, *, min_group_size: int | None = None, check: Callable | None = None):
    """Decorator: register ``factory(**options) -> estimator`` under ``name``.

    ``min_group_size``: the estimator gives only zeros unless a group holds at least this many
    images; ``check``: a general rule (see the module docstring).  A factory may also carry
    the rule as a ``zero_advantage_reason(shape, **options)`` class/static method."""

    def deco(factory):
        ADVANTAGES.register(name, factory, overwrite=True)
        rule = check or getattr(factory, "zero_advantage_reason", None)
        if min_group_size is not None:
            rule = _min_group_rule(name, min_group_size, rule)
        if rule is not None:
            ADVANTAGE_CHECKS[name] = rule
        else:
            ADVANTAGE_CHECKS.pop(name, None)
        return factory

    return deco


def _min_group_rule(name: str, n: int, then: Callable | None):
    def rule(shape: BatchShape, **options):
        if shape.images_per_group < n:
            return group_of_one_reason(name, shape, n)
        return then(shape, **options) if then is not None else None

    return rule


def group_of_one_reason(name: str, shape: BatchShape, n: int = 2) -> str:
    if shape.prompt_draw != "per_group":
        return (f"algorithms.{shape.algorithm}.advantage: the {name!r} advantage compares the images of a group, but "
                f"this framework draws a prompt per sample (prompt_draw: per_sample), so every group holds one image "
                "and every advantage is 0; use advantage: per_prompt, or prompt_draw: per_group with "
                "train.group_size >= 2")
    return (f"train.group_size: {shape.group_size} image(s) per prompt, but {shape.algorithm}'s {name!r} advantage "
            f"needs at least {n} per group (each reward is compared with its own group's mean, so every advantage "
            f"would be 0 and nothing would be learned); set train.group_size >= {n}")


def zero_advantage_reason(name: str, options: dict, shape: BatchShape) -> str | None:
    """Why estimator ``name`` with ``options`` can only give zero advantages for ``shape``, or None."""
    rule = ADVANTAGE_CHECKS.get(name)
    if rule is None:
        rule = getattr(ADVANTAGES.get(name, "advantage"), "zero_advantage_reason", None)
    return rule(shape, **options) if rule is not None else None


def _std(x: torch.Tensor, unbiased: bool) -> torch.Tensor:
    if x.numel() < 2:
        return torch.zeros((), dtype=x.dtype)
    return x.std(unbiased=unbiased)


class PerPromptStatTracker:
    """Normalise rewards per prompt with a buffer of that prompt's rewards.

    DDPO (``ddpo_pytorch/stat_tracking.py``): a running buffer of the last
    ``buffer_size`` rewards per prompt, kept across epochs; until a prompt has
    ``min_count`` rewards the batch's mean and std are used instead.

    Flow-GRPO (``flow_grpo/stat_tracking.py`` with ``global_std=True``, cleared by
    ``stat_tracker.clear()`` every epoch): ``history=False`` empties the buffers
    after every update, so the mean is over this epoch's samples of the prompt;
    ``global_std=True`` divides by the std of all of the epoch's rewards instead
    of the prompt's.  ``buffer_size=None`` keeps every reward.

    The std is the population std (numpy's default, ``unbiased=False``); ``eps`` is
    added to it.
    """

    def __init__(self, buffer_size: int | None = 32, min_count: int = 16, eps: float = 1e-6, unbiased: bool = False,
                 global_std: bool = False, history: bool = True):
        if (buffer_size is not None and buffer_size < 1) or min_count < 1:
            raise ValueError("buffer_size (or None) and min_count must be >= 1")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.eps = eps
        self.unbiased = unbiased
        self.global_std = global_std
        self.history = history
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        r = rewards.detach().to(torch.float64).cpu().reshape(-1)
        if len(prompts) != r.numel():
            raise ValueError(f"{len(prompts)} prompts for {r.numel()} rewards")
        adv = torch.empty_like(r)
        batch_mean, batch_std = r.mean(), _std(r, self.unbiased)
        order: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            order.setdefault(p, []).append(i)
        for p, idx in order.items():
            buf = self.buffers.setdefault(p, deque(maxlen=self.buffer_size))
            buf.extend(float(r[i]) for i in idx)
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                hist = torch.tensor(list(buf), dtype=torch.float64)
                mean, std = hist.mean(), _std(hist, self.unbiased)
            if self.global_std:
                std = batch_std
            adv[idx] = (r[idx] - mean) / (std + self.eps)
        if not self.history:
            self.buffers = {}
        return adv.to(torch.float32)

    def __call__(self, prompts: list[str], rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        return self.update(prompts, rewards)

    @staticmethod
    def zero_advantage_reason(shape: BatchShape, buffer_size: int | None = 32, min_count: int = 16,
                              history: bool = True, **_) -> str | None:
        """Cases decided before the run: one sample per epoch that nothing else is compared with;
        Flow-GRPO's per-epoch mean (``history: False``, ``min_count: 1``) over one image per prompt."""
        if shape.samples == 1 and (not history or buffer_size == 1 or min_count > shape.epochs):
            return (f"train.prompts_per_epoch: 1 prompt x train.group_size 1 = 1 sample per epoch; {shape.algorithm}'s "
                    "per-prompt advantage compares it only with itself, so every advantage would be 0; set "
                    "train.group_size >= 2 (or train.prompts_per_epoch >= 2)")
        if not history and min_count <= 1 and shape.prompt_draw == "per_group" and shape.group_size == 1 \
                and (shape.distinct_prompts is None or shape.distinct_prompts > 1):
            return (f"train.group_size: 1 image per prompt, but {shape.algorithm}'s per-prompt advantage subtracts the "
                    "mean of the epoch's images of the same prompt, so it is 0 unless a prompt happens to be drawn "
                    "twice; set train.group_size >= 2")
        return None

    def stats(self) -> dict:
        return {"prompts": len(self.buffers), "mean_buffer": (sum(len(b) for b in self.buffers.values()) / max(1, len(self.buffers)))}

    def state_dict(self) -> dict:
        return {"buffers": {p: list(b) for p, b in self.buffers.items()},
                "buffer_size": self.buffer_size, "min_count": self.min_count}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {p: deque(v, maxlen=self.buffer_size) for p, v in state["buffers"].items()}


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    eps: float = 1e-8,
    global_std: bool = False,
    unbiased: bool = True,
) -> torch.Tensor:
    """(r - mean_G) / (std_G + eps) over each group G of samples (GRPO).

    ``global_std=True`` divides by the std of the whole batch instead.  A group
    of equal rewards gives zeros.
    """
    r = rewards.detach().to(torch.float64).cpu().reshape(-1)
    g = group_ids.cpu().reshape(-1)
    if g.numel() != r.numel():
        raise ValueError(f"{g.numel()} group ids for {r.numel()} rewards")
    adv = torch.empty_like(r)
    gstd = _std(r, unbiased)
    for gid in torch.unique(g):
        m = g == gid
        x = r[m]
        std = gstd if global_std else _std(x, unbiased)
        adv[m] = (x - x.mean()) / (std + eps)
    return adv.to(torch.float32)


register_advantage("per_prompt")(PerPromptStatTracker)


@register_advantage("group", min_group_size=2)
class GroupAdvantage:
    """GRPO's group normalisation as an estimator (no state): :func:`group_advantages`."""

    def __init__(self, eps: float = 1e-8, global_std: bool = False, unbiased: bool = True):
        self.options = {"eps": eps, "global_std": global_std, "unbiased": unbiased}

    def __call__(self, prompts: list[str], rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        return group_advantages(rewards, group_ids, **self.options)


def clip_advantages(adv: torch.Tensor, max_abs: float | None) -> torch.Tensor:
    if max_abs is None or max_abs <= 0:
        return adv
    return adv.clamp(-max_abs, max_abs)
