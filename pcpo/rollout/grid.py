"""Sampling grids: the time points of a sampler and everything per step.

A :class:`SamplerGrid` holds, for each of its T steps, the model time ``t``
handed to the network, the schedule quantities of the step, its std and its
mean-sensitivity ``coef`` (so ``coef / std`` is the native credit weight).
Values are kept in float64; :meth:`SamplerGrid.step` applies the matching step
function to a batch in which every sample can be at a different step index.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from pcpo.models.base import ScheduleSpec
from pcpo.rollout.steps import (FLOW_STEP_FORMS, StepOutput, ddim_coef, ddim_step, ddim_variance, flow_coef_and_std,
                                flow_step)

BUILTIN_SAMPLERS = ("ddim", "flow-dance", "flow-grpo")


class _SamplerNames:
    """The sampler names: the built-in ones and ``flow-<form>`` for every registered flow step
    form (:func:`pcpo.rollout.steps.register_step`); ``in`` and iteration see registrations."""

    def __contains__(self, name) -> bool:
        return name in BUILTIN_SAMPLERS or (isinstance(name, str) and name.startswith("flow-")
                                            and name[len("flow-"):] in FLOW_STEP_FORMS)

    def __iter__(self):
        return iter(BUILTIN_SAMPLERS + tuple(f"flow-{n}" for n in FLOW_STEP_FORMS.names()))

    def __repr__(self) -> str:
        return repr(tuple(self))


SAMPLERS = _SamplerNames()


@dataclass
class SamplerGrid:
    sampler: str
    timesteps: torch.Tensor  # (T,) model time: int timesteps (ddim) or s in [0, 1] (flow)
    next_timesteps: torch.Tensor  # (T,) t' (ddim, may be < 0: final alpha) or s_next (flow)
    std: torch.Tensor  # (T,) float64
    coef: torch.Tensor  # (T,) float64
    # ddim
    alpha_prod: torch.Tensor | None = None
    alpha_prod_next: torch.Tensor | None = None
    # flow
    noise_level: float = 0.0
    s_max: float | None = None
    info: dict = field(default_factory=dict)
    #: per-step multiplier of the noise (a noise schedule's levels; 0: a deterministic ODE step);
    #: None: every step at the grid's own level
    noise_scale: torch.Tensor | None = None

    def scaled(self, levels: torch.Tensor) -> "SamplerGrid":
        """This grid with step i's noise multiplied by ``levels[i]`` (level 0: the ODE step of
        the same sampler: deterministic DDIM, or the Euler step of the flow).  ``std`` and
        ``coef`` are recomputed, so credit weights and log-probs follow the new levels."""
        lv = torch.as_tensor(levels, dtype=torch.float64).reshape(-1)
        if lv.shape[0] != self.num_steps or (lv < 0).any() or not torch.isfinite(lv).all():
            raise ValueError(f"noise levels: need {self.num_steps} finite values >= 0, got {lv.tolist()}")
        if self.sampler == "ddim":
            std = self.std * lv
            coef = ddim_coef(self.alpha_prod, self.alpha_prod_next, std)
        else:
            coef, std, _ = flow_coef_and_std(self.timesteps, self.next_timesteps, self.noise_level * lv,
                                             self.flow_form, self.s_max)
        return replace(self, std=std, coef=coef, noise_scale=lv)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def family(self) -> str:
        return "ddim" if self.sampler == "ddim" else "flow"

    @property
    def flow_form(self) -> str:
        return self.sampler[len("flow-"):]

    @property
    def native_weight(self) -> torch.Tensor:
        """w(t) = C(t) / sigma_t, the sensitivity of the step's log-prob (docs/method.md §2)."""
        safe = torch.where(self.std > 0, self.std, torch.ones_like(self.std))
        return torch.where(self.std > 0, self.coef / safe, torch.full_like(self.std, float("inf")))

    @property
    def sde_sigma(self) -> torch.Tensor:
        """The SDE's noise-level sigma per step: ``std / sqrt(ds)`` on a flow grid (eta for
        DanceGRPO's form, sigma~(s) for Flow-GRPO's); on a DDIM grid, the step std."""
        if self.family == "ddim":
            return self.std
        return self.std / (self.timesteps - self.next_timesteps).sqrt()

    @property
    def deterministic(self) -> bool:
        return bool((self.std == 0).all())

    def model_time(self, idx: torch.Tensor) -> torch.Tensor:
        """Network time input for step indices ``idx`` (B,)."""
        return self.timesteps[idx.cpu()]

    def step(
        self,
        idx: torch.Tensor,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        prev_sample: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> StepOutput:
        """Apply step ``idx[b]`` to sample ``b`` for every b (idx: LongTensor (B,))."""
        idx = idx.cpu()
        dev = sample.device
        if self.sampler == "ddim":
            return ddim_step(
                model_output, sample,
                self.alpha_prod[idx].to(dev), self.alpha_prod_next[idx].to(dev), self.std[idx].to(dev),
                prev_sample=prev_sample, noise=noise, generator=generator, reduction=reduction,
            )
        level = self.noise_level if self.noise_scale is None else (self.noise_level * self.noise_scale[idx]).to(dev)
        return flow_step(
            model_output, sample,
            self.timesteps[idx].to(device=dev, dtype=torch.float64), self.next_timesteps[idx].to(device=dev, dtype=torch.float64),
            level, form=self.flow_form, s_max=self.s_max,
            prev_sample=prev_sample, noise=noise, generator=generator, reduction=reduction,
        )


# ---------------------------------------------------------------------------
# DDIM
# ---------------------------------------------------------------------------

def ddim_timesteps(spec: ScheduleSpec, steps: int) -> torch.Tensor:
    """Inference timesteps of diffusers' DDIMScheduler for each spacing mode."""
    n = spec.num_train_timesteps
    if steps < 1 or steps > n:
        raise ValueError(f"steps must be in [1, {n}], got {steps}")
    if spec.timestep_spacing == "leading":
        ratio = n // steps
        ts = (torch.arange(0, steps, dtype=torch.float64) * ratio).round().flip(0).long() + spec.steps_offset
    elif spec.timestep_spacing == "trailing":
        ratio = n / steps
        ts = torch.round(torch.arange(n, 0, -ratio, dtype=torch.float64)).long() - 1
    elif spec.timestep_spacing == "linspace":
        ts = torch.linspace(0, n - 1, steps, dtype=torch.float64).round().flip(0).long()
    else:
        raise ValueError(f"timestep_spacing must be leading, trailing or linspace, got {spec.timestep_spacing!r}")
    return ts


def ddim_grid(spec: ScheduleSpec, steps: int, eta: float = 1.0, sigma: torch.Tensor | None = None) -> SamplerGrid:
    """DDIM grid with std ``eta * sqrt(variance)``, or an explicit per-step ``sigma`` (T,)."""
    if spec.alphas_cumprod is None:
        raise ValueError("a ddim grid needs the model schedule's alphas_cumprod")
    ac = spec.alphas_cumprod.to(torch.float64)
    final = torch.tensor(float(spec.final_alpha_cumprod if spec.final_alpha_cumprod is not None else 1.0), dtype=torch.float64)
    ts = ddim_timesteps(spec, steps)
    prev = ts - spec.num_train_timesteps // steps
    a_t = ac[ts]
    a_p = torch.where(prev >= 0, ac[prev.clamp_min(0)], final)
    if sigma is None:
        std = float(eta) * ddim_variance(a_t, a_p).sqrt()
    else:
        std = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if std.shape[0] != steps:
            raise ValueError(f"sigma schedule has {std.shape[0]} entries for {steps} steps")
        if (std**2 > 1 - a_p + 1e-12).any():
            raise ValueError("sigma schedule exceeds sqrt(1 - alpha_prod_prev) at some step")
    coef = ddim_coef(a_t, a_p, std)
    return SamplerGrid("ddim", ts, prev, std, coef, alpha_prod=a_t, alpha_prod_next=a_p,
                       info={"eta": None if sigma is not None else float(eta)})


# ---------------------------------------------------------------------------
# Flow matching
# ---------------------------------------------------------------------------

def shift_times(s: torch.Tensor, shift: float) -> torch.Tensor:
    """s <- k s / (1 + (k - 1) s)."""
    return shift * s / (1 + (shift - 1) * s)


FLOW_SPACINGS = ("uniform", "pipeline")


def flow_times(steps: int, shift: float = 1.0, spacing: str = "uniform",
               span: tuple[float, float] = (1.0, 0.0)) -> torch.Tensor:
    """The N + 1 flow times s_0 > s_1 > ... > s_N = 0 of an N-step sampler.

    ``uniform``: ``linspace(1, 0, N + 1)``, then shifted (DanceGRPO's grid).
    ``pipeline``: ``linspace(span[0], span[1], N)`` shifted, then a final 0: what
    diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps(N)`` does by default
    (``span`` = the scheduler's ``sigma_max``, ``sigma_min``), which is the grid of
    ``StableDiffusion3Pipeline`` and of Flow-GRPO's SD3.5 sampler.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if spacing == "uniform":
        return shift_times(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
    if spacing == "pipeline":
        hi, lo = float(span[0]), float(span[1])
        if not 0.0 < lo < hi <= 1.0:
            raise ValueError(f"flow time span must satisfy 0 < end < start <= 1, got {span}")
        s = shift_times(torch.linspace(hi, lo, steps, dtype=torch.float64), shift)
        return torch.cat([s, torch.zeros(1, dtype=torch.float64)])
    raise ValueError(f"flow time spacing must be one of {FLOW_SPACINGS}, got {spacing!r}")


def flow_grid(steps: int, noise_level: float, form: str = "dance", shift: float = 1.0, spacing: str = "uniform",
              span: tuple[float, float] = (1.0, 0.0)) -> SamplerGrid:
    s_all = flow_times(steps, shift, spacing, span)
    s, s_next = s_all[:-1], s_all[1:]
    s_max = float(s_all[1]) if steps > 1 else 0.5
    coef, std, _ = flow_coef_and_std(s, s_next, float(noise_level), form, s_max)
    sampler = f"flow-{form}"
    info = {"shift": float(shift), "spacing": spacing}
    if spacing != "uniform":
        info["span"] = [float(span[0]), float(span[1])]
    return SamplerGrid(sampler, s, s_next, std, coef, noise_level=float(noise_level), s_max=s_max, info=info)


def make_grid(
    spec: ScheduleSpec,
    sampler: str,
    steps: int,
    eta: float = 1.0,
    noise_level: float = 0.7,
    sigma: torch.Tensor | None = None,
    shift: float | None = None,
) -> SamplerGrid:
    """Build a sampler grid for a model's schedule.

    ``sampler``: ``ddim`` (uses ``eta`` or explicit ``sigma``), ``flow-dance``
    or ``flow-grpo`` (use ``noise_level`` and the model's shift unless given).
    """
    if sampler == "ddim":
        if spec.family != "ddim":
            raise ValueError(f"sampler 'ddim' needs an epsilon (ddim-family) model, got a {spec.family} model")
        return ddim_grid(spec, steps, eta=eta, sigma=sigma)
    if sampler != "ddim" and sampler in SAMPLERS:
        if spec.family != "flow":
            raise ValueError(f"sampler {sampler!r} needs a velocity (flow-family) model, got a {spec.family} model")
        return flow_grid(steps, noise_level, form=sampler[len("flow-"):], shift=spec.shift if shift is None else shift,
                         spacing=spec.flow_spacing, span=spec.flow_span)
    raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
