"""Rollout hooks: extra work on an epoch's trajectories after sampling, before the
rewards (branching more trajectories from stored states, re-noising, filtering).

A hook is ``fn(trainer, traj, epoch, **options) -> Trajectory``: it may return the
trajectory it was given, changed or not, or a new one with more or fewer rows.  The
trainer then scores the rewards of whatever comes back, computes advantages over
it and trains on it, so what a hook adds is trained like a rollout row.  Model
forwards a hook makes through ``trainer.model.predict_guided`` are counted, as the
phase ``hook`` (``nfe_hook`` in metrics.csv).  A module in
``baselines/`` registers one with :func:`register_rollout_hook`.
"""
from __future__ import annotations

from pcpo.registry import Registry

ROLLOUT_HOOKS: Registry = Registry("rollout hook")


def register_rollout_hook(name: str):
    """Decorator: register ``fn(trainer, traj, epoch, **options) -> Trajectory`` under ``name``."""

    def deco(fn):
        ROLLOUT_HOOKS.register(name, fn, overwrite=True)
        return fn

    return deco


__all__ = ["ROLLOUT_HOOKS", "register_rollout_hook"]
