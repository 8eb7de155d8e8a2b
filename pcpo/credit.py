"""Per-timestep credit: native weights and PCPO's proportional ones.

Near the old policy the log-ratio of step t is
``-[w(t) <delta, z> + 0.5 w(t)^2 |delta|^2]`` with ``w(t) = C(t) / sigma_t``
(METHOD.md section 2), so ``w(t)`` is the credit step t receives.  A
:class:`CreditPlan` says which grid to sample with and which weight each step
gets in the objective:

* native (any baseline): sample with the framework's grid, weight ``w(t)``;
* PCPO, DDIM: sample with the reshaped ``sigma~`` for which ``C~/sigma~ = w*``
  at every step, train with the constant ``w_bar = mean_t w(t)`` of the
  native grid (same total credit, equal shares);
* PCPO, flow: sample with the native grid, train step i with ``zeta * ds_i``,
  ``zeta = sum_i w(s_i)`` (credit proportional to the time integrated).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pcpo.config import ConfigError
from pcpo.models.base import ScheduleSpec
from pcpo.rollout.grid import SamplerGrid, ddim_grid, make_grid
from pcpo.rollout.steps import FLOW_STEP_FORMS

#: the constant reshaped-sampler weight of the paper's reference configs
DEFAULT_W_STAR = 4.5


def native_weights(grid: SamplerGrid) -> torch.Tensor:
    """w(t) = C(t) / sigma_t per step of ``grid`` (float64).

    A registered flow step form with ``zero_std_steps`` (CPS: its last step is deterministic at
    any noise level) gives those steps weight 0: they have no log-prob and are never trained."""
    w = grid.native_weight
    name = grid.sampler[len("flow-"):]
    if grid.family == "flow" and name in FLOW_STEP_FORMS and FLOW_STEP_FORMS.get(name).zero_std_steps:
        w = torch.where(grid.std > 0, w, torch.zeros_like(w))
    if not torch.isfinite(w).all():
        bad = [int(i) for i in torch.nonzero(~torch.isfinite(w)).flatten()]
        raise ValueError(
            f"steps {bad} of the {grid.sampler} grid have zero std, so their log-prob (and credit) is undefined; "
            "use eta > 0 / noise_level > 0, and for DDIM a scheduler with set_alpha_to_one=False, steps_offset=1"
        )
    return w


def ddim_pcpo_sigma(
    alpha_prod: torch.Tensor, alpha_prod_next: torch.Tensor, w_star: float, root: str = "paper"
) -> torch.Tensor:
    """Reshaped DDIM std sigma~_t for a constant weight ``w*`` (METHOD.md section 3b).

    Both roots solve ``(c1 - w* sigma)^2 = 1 - a' - sigma^2`` with
    ``c1 = sqrt(1 - a) / sqrt(a / a')``:

    * ``root="paper"`` (default, the reference configs): the larger root
      ``(w* c1 + sqrt((1 + w*^2)(1 - a') - c1^2)) / (1 + w*^2)``; it stays close
      to the eta = 1 schedule (0.4467 vs 0.4545 at t = 981 on SD1.5) and satisfies
      ``(c1 + sqrt(1 - a' - sigma^2)) / sigma = w*``.  Under DDIM's own mean
      (direction term with a plus sign) its true sensitivity
      ``(c1 - sqrt(1 - a' - sigma^2)) / sigma`` stays close to the native weights;
      the equal credit then comes from training with the constant ``w_bar``
      in matching form, not from the sampler.
    * ``root="exact"``: the smaller root, for which the true ``C~ / sigma~ = w*``
      (much less sampling noise early in the trajectory).
    """
    c1 = (1 - alpha_prod).sqrt() / (alpha_prod / alpha_prod_next).sqrt()
    disc = (1 + w_star**2) * (1 - alpha_prod_next) - c1**2
    if (disc < 0).any():
        lo = ddim_min_w_star(alpha_prod, alpha_prod_next)
        raise ConfigError(f"pcpo.w_star = {w_star} is too small for this schedule: sigma~ has no real value unless "
                         f"w* >= {lo:.4f}; set pcpo.w_star to a larger number or to 'auto'")
    if root == "paper":
        return (w_star * c1 + disc.sqrt()) / (1 + w_star**2)
    if root == "exact":
        return (w_star * c1 - disc.sqrt()) / (1 + w_star**2)
    raise ConfigError(f"pcpo.sigma_root must be 'paper' or 'exact', got {root!r}")


def ddim_min_w_star(alpha_prod: torch.Tensor, alpha_prod_next: torch.Tensor) -> float:
    """Smallest w* for which sigma~ is real at every step: max_t sqrt(c1^2 / (1 - a') - 1)."""
    c1 = (1 - alpha_prod).sqrt() / (alpha_prod / alpha_prod_next).sqrt()
    return float(((c1**2 / (1 - alpha_prod_next)) - 1).clamp_min(0).sqrt().max())


#: the reference config's margin over the feasibility bound (SD1.5, 50 steps: 4.5 / 3.2748)
AUTO_W_STAR_MARGIN = 1.374


def resolve_w_star(w_star, alpha_prod: torch.Tensor, alpha_prod_next: torch.Tensor) -> float:
    """A number, or ``"auto"``: 4.5 where it keeps the reference margin over the
    feasibility bound, else the bound times that margin (coarse grids need more)."""
    if w_star == "auto":
        return max(DEFAULT_W_STAR, AUTO_W_STAR_MARGIN * ddim_min_w_star(alpha_prod, alpha_prod_next))
    try:
        return float(w_star)
    except (TypeError, ValueError):
        raise ConfigError(f"pcpo.w_star must be a number or 'auto', got {w_star!r}") from None


@dataclass
class CreditPlan:
    sample_grid: SamplerGrid  # the grid rollouts are drawn from
    native_grid: SamplerGrid  # the framework's own grid (same as sample_grid unless PCPO reshapes it)
    native: torch.Tensor  # (T,) native weights of the framework's own sampler
    train_weight: torch.Tensor  # (T,) weight of each step in the objective
    proportional: bool

    @property
    def grid_weight(self) -> torch.Tensor:
        """The sampling grid's own sensitivity C/std (w* everywhere for PCPO-DDIM)."""
        return native_weights(self.sample_grid)

    @property
    def ratio_scale(self) -> torch.Tensor:
        """Factor turning the sampling grid's log-ratio into the trained one (ratio form)."""
        return self.train_weight / self.grid_weight


def plan_credit(
    spec: ScheduleSpec,
    sampler: str,
    steps: int,
    *,
    eta: float = 1.0,
    noise_level: float = 0.7,
    shift: float | None = None,
    proportional: bool = False,
    w_star: float | str = DEFAULT_W_STAR,
    sigma_root: str = "paper",
) -> CreditPlan:
    native_grid = make_grid(spec, sampler, steps, eta=eta, noise_level=noise_level, shift=shift)
    native = native_weights(native_grid)
    if not proportional:
        return CreditPlan(native_grid, native_grid, native, native.clone(), False)
    if sampler == "ddim":
        w_star = resolve_w_star(w_star, native_grid.alpha_prod, native_grid.alpha_prod_next)
        sigma = ddim_pcpo_sigma(native_grid.alpha_prod, native_grid.alpha_prod_next, w_star, sigma_root)
        grid = ddim_grid(spec, steps, sigma=sigma)
        grid.info.update({"pcpo_w_star": float(w_star), "pcpo_sigma_root": sigma_root})
        w_bar = native.mean()
        return CreditPlan(grid, native_grid, native, torch.full_like(native, float(w_bar)), True)
    zeta = native.sum()
    ds = native_grid.timesteps - native_grid.next_timesteps
    ds = torch.where(native > 0, ds, torch.zeros_like(ds))  # steps without a log-prob get no credit
    return CreditPlan(native_grid, native_grid, native, zeta * ds / ds.sum(), True)


def sd15_schedule() -> ScheduleSpec:
    """SD1.5's own DDIM schedule, built locally: scaled-linear betas 0.00085 -> 0.012
    over 1000 steps, steps_offset=1, set_alpha_to_one=False (final alpha = alphas_cumprod[0])."""
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return ScheduleSpec(family="ddim", alphas_cumprod=ac, final_alpha_cumprod=float(ac[0]),
                        num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")


def credit_table(plan: CreditPlan) -> dict:
    """JSON-able per-step description of a plan, in sampling order."""
    g = plan.sample_grid
    native = plan.native
    pc = plan.train_weight
    out = {
        "sampler": g.sampler,
        "steps": g.num_steps,
        "timesteps": [float(t) for t in g.timesteps],
        "sigma_native": [float(s) for s in plan.native_grid.std],
        "sigma_sampling": [float(s) for s in g.std],
        "native": [float(w) for w in native],
        "pcpo": [float(w) for w in pc],
        "ratio": [float(p / n) for p, n in zip(pc, native)],
        "native_sum": float(native.sum()),
        "pcpo_sum": float(pc.sum()),
        "native_mean": float(native.mean()),
        "grid_weight": [float(w) for w in plan.grid_weight],
    }
    return out
