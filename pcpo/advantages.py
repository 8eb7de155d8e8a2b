"""Advantages: a registry of estimators, with DDPO's per-prompt running tracker and
GRPO's group normalisation built in.

An estimator is made by ``factory(**Framework.advantage_options)`` once per run and
called every epoch as ``estimator(prompts, rewards, group_ids) -> advantages`` with
every process's samples (the trainer gathers them first and keeps its own rows
after).  One that keeps state across epochs defines ``state_dict()`` and
``load_state_dict(state)``, and the state travels with the checkpoints.  A module in
``baselines/`` registers its own with :func:`register_advantage`.
"""
from __future__ import annotations

from collections import deque

import torch

from pcpo.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")
#: kept for older imports: the registry answers ``name in ADVANTAGE_SCHEMES``
ADVANTAGE_SCHEMES = ADVANTAGES


def register_advantage(name: str):
    """Decorator: register ``factory(**options) -> estimator`` under ``name``."""

    def deco(factory):
        ADVANTAGES.register(name, factory, overwrite=True)
        return factory

    return deco


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


ADVANTAGES.register("per_prompt", PerPromptStatTracker)


@register_advantage("group")
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
