"""Per-step policy objectives: PPO-clip and PCPO's log-hinge.

Every objective works on per-(sample, step) log-ratios.  How the log-ratio is
computed is a separate choice (the *form*):

* ``ratio``: ``log p_new - log p_old`` from two log-densities (DDPO, DanceGRPO,
  Flow-GRPO), optionally rescaled per step by ``step_weight / grid_weight``;
* ``matching``: ``-[w <delta, z> + 0.5 w^2 |delta|^2]`` straight from the
  prediction difference and the stored noise (METHOD.md section 2), which
  needs no subtraction of large numbers.

The per-step weight ``w`` is the *credit hook*: the same objective serves the
native weights and PCPO's proportional ones (see :mod:`pcpo.credit`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pcpo.rollout.steps import _bcast, matching_log_ratio, reduce_dims

OBJECTIVES = ("ppo_clip", "log_hinge")
FORMS = ("ratio", "matching")
#: ``gaussian``: the exact KL of the two step Gaussians; ``flow_grpo``: Flow-GRPO's code
KL_FORMS = ("gaussian", "flow_grpo")


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
    """max(0, xi |A| - A log rho) per element (PCPO's stable objective, METHOD.md 3a).

    ``inactive`` marks elements where the hinge is flat (A log rho >= xi |A|).
    At rho = 1 the loss is xi |A|.
    """
    margin = clip_range * advantages.abs() - advantages * log_ratio
    loss = torch.clamp(margin, min=0.0)
    with torch.no_grad():
        inactive = margin <= 0
    return loss, inactive


def ratio_form_log_ratio(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, scale: torch.Tensor | None = None):
    """(log p_new - log p_old) * scale; scale = train_weight / grid_weight per element."""
    lr = new_log_prob - old_log_prob
    return lr if scale is None else lr * scale.to(lr.dtype)


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean"):
    """KL(N(mean, std^2) || N(ref_mean, std^2)) = |mean - ref_mean|^2 / (2 std^2), reduced per sample."""
    s = _bcast(std.to(mean.dtype), mean)
    return reduce_dims((mean - ref_mean) ** 2 / (2 * s**2), reduction)


def step_kl(mean: torch.Tensor, ref_mean: torch.Tensor, step_std: torch.Tensor, sde_sigma: torch.Tensor,
            form: str = "gaussian", reduction: str = "mean") -> torch.Tensor:
    """Per-sample KL penalty between the policy's and the reference's step means.

    ``gaussian``: ``|mu - mu_ref|^2 / (2 std^2)`` with the step std, the exact KL of
    ``N(mu, std^2)`` and ``N(mu_ref, std^2)``.  ``flow_grpo``: the same over
    ``2 sigma~(s)^2``, the SDE's noise-level sigma without the ``sqrt(ds)`` of the
    step (``scripts/train_sd3.py``: ``kl_loss = ((prev_sample_mean - prev_sample_mean_ref)
    ** 2).mean(...) / (2 * std_dev_t ** 2)``), i.e. the exact KL times ``ds``.
    """
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
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.name!r}")
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

    def loss(self, log_ratio: torch.Tensor, advantages: torch.Tensor):
        fn = ppo_clip_loss if self.name == "ppo_clip" else log_hinge_loss
        return fn(log_ratio, advantages.to(log_ratio.dtype), self.clip_range)
