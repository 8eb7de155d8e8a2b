"""Per-step policy objectives: PPO-clip, PCPO's log-hinge, and the lineage's logrho clip.

Every objective works on per-(sample, step) log-ratios.  How the log-ratio is
computed is a separate choice (the *form*):

* ``ratio``: ``log p_new - log p_old`` from two log-densities (DDPO, DanceGRPO,
  Flow-GRPO), optionally rescaled per step by ``step_weight / grid_weight``;
* ``matching``: ``-[w <delta, z> + 0.5 w^2 |delta|^2]`` straight from the
  prediction difference and the stored noise (docs/method.md §2), which
  needs no subtraction of large numbers.

The per-step weight ``w`` is the *credit hook*: the same objective serves the
native weights and PCPO's proportional ones (see :mod:`pcpo.credit`).

Objectives are a registry.  An objective is ``fn(ctx: StepContext) -> (loss,
inactive)``, both per sample of one trained step: ``loss`` the per-sample loss the
trainer averages and backpropagates, ``inactive`` where its gradient is zero (the
clip fraction).  The context carries the log-ratio, the advantages, the step's
output under the current policy, the grid, and lazily the rollout policy's step
mean, so an objective that renormalises the ratio or weights its steps (GRPO-Guard,
TempFlow-GRPO) needs no trainer change.  ``likelihood=False`` registers one that
does not use the step log-ratio at all; the PCPO transform, which replaces the
objective by the log-hinge on the log-ratio, refuses such a framework.  A module
in ``baselines/`` registers its own with :func:`register_objective`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from pcpo.registry import Registry
from pcpo.rollout.steps import _bcast, matching_log_ratio, reduce_dims

FORMS = ("ratio", "matching")
#: ``gaussian``: the exact KL of the two step Gaussians; ``flow_grpo``: Flow-GRPO's code;
#: ``prediction``: the mean squared difference of the two network predictions (DiffusionNFT's)
KL_FORMS = ("gaussian", "flow_grpo", "prediction")


def ppo_clip_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float):
    """max(-A rho, -A clip(rho, 1 - xi, 1 + xi)) per element.

    Returns ``(loss, inactive)``; ``inactive`` marks elements whose gradient the
    clip removed (rho outside the trust region on the side the advantage pushes).
    At rho = 1 the loss is -A.
    """
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        inactive = ((advantages > 0) & (ratio > 1.0 + clip_range)) | ((advantages < 0) & (ratio < 1.0 - clip_range))
    return loss, inactive


def log_hinge_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float):
    """max(0, xi |A| - A log rho) per element (PCPO's stable objective, docs/method.md §3a).

    ``inactive`` marks elements where the hinge is flat (A log rho >= xi |A|).
    At rho = 1 the loss is xi |A|.
    """
    margin = clip_range * advantages.abs() - advantages * log_ratio
    loss = torch.clamp(margin, min=0.0)
    with torch.no_grad():
        inactive = margin <= 0
    return loss, inactive


@dataclass
class StepContext:
    """What a per-step objective sees for one micro-batch at one trained step each."""

    log_ratio: torch.Tensor  # (B,) in the objective's form, with the credit weights
    advantages: torch.Tensor  # (B,)
    clip_range: float
    idx: torch.Tensor | None = None  # (B,) step indices (CPU)
    out: Any = None  # StepOutput of the training forward: mean, std, log_prob, noise
    grid: Any = None  # this epoch's SamplerGrid
    options: dict = field(default_factory=dict)  # Framework.objective_options
    old_mean_fn: Callable[[], torch.Tensor] | None = None
    #: the steps trained this epoch (for objectives that normalise per-step weights over them)
    trained_pool: torch.Tensor | None = None
    #: the training forward's network prediction (with its graph), and the rollout policy's stored
    #: prediction at the same state (for objectives on predictions rather than log-densities)
    pred: torch.Tensor | None = None
    old_pred: torch.Tensor | None = None
    #: the state the step starts from, and the trajectory's final (clean) sample
    sample: torch.Tensor | None = None
    final_sample: torch.Tensor | None = None
    #: each row's group (its prompt's group id), for losses over groups of one prompt (DGPO); with
    #: ``Framework.micro_batches: groups`` every group in a micro-batch is whole
    group_ids: torch.Tensor | None = None
    #: the reference model's prediction at ``sample`` (lazy: one forward, made on the first call and
    #: shared with the trainer's KL term), for losses against the reference (DPO-style ones)
    ref_pred_fn: Callable[[], torch.Tensor] | None = None

    def old_mean(self) -> torch.Tensor:
        """The rollout policy's mean of this step (from its stored prediction; no network call)."""
        if self.old_mean_fn is None:
            raise ValueError("this objective needs the old step mean, which the caller did not provide")
        return self.old_mean_fn()

    def ref_pred(self) -> torch.Tensor:
        """The reference model's prediction at this step's state (no gradient)."""
        if self.ref_pred_fn is None:
            raise ValueError("this objective needs the reference model's prediction, which the caller did not provide")
        return self.ref_pred_fn()


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: Callable[[StepContext], tuple]
    #: the objective is a function of the step log-ratio (PCPO's log-hinge can replace it)
    likelihood: bool = True
    #: ``fn(grid, pool) -> (T,)``: the per-step factor the objective multiplies each step's loss
    #: by, for objectives that reweight timesteps (TempFlow-GRPO); the report lays it beside
    #: PCPO's credit.  None: every step weighted 1.
    step_weight: Callable | None = None


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective")


def register_objective(name: str, likelihood: bool = True, step_weight: Callable | None = None):
    """Decorator: register ``fn(ctx: StepContext) -> (loss (B,), inactive (B,) bool)``;
    ``step_weight(grid, pool) -> (T,)`` declares a per-step loss factor (see ObjectiveSpec)."""

    def deco(fn):
        OBJECTIVES.register(name, ObjectiveSpec(name, fn, likelihood, step_weight), overwrite=True)
        return fn

    return deco


@register_objective("ppo_clip")
def _ppo_clip(ctx: StepContext):
    return ppo_clip_loss(ctx.log_ratio, ctx.advantages, ctx.clip_range)


@register_objective("log_hinge")
def _log_hinge(ctx: StepContext):
    return log_hinge_loss(ctx.log_ratio, ctx.advantages, ctx.clip_range)


def logrho_clip_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float):
    """max(-A (1 + log rho), -A clip(1 + log rho, 1 - xi, 1 + xi)) per element: PPO's clip with
    ``rho`` replaced by its first-order ``1 + log rho`` (the lineage's ``logrho`` ablation,
    jaylee2000/rsm@e8be3df sd15_zeroth_order/train_grpo.py:1069-1078).  At rho = 1 the loss is -A;
    ``inactive`` where the clip binds on the advantage's side (|log rho| > xi)."""
    x = 1.0 + log_ratio
    unclipped = -advantages * x
    clipped = -advantages * torch.clamp(x, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        inactive = ((advantages > 0) & (log_ratio > clip_range)) | ((advantages < 0) & (log_ratio < -clip_range))
    return loss, inactive


@register_objective("ppo_clip_logrho")
def _ppo_clip_logrho(ctx: StepContext):
    return logrho_clip_loss(ctx.log_ratio, ctx.advantages, ctx.clip_range)


def ratio_form_log_ratio(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, scale: torch.Tensor | None = None):
    """(log p_new - log p_old) * scale; scale = train_weight / grid_weight per element."""
    lr = new_log_prob - old_log_prob
    return lr if scale is None else lr * scale.to(lr.dtype)


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean"):
    """KL(N(mean, std^2) || N(ref_mean, std^2)) = |mean - ref_mean|^2 / (2 std^2), reduced per sample."""
    s = _bcast(std.to(mean.dtype), mean)
    return reduce_dims((mean - ref_mean) ** 2 / (2 * s**2), reduction)


def step_kl(mean: torch.Tensor, ref_mean: torch.Tensor, step_std: torch.Tensor, sde_sigma: torch.Tensor,
            form: str = "gaussian", reduction: str = "mean", pred: torch.Tensor | None = None,
            ref_pred: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample KL penalty between the policy's and the reference's step means.

    ``gaussian``: ``|mu - mu_ref|^2 / (2 std^2)`` with the step std, the exact KL of
    ``N(mu, std^2)`` and ``N(mu_ref, std^2)``.  ``flow_grpo``: the same over
    ``2 sigma~(s)^2``, the SDE's noise-level sigma without the ``sqrt(ds)`` of the
    step (``scripts/train_sd3.py``: ``kl_loss = ((prev_sample_mean - prev_sample_mean_ref)
    ** 2).mean(...) / (2 * std_dev_t ** 2)``), i.e. the exact KL times ``ds``.
    ``prediction``: ``mean |pred - ref_pred|^2`` over each sample's elements, whatever the
    reduction (DiffusionNFT's ``kl_div_loss``; defined on deterministic steps too).
    """
    if form == "prediction":
        if pred is None or ref_pred is None:
            raise ValueError("kl_form 'prediction' needs the policy's and the reference's predictions")
        return ((pred.float() - ref_pred.float()) ** 2).flatten(1).mean(dim=1)
    if form == "gaussian":
        return gaussian_mean_kl(mean, ref_mean, step_std, reduction)
    if form == "flow_grpo":
        return gaussian_mean_kl(mean, ref_mean, sde_sigma, reduction)
    raise ValueError(f"kl_form must be one of {KL_FORMS}, got {form!r}")


def outside_clip_range(log_ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """``|rho - 1| > xi``, two-sided, per element: what DDPO, DanceGRPO and Flow-GRPO log as
    ``clipfrac``.  (The objective's own ``inactive`` mask, where the clip or the hinge removed
    the gradient, is the paper's clip fraction; both are logged.)"""
    with torch.no_grad():
        return (torch.exp(log_ratio.detach()) - 1.0).abs() > clip_range


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """0.5 E[(log rho)^2], the estimator DDPO logs."""
    return 0.5 * (log_ratio.detach() ** 2).mean()


@dataclass(frozen=True)
class Objective:
    """A per-step objective (``ppo_clip`` / ``log_hinge``) in a log-ratio ``form``."""

    name: str = "ppo_clip"
    form: str = "ratio"
    clip_range: float = 1e-4

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES.names()}, got {self.name!r}")
        if self.form not in FORMS:
            raise ValueError(f"objective form must be one of {FORMS}, got {self.form!r}")
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}")

    def log_ratio(
        self,
        *,
        step_weight: torch.Tensor,
        grid_weight: torch.Tensor,
        new_log_prob: torch.Tensor | None = None,
        old_log_prob: torch.Tensor | None = None,
        delta: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Per-element log-ratio with credit ``step_weight`` (B,).

        ``grid_weight`` is the sampling grid's own ``C / std`` for each element;
        with ``step_weight == grid_weight`` both forms equal log p_new - log p_old.
        """
        if self.form == "ratio":
            if new_log_prob is None or old_log_prob is None:
                raise ValueError("ratio form needs new_log_prob and old_log_prob")
            return ratio_form_log_ratio(new_log_prob, old_log_prob, step_weight / grid_weight)
        if delta is None or noise is None:
            raise ValueError("matching form needs delta (new - old prediction) and noise")
        return matching_log_ratio(delta, noise, step_weight, reduction)

    @property
    def spec(self) -> ObjectiveSpec:
        return OBJECTIVES.get(self.name, "objective")

    def loss(self, log_ratio: torch.Tensor, advantages: torch.Tensor, ctx: StepContext | None = None):
        """The registered objective on one micro-batch; ``ctx`` carries what objectives beyond
        the plain log-ratio need (built here from the two tensors when absent)."""
        adv = advantages.to(log_ratio.dtype)
        if ctx is None:
            ctx = StepContext(log_ratio, adv, self.clip_range)
        else:
            ctx.log_ratio, ctx.advantages, ctx.clip_range = log_ratio, adv, self.clip_range
        loss, inactive = self.spec.fn(ctx)
        if loss.shape != log_ratio.shape:
            raise ValueError(f"objective {self.name!r} returned a loss of shape {tuple(loss.shape)}, expected "
                             f"{tuple(log_ratio.shape)} (one value per sample)")
        return loss, inactive.to(torch.bool)
