"""The Algorithm contract, the registry, baseline discovery, and PCPO as a transform.

A *framework* (DDPO, DanceGRPO, Flow-GRPO, or any module dropped into
``baselines/``) is a :class:`Framework`: which sampler and noise level it uses
per model family, how it computes advantages, its per-step objective, which
timesteps it trains, and its defaults.  Registering one is a call to
:func:`register_framework` at import time of a module in ``baselines/``; every
module there is imported automatically.

PCPO is a transform, not one more copy: for every registered framework ``X``

* ``pcpo-X``: log-hinge objective in matching form + proportional credit
  (reshaped sigma~ for DDIM, zeta*ds for flow); everything else as ``X``;
* ``pcpo-base-X``: the log-hinge objective alone (native credit), for ablation.

``pcpo.variant`` in a config picks the authors' own ablations of ``pcpo-X``
(``uw-lambda``, ``logrho``; see :func:`pcpo.credit.apply_variant`), and
``pcpo algorithms --show pcpo`` checks the transform against their code's lineage
(:mod:`pcpo.recipes`, jaylee2000/rsm).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from pcpo.advantages import ADVANTAGES
from pcpo.noise_schedules import NOISE_SCHEDULES
from pcpo.objectives import FORMS, KL_FORMS, OBJECTIVES
from pcpo.registry import Registry
from pcpo.rollout.grid import SAMPLERS
from pcpo.rollout_hooks import ROLLOUT_HOOKS
from pcpo.trained_steps import STEP_SELECTORS

CFG_GRADS = ("both", "cond_only")
#: how the trainer cuts an epoch's samples into micro-batches: shuffled samples, or shuffled
#: whole groups (a loss over the images of one prompt, DGPO's, needs the group in one batch)
MICRO_BATCHES = ("samples", "groups")
PROMPT_DRAWS = ("per_group", "per_sample")
EMA_UNITS = ("batch", "step", "epoch")
FAMILIES = ("ddim", "flow")


@dataclass(frozen=True)
class Ref:
    """What the authors' code does for one setting, and where.

    ``value`` is the reference's value (``None`` where it has no counterpart);
    ``source`` names the file and function (and quotes the line where short);
    ``deliberate`` marks a default of ours that differs on purpose, with the
    reason in ``note``.  Recipe cards (``pcpo algorithms --show NAME``) are
    generated from these, so they cannot drift from the registered framework.
    """

    value: Any
    source: str
    note: str = ""
    deliberate: bool = False


@dataclass(frozen=True)
class Framework:
    name: str
    description: str
    #: sampler per model family: {"ddim": "ddim", "flow": "flow-dance"}; a family
    #: missing here means the framework does not support that kind of model
    samplers: dict
    #: DDIM eta (ddim family)
    eta: float = 1.0
    #: flow-SDE noise level (eta for DanceGRPO form, a for Flow-GRPO form)
    noise_level: float = 0.7
    #: an advantage estimator of :mod:`pcpo.advantages` ("per_prompt": DDPO's running tracker,
    #: "group": GRPO's), or one a baseline module registered
    advantage: str = "group"
    advantage_options: dict = field(default_factory=dict)
    #: absolute advantage clip (0 or None: none)
    adv_clip: float | None = 5.0
    #: a per-step objective of :mod:`pcpo.objectives` (ppo_clip, log_hinge, or registered)
    objective: str = "ppo_clip"
    objective_form: str = "ratio"
    #: options handed to the objective in its StepContext
    objective_options: dict = field(default_factory=dict)
    #: which steps are stochastic in each epoch's rollout (:mod:`pcpo.noise_schedules`)
    noise_schedule: str = "constant"
    noise_schedule_options: dict = field(default_factory=dict)
    #: extra rollout work after sampling, before rewards (:mod:`pcpo.rollout_hooks`)
    rollout_hook: str | None = None
    rollout_hook_options: dict = field(default_factory=dict)
    clip_range: float = 1e-4
    #: fraction of each trajectory's steps trained (how it is applied: ``step_selection``)
    timestep_fraction: float = 1.0
    #: which steps are trained: a rule of :mod:`pcpo.trained_steps` (random | random_but_last | first)
    step_selection: str = "random"
    #: gradient through classifier-free guidance in the training forward: both branches,
    #: or the conditional one only (the unconditional prediction detached, as Flow-GRPO)
    cfg_grad: str = "both"
    #: micro-batches of shuffled samples, or of shuffled whole groups (``train_batch_size`` a
    #: multiple of ``group_size``); see :func:`micro_batch_rows`
    micro_batches: str = "samples"
    #: how a sample's prompt is drawn: one prompt per group of group_size images
    #: (GRPO), or an i.i.d. prompt for every sample (DDPO)
    prompt_draw: str = "per_group"
    #: whether the G images of one prompt share their initial noise
    share_initial_noise: bool = False
    #: KL penalty to the reference model (closed form on the step means)
    kl_beta: float = 0.0
    #: ``gaussian``: |mu - mu_ref|^2 / (2 std^2) with the step std (the exact KL of the two
    #: step Gaussians); ``flow_grpo``: the same over sigma~(s)^2 = std^2 / ds, Flow-GRPO's code
    kl_form: str = "gaussian"
    #: EMA of the trained weights (None: off); used for evaluation and checkpoints' ema file
    ema_decay: float | None = None
    #: Flow-GRPO's warm-up: decay min((1 + n) / (10 + n), ema_decay) at the n-th update
    ema_warmup: bool = False
    #: optimizer steps between EMA updates
    ema_every: int = 1
    #: when the EMA is stepped: "batch", after every training micro-batch with the optimizer-step
    #: count (Flow-GRPO's rule); "step", after every optimizer step (DiffusionNFT's);
    #: "epoch", once after each epoch's update (DanceGRPO's FSDP_EMA)
    ema_unit: str = "batch"
    #: PCPO's proportional credit
    proportional: bool = False
    #: name of the framework this one was derived from (PCPO transform)
    base: str | None = None
    #: training defaults a config may override (e.g. {"max_grad_norm": 1.0})
    defaults: dict = field(default_factory=dict)
    #: field values that differ by model family, e.g. {"ddim": {"timestep_fraction": 1.0}}
    per_family: dict = field(default_factory=dict)
    #: the authors' value and source of each field ({field: Ref}, or "ddim.field" for a
    #: per-family value); read by the recipe card, never by the trainer
    references: dict = field(default_factory=dict, compare=False, repr=False)
    #: paper configs that run this framework at full scale, and the reference's value of each
    #: of their settings: {"config/paper/x.yaml": {"train.lr": Ref(...)}}
    config_references: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if not self.samplers:
            raise ValueError(f"framework {self.name!r}: samplers must name at least one model family")
        for fam, s in self.samplers.items():
            if fam not in ("ddim", "flow") or s not in SAMPLERS:
                raise ValueError(f"framework {self.name!r}: bad sampler entry {fam!r}: {s!r}")
        for fname, val, reg in (("advantage", self.advantage, ADVANTAGES), ("objective", self.objective, OBJECTIVES),
                                ("noise_schedule", self.noise_schedule, NOISE_SCHEDULES),
                                ("step_selection", self.step_selection, STEP_SELECTORS)):
            if val not in reg:
                raise ValueError(f"framework {self.name!r}: {fname} {val!r} is not registered (registered: "
                                 f"{', '.join(reg.names())}); register it before the framework")
        if self.rollout_hook is not None and self.rollout_hook not in ROLLOUT_HOOKS:
            raise ValueError(f"framework {self.name!r}: rollout_hook {self.rollout_hook!r} is not registered "
                             f"(registered: {', '.join(ROLLOUT_HOOKS.names()) or 'none'})")
        if self.objective_form not in FORMS:
            raise ValueError(f"framework {self.name!r}: objective_form must be one of {FORMS}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"framework {self.name!r}: timestep_fraction must be in (0, 1]")
        for fname, val, allowed in (("cfg_grad", self.cfg_grad, CFG_GRADS), ("prompt_draw", self.prompt_draw, PROMPT_DRAWS),
                                    ("kl_form", self.kl_form, KL_FORMS),
                                    ("micro_batches", self.micro_batches, MICRO_BATCHES),
                                    ("ema_unit", self.ema_unit, EMA_UNITS)):
            if val not in allowed:
                raise ValueError(f"framework {self.name!r}: {fname} must be one of {allowed}, got {val!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"framework {self.name!r}: ema_decay must be in (0, 1) or None")
        if self.ema_every < 1:
            raise ValueError(f"framework {self.name!r}: ema_every must be >= 1")
        known = {f.name for f in dataclasses.fields(self)} - {"name", "base", "description", "per_family",
                                                              "references", "config_references", "samplers"}
        for fam, over in self.per_family.items():
            if fam not in FAMILIES or not isinstance(over, dict):
                raise ValueError(f"framework {self.name!r}: per_family keys must be {FAMILIES} with mappings")
            bad = sorted(set(over) - known)
            if bad:
                raise ValueError(f"framework {self.name!r}: per_family.{fam}.{bad[0]} is not a framework field")

    def sampler_for(self, family: str) -> str:
        if family not in self.samplers:
            raise ValueError(
                f"algorithm {self.name!r} does not support {family!r} models (it supports: {', '.join(self.samplers)})"
            )
        return self.samplers[family]

    def for_family(self, family: str) -> "Framework":
        """This framework with its ``per_family`` values for ``family`` applied."""
        self.sampler_for(family)
        over = self.per_family.get(family) or {}
        return dataclasses.replace(self, **over, per_family={}) if over else self

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("references", None)
        d.pop("config_references", None)
        return d


def micro_batch_rows(mode: str, group_ids: torch.Tensor, batch_size: int,
                     generator: torch.Generator) -> list[torch.Tensor]:
    """One inner epoch's micro-batches (row indices) of a process's samples.

    ``samples``: a random permutation of the rows cut into ``batch_size`` pieces (every
    framework's default).  ``groups``: a random permutation of the groups (``group_ids``), each
    group's rows kept together, cut into pieces of ``batch_size`` rows; every group is then
    whole in one micro-batch, which needs ``batch_size`` to be a multiple of the group size."""
    B = int(group_ids.numel())
    if mode == "samples":
        perm = torch.randperm(B, generator=generator)
    elif mode == "groups":
        gids, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
        if bool((batch_size % counts).any()):
            raise ValueError(f"train.train_batch_size: {batch_size} is not a multiple of the group size "
                             f"({sorted(set(counts.tolist()))}); this algorithm's loss needs whole groups in each "
                             "micro-batch")
        order = torch.randperm(int(gids.numel()), generator=generator)
        perm = torch.cat([torch.nonzero(inverse == g).reshape(-1) for g in order.tolist()])
    else:
        raise ValueError(f"micro_batches must be one of {MICRO_BATCHES}, got {mode!r}")
    return [perm[i:i + batch_size] for i in range(0, B, batch_size)]


FRAMEWORKS: Registry[Framework] = Registry("algorithm")
_discovered = False


def register_framework(fw: Framework) -> Framework:
    """Register a framework (called at import time by a module in ``baselines/``)."""
    if fw.name.startswith("pcpo-"):
        raise ValueError("names starting with 'pcpo-' are reserved for the PCPO transform")
    FRAMEWORKS.register(fw.name, fw, overwrite=True)
    return fw


def discover(reload: bool = False) -> None:
    """Import every module of the ``baselines`` package (each registers itself)."""
    global _discovered
    if _discovered and not reload:
        return
    import baselines

    importlib.invalidate_caches()
    for info in pkgutil.iter_modules(baselines.__path__):
        if info.name.startswith("_"):
            continue
        modname = f"baselines.{info.name}"
        if modname in sys.modules and reload:
            importlib.reload(sys.modules[modname])
        else:
            importlib.import_module(modname)
    _discovered = True


class NotTransformable(ValueError):
    """PCPO's two parts are not defined for this framework."""


def untransformable(fw: Framework) -> str | None:
    """Why PCPO is not defined on ``fw`` (None: it is)."""
    if not OBJECTIVES.get(fw.objective).likelihood:
        return (f"{fw.name}'s objective {fw.objective!r} does not use per-step log-likelihood ratios, and PCPO "
                "replaces exactly that ratio objective by its log-hinge")
    if not NOISE_SCHEDULES.get(fw.noise_schedule).binary:
        return (f"{fw.name}'s noise schedule {fw.noise_schedule!r} changes step noise levels, and PCPO's "
                "proportional credit is computed on the sampler's own levels")
    return None


def pcpo_transform(fw: Framework, proportional: bool = True) -> Framework:
    """PCPO applied to a framework: log-hinge in matching form (+ proportional credit).

    Defined where both parts are: the log-hinge replaces an objective of the step
    log-ratio (not a likelihood-free one), and the proportional weights are computed
    on the framework's own grid, so every stochastic step must run at its own level
    (a binary noise schedule)."""
    prefix = "pcpo-" if proportional else "pcpo-base-"
    why = untransformable(fw)
    if why is not None:
        raise NotTransformable(f"algorithm: {prefix}{fw.name} is not defined: {why}; run {fw.name} itself")
    what = "log-hinge objective + proportional credit" if proportional else "log-hinge objective, native credit"
    return dataclasses.replace(
        fw,
        name=prefix + fw.name,
        description=f"PCPO on {fw.name}: {what}",
        objective="log_hinge",
        objective_form="matching",
        proportional=proportional,
        base=fw.name,
    )


def get_algorithm(name: str, field_name: str = "algorithm") -> Framework:
    """Resolve ``X``, ``pcpo-X`` or ``pcpo-base-X``."""
    discover()
    if name.startswith("pcpo-base-"):
        return pcpo_transform(_get(name[len("pcpo-base-"):], name, field_name), proportional=False)
    if name.startswith("pcpo-"):
        return pcpo_transform(_get(name[len("pcpo-"):], name, field_name), proportional=True)
    return _get(name, name, field_name)


def _get(base: str, full: str, field_name: str) -> Framework:
    if base not in FRAMEWORKS:
        raise KeyError(f"{field_name}: unknown algorithm {full!r}; available: {', '.join(algorithm_names())}")
    return FRAMEWORKS.get(base)


def algorithm_names() -> list[str]:
    """Every runnable name: each framework and its two PCPO variants where PCPO is defined."""
    discover()
    out = []
    for n, fw in FRAMEWORKS.items():
        out += [n] if untransformable(fw) is not None else [n, f"pcpo-{n}", f"pcpo-base-{n}"]
    return out
