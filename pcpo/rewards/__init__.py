"""Reward functions, looked up by name.

A reward *factory* is registered under a name; calling it with options returns
a reward function with the signature

    fn(images, prompts, metadata) -> (rewards, info)

``images``: float tensor in [0, 1], shape (B, C, H, W), C in {1, 3};
``prompts``: list of B strings; ``metadata``: list of B dicts (for example the
prompted digit); ``rewards``: float32 tensor of shape (B,) on the CPU;
``info``: dict of extra per-sample tensors or scalars for logging.
"""
from __future__ import annotations

import importlib

from pcpo.registry import Registry

REWARDS: Registry = Registry("reward")

_BUILTIN_MODULES = ["pcpo.rewards.simple", "pcpo.rewards.tiny", "pcpo.rewards.learned", "pcpo.rewards.bertscore"]


def register_reward(name: str):
    return REWARDS.register(name)


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module not written yet / optional dependency
            if e.name != mod:
                raise


def reward_names() -> list[str]:
    _load_builtins()
    return REWARDS.names()


def get_reward(name: str, field: str = "reward.name", **options):
    """Build the reward function registered as ``name``."""
    _load_builtins()
    return REWARDS.get(name, field)(**options)
