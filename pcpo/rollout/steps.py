"""Stochastic sampler steps with per-step Gaussian log-probabilities.

Each step function is batched over samples, and every sample may sit at its own
timestep: the schedule quantities (``alpha_prod_t``, ``s`` ...) are tensors of
shape ``(B,)``.  Each returns a :class:`StepOutput` holding the next state, its
log-probability under ``N(mean, std^2 I)``, the mean, the std and the
standardised noise ``z = (x_next - mean) / std``.

Given ``prev_sample`` (an already-drawn next state) the step does not sample;
it evaluates the log-probability of that state, which is how the trainer
re-scores stored trajectories under the current policy.

All arithmetic runs in float32 (float64 when the inputs are float64), whatever
dtype the network produced, because the log-density of a narrow Gaussian
cancels badly in half precision (see docs/method.md §3a).

Each step also reports ``coef``: the sensitivity ``C`` of the mean to the
network output, ``mean = (terms without the prediction) - C * prediction``.
``coef / std`` is the per-step credit weight ``w(t)`` of docs/method.md §2,
and ``coef`` is what the matching-form log-ratio needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from pcpo.registry import Registry

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
REDUCTIONS = ("mean", "sum")


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # next (less noisy) state x_{t'}
    log_prob: torch.Tensor  # (B,) log N(prev_sample; mean, std^2), reduced over image dims
    mean: torch.Tensor  # (B, ...) mean of the step's Gaussian
    std: torch.Tensor  # (B,) per-sample standard deviation
    noise: torch.Tensor  # (B, ...) standardised noise z (drawn, or implied by prev_sample)
    coef: torch.Tensor  # (B,) d mean / d prediction = -coef


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast against ``like``."""
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


def reduce_dims(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce all but the batch dimension (``mean`` or ``sum``)."""
    dims = tuple(range(1, x.ndim))
    if reduction == "mean":
        return x.mean(dim=dims)
    if reduction == "sum":
        return x.sum(dim=dims)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """log N(x; mean, std^2 I) per sample, ``std`` of shape (B,).

    Samples with ``std == 0`` (a deterministic step) get log-prob 0: the density
    is undefined there and such steps are never trained.
    """
    s = _bcast(std, x)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    lp = -((x - mean) ** 2) / (2 * safe**2) - torch.log(safe) - LOG_SQRT_2PI
    lp = reduce_dims(lp, reduction)
    return torch.where(std > 0, lp, torch.zeros_like(lp))


def _finish(mean, std, prev_sample, noise, generator, coef, reduction) -> StepOutput:
    s = _bcast(std, mean)
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        else:
            noise = noise.to(mean.dtype)
        prev_sample = mean + s * noise
    else:
        prev_sample = prev_sample.to(mean.dtype)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        noise = torch.where(s > 0, (prev_sample - mean) / safe, torch.zeros_like(mean))
    log_prob = gaussian_log_prob(prev_sample.detach(), mean, std, reduction)
    return StepOutput(prev_sample, log_prob, mean, std, noise, coef)


# ---------------------------------------------------------------------------
# DDIM with stochasticity (epsilon-prediction models)
# ---------------------------------------------------------------------------

def ddim_variance(alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor) -> torch.Tensor:
    """DDIM's sigma_t^2 at eta = 1: (1 - a') / (1 - a) * (1 - a / a')."""
    return (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)


def ddim_coef(alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """C(t) = sqrt(1 - a) / sqrt(a / a') - sqrt(1 - a' - sigma^2)  (docs/method.md §2)."""
    return (1 - alpha_prod_t).sqrt() / (alpha_prod_t / alpha_prod_prev).sqrt() - (
        (1 - alpha_prod_prev - sigma**2).clamp_min(0).sqrt()
    )


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_prev: torch.Tensor,
    sigma: torch.Tensor,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> StepOutput:
    """One DDIM-SDE step x_t -> x_{t'} for an epsilon-prediction model.

    ``sigma`` is the step's standard deviation per sample: ``eta * sqrt(ddim_variance)``
    reproduces ``diffusers.DDIMScheduler.step(..., eta)``; PCPO passes its
    reshaped sigma-tilde here.  Clipping/thresholding of x0 is not applied
    (SD1.5's scheduler config disables it; RL log-probs need the affine form).
    """
    dt = compute_dtype(model_output, sample)
    eps = model_output.to(dt)
    x = sample.to(dt)
    a_t = _bcast(alpha_prod_t.to(device=x.device, dtype=dt), x)
    a_p = _bcast(alpha_prod_prev.to(device=x.device, dtype=dt), x)
    sig = sigma.to(device=x.device, dtype=dt)
    s = _bcast(sig, x)
    # same order of operations as diffusers.DDIMScheduler.step
    beta_prod_t = 1 - a_t
    pred_x0 = (x - beta_prod_t ** (0.5) * eps) / a_t ** (0.5)
    direction = (1 - a_p - s**2) ** (0.5) * eps
    mean = a_p ** (0.5) * pred_x0 + direction
    coef = ddim_coef(alpha_prod_t.to(device=x.device, dtype=dt), alpha_prod_prev.to(device=x.device, dtype=dt), sig)
    return _finish(mean, sig, prev_sample, noise, generator, coef, reduction)


# ---------------------------------------------------------------------------
# Flow-matching SDE (velocity models)
# ---------------------------------------------------------------------------

FLOW_FORMS = ("dance", "grpo")


def flow_grpo_sigma(s: torch.Tensor, noise_level, s_max: torch.Tensor | float) -> torch.Tensor:
    """Flow-GRPO's sigma~(s) = a * sqrt(s / (1 - s)); at s == 1 the denominator
    uses the grid's next point ``s_max`` (the reference implementation's guard)."""
    s_max = torch.as_tensor(s_max, dtype=s.dtype, device=s.device)
    denom_s = torch.where(s == 1, s_max, s)
    return torch.as_tensor(noise_level, dtype=s.dtype, device=s.device) * (s / (1 - denom_s)).sqrt()


def flow_coef_and_std(
    s: torch.Tensor, s_next: torch.Tensor, noise_level: float, form: str, s_max: torch.Tensor | float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C, std, sigma_tilde) of one flow-SDE step; all shaped like ``s``.

    The mean is ``x * (1 - sig^2 ds / (2 s)) - C * v`` with
    ``C = ds * (1 + sig^2 (1 - s) / (2 s))`` and ``std = sig * sqrt(ds)``,
    where ``sig`` is ``noise_level`` (DanceGRPO) or Flow-GRPO's sigma~(s).
    """
    ds = s - s_next
    if form == "dance":
        # a number, or one level per element (a per-step noise schedule)
        sig = torch.as_tensor(noise_level, dtype=s.dtype, device=s.device).expand_as(s).clone()
    elif form == "grpo":
        if s_max is None:
            raise ValueError("flow-grpo form needs s_max (the grid's second point) for the s == 1 guard")
        sig = flow_grpo_sigma(s, noise_level, s_max)
    elif form in FLOW_STEP_FORMS:  # a registered form (register_step)
        level = torch.as_tensor(noise_level, dtype=s.dtype, device=s.device).expand_as(s)
        return FLOW_STEP_FORMS.get(form).coef_and_std(s, s_next, level, s_max)
    else:
        raise ValueError(f"flow SDE form must be one of {FLOW_FORMS + tuple(FLOW_STEP_FORMS.names())}, got {form!r}")
    coef = ds * (1 + sig**2 * (1 - s) / (2 * s))
    std = sig * ds.sqrt()
    return coef, std, sig


def flow_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    s: torch.Tensor,
    s_next: torch.Tensor,
    noise_level: float,
    form: str = "dance",
    s_max: torch.Tensor | float | None = None,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> StepOutput:
    """One flow-matching SDE step x_s -> x_{s_next} (s_next < s) for a velocity model.

    ``form="dance"``: DanceGRPO's SDE (constant noise level eta), written as
    ``mean = x - ds v + 0.5 eta^2 score ds`` with ``score = -(x - (1-s) x0) / s^2``.
    ``form="grpo"``: Flow-GRPO's SDE with sigma~(s) = a sqrt(s / (1 - s)).
    ``noise_level == 0`` gives the deterministic Euler (ODE) step.
    Any other ``form`` is a registered one (:func:`register_step`).
    """
    if form not in FLOW_FORMS:
        return registered_flow_step(form, model_output, sample, s, s_next, noise_level, s_max, prev_sample, noise,
                                    generator, reduction)
    dt = compute_dtype(model_output, sample)
    v = model_output.to(dt)
    x = sample.to(dt)
    s_ = s.to(device=x.device, dtype=dt)
    sn_ = s_next.to(device=x.device, dtype=dt)
    coef, std, sig = flow_coef_and_std(s_, sn_, noise_level, form, s_max)
    S, SN, SIG = _bcast(s_, x), _bcast(sn_, x), _bcast(sig, x)
    ds = S - SN
    if form == "dance":
        x0 = x - S * v
        score = -(x - (1 - S) * x0) / S**2
        mean = x - ds * v + 0.5 * SIG**2 * score * ds
    else:
        mean = x * (1 - SIG**2 * ds / (2 * S)) - v * (1 + SIG**2 * (1 - S) / (2 * S)) * ds
    return _finish(mean, std, prev_sample, noise, generator, coef, reduction)


def matching_log_ratio(
    delta: torch.Tensor,
    noise: torch.Tensor,
    weight: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """log rho = -[ w <delta, z> + 0.5 w^2 |delta|^2 ] (docs/method.md §2).

    ``delta`` = new minus old prediction, ``noise`` = the stored standardised
    noise z of the step, ``weight`` = (B,) per-step credit weight ``C / std``
    (or PCPO's replacement).  Reduced over image dims like the log-probs, so
    with the native weight it equals ``log p_new - log p_old`` exactly, without
    subtracting two large log-densities.
    """
    dt = compute_dtype(delta, noise)
    d = delta.to(dt)
    z = noise.to(dt)
    w = _bcast(weight.to(device=d.device, dtype=dt), d)
    return -reduce_dims(w * d * z + 0.5 * w**2 * d * d, reduction)


# ---------------------------------------------------------------------------
# Registered flow step forms: a module in ``baselines/`` adds a sampler step
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FlowStepForm:
    """A flow-matching step form other than the built-in ``dance`` / ``grpo`` SDEs.

    ``coef_and_std(s, s_next, level, s_max) -> (C, std, sigma)``, shaped like ``s``: the
    sensitivity of the mean to the velocity (``mean = ... - C v``), the step's std, and its
    noise-level sigma (reported; Flow-GRPO's KL form divides by it).
    ``mean(v, x, s, s_next, level, s_max) -> mean``, with ``s``, ``s_next`` and ``level``
    already broadcast against ``x`` and everything in the compute dtype.
    ``log_prob(prev_sample, mean, std, reduction) -> (B,)``: the step's log-probability as its
    reference code computes it; None: the Gaussian :func:`gaussian_log_prob`.
    ``zero_std_steps``: the form has steps with std 0 at a positive noise level (a deterministic
    last step): they have no log-prob and no credit weight, and are never trained.
    The grid sampler of form ``name`` is ``flow-<name>``.
    """

    name: str
    coef_and_std: Callable
    mean: Callable
    log_prob: Callable | None = None
    zero_std_steps: bool = False


FLOW_STEP_FORMS: Registry[FlowStepForm] = Registry("flow step form")


def register_step(name: str, coef_and_std, mean, log_prob=None, zero_std_steps: bool = False) -> FlowStepForm:
    """Register a flow step form ``name`` (sampler ``flow-<name>``); see :class:`FlowStepForm`."""
    if name in FLOW_FORMS:
        raise ValueError(f"flow step form {name!r} is built in")
    form = FlowStepForm(name, coef_and_std, mean, log_prob, zero_std_steps)
    FLOW_STEP_FORMS.register(name, form, overwrite=True)
    return form


def registered_flow_step(form: str, model_output, sample, s, s_next, noise_level, s_max=None, prev_sample=None,
                         noise=None, generator=None, reduction: str = "mean") -> StepOutput:
    """One step of a registered flow step form (what :func:`flow_step` runs for ``form``)."""
    spec = FLOW_STEP_FORMS.get(form, "flow step form")
    dt = compute_dtype(model_output, sample)
    v, x = model_output.to(dt), sample.to(dt)
    s_ = s.to(device=x.device, dtype=dt)
    sn_ = s_next.to(device=x.device, dtype=dt)
    level = torch.as_tensor(noise_level, dtype=dt, device=x.device).expand_as(s_)
    coef, std, _ = spec.coef_and_std(s_, sn_, level, s_max)
    mean = spec.mean(v, x, _bcast(s_, x), _bcast(sn_, x), _bcast(level, x), s_max)
    out = _finish(mean, std, prev_sample, noise, generator, coef, reduction)
    if spec.log_prob is not None:
        out.log_prob = spec.log_prob(out.prev_sample.detach(), mean, std, reduction)
    return out
