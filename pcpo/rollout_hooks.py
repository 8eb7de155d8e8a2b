"""Rollout hooks: extra work around an epoch's rollout (branching more trajectories
from stored states, re-noising, filtering, sampling with another policy).

The simplest hook is a function ``fn(trainer, traj, epoch, **options) -> Trajectory``
called after sampling, before the rewards: it may return the trajectory it was
given, changed or not, or a new one with more or fewer rows.  The trainer then
scores the rewards of whatever comes back, computes advantages over it and trains
on it, so what a hook adds is trained like a rollout row.

A hook that keeps state across epochs is a subclass of :class:`RolloutHook`,
constructed once per run as ``cls(trainer, **options)``, with four optional parts:

* ``before_rollout(trainer, epoch)``: e.g. load the weights the epoch samples with;
* ``after_rollout(trainer, traj, epoch) -> Trajectory``: as the function form;
* ``after_update(trainer, epoch)``: after the epoch's optimizer steps, before its
  checkpoint (e.g. move a sampling policy towards the trained one);
* ``state_dict()`` / ``load_state_dict(state)``: what travels in the checkpoint, so a
  killed run resumes exactly.

Model forwards a hook makes through ``trainer.model.predict_guided`` are counted:
in ``before_rollout`` and the rollout as ``rollout``, in ``after_rollout`` as
``hook`` (``nfe_hook`` in metrics.csv).  A module in ``baselines/`` registers either
form with :func:`register_rollout_hook`.
"""
from __future__ import annotations

import inspect

from pcpo.registry import Registry

ROLLOUT_HOOKS: Registry = Registry("rollout hook")


class RolloutHook:
    """A rollout hook with state across epochs (see the module docstring)."""

    def __init__(self, trainer, **options):
        self.options = options

    def before_rollout(self, trainer, epoch: int) -> None:
        pass

    def after_rollout(self, trainer, traj, epoch: int):
        return traj

    def after_update(self, trainer, epoch: int) -> None:
        pass

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class _FunctionHook(RolloutHook):
    """The function form, as a hook with no state."""

    def __init__(self, fn, trainer, **options):
        super().__init__(trainer, **options)
        self.fn = fn

    def after_rollout(self, trainer, traj, epoch: int):
        return self.fn(trainer, traj, epoch, **self.options)


def register_rollout_hook(name: str):
    """Decorator: register ``fn(trainer, traj, epoch, **options) -> Trajectory`` or a
    :class:`RolloutHook` subclass under ``name``."""

    def deco(obj):
        if inspect.isclass(obj) and not issubclass(obj, RolloutHook):
            raise TypeError(f"rollout hook {name!r}: a class must subclass pcpo.rollout_hooks.RolloutHook")
        ROLLOUT_HOOKS.register(name, obj, overwrite=True)
        return obj

    return deco


def make_hook(name: str | None, trainer, options: dict | None = None) -> RolloutHook | None:
    """The run's hook instance for the registered ``name`` (None: no hook)."""
    if name is None:
        return None
    obj = ROLLOUT_HOOKS.get(name, "rollout_hook")
    if inspect.isclass(obj):
        return obj(trainer, **(options or {}))
    return _FunctionHook(obj, trainer, **(options or {}))


__all__ = ["ROLLOUT_HOOKS", "RolloutHook", "make_hook", "register_rollout_hook"]
