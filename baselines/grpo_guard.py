"""GRPO-Guard (Wang et al. 2025, arXiv 2510.22319): Flow-GRPO with the importance ratio
renormalised per step and the per-step loss reweighted.

No code by the authors is public (checked 2026-12: the project page links none).  The
port follows the paper's two mechanisms as three independent implementations agree
on them: X-GenGroup/Flow-Factory@a0b2bc5 ``src/flow_factory/trainers/grpo.py``
(``GRPOGuardTrainer.optimize``), verl-omni@073521e ``verl_omni/trainer/diffusion/
diffusion_algos.py`` (``GRPOGuardLoss.compute_loss``) and TeleBoost's
``grpo_guard.py``:

* **RatioNorm.** With ``s`` the step's transition std (sigma~(t) sqrt(dt)) and
  ``b = mean_d (mu_theta - mu_old)^2 / (2 s^2)``, the clipped ratio is
  ``exp(s (log rho + b))``: the term that biases the log-ratio below zero cancels and
  the 1/s scale that differs between steps goes.  (Since x' = mu_old + s z, this is
  ``exp(mean_d z (mu_theta - mu_old))``.)
* **Gradient reweighting.** Each step's loss is multiplied by ``1 / dt`` (verl-omni,
  TeleBoost; Flow-Factory omits it: ``reweight: false``).

Everything else is Flow-GRPO's (``baselines/flow_grpo.py``).  Not pinned down from
public sources: the paper's own lr and clip range (Flow-Factory 1e-4, verl-omni
recommends 2e-6) and whether 1/dt is normalised; the defaults here are Flow-GRPO's
clip 1e-4 and the unnormalised 1/dt, each a named option.
"""
import dataclasses

import torch

from baselines import flow_grpo
from pcpo.algorithms import FRAMEWORKS, Ref, register_framework
from pcpo.objectives import StepContext, ppo_clip_loss, register_objective

FF = "X-GenGroup/Flow-Factory@a0b2bc5 src/flow_factory/trainers/grpo.py, GRPOGuardTrainer.optimize()"
VO = "verl-omni@073521e verl_omni/trainer/diffusion/diffusion_algos.py, GRPOGuardLoss.compute_loss()"


def guard_log_ratio(log_ratio: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor,
                    std: torch.Tensor) -> torch.Tensor:
    """RatioNorm's log of the normalised ratio, ``s (log rho + mean_d(dmu^2) / (2 s^2))``, per sample."""
    s = std.to(log_ratio.dtype).reshape(-1)
    b = (mean - old_mean).pow(2).flatten(1).mean(dim=1).to(log_ratio.dtype) / (2 * s**2)
    return s * (log_ratio + b)


@register_objective("grpo_guard")
def grpo_guard(ctx: StepContext):
    """PPO-clip on RatioNorm's ratio, times 1/dt per step when ``reweight`` (default)."""
    opts = {"ratio_norm": True, "reweight": True, **ctx.options}
    lr = ctx.log_ratio
    if opts["ratio_norm"]:
        lr = guard_log_ratio(lr, ctx.out.mean, ctx.old_mean(), ctx.out.std)
    loss, inactive = ppo_clip_loss(lr, ctx.advantages, ctx.clip_range)
    if opts["reweight"]:
        g = ctx.grid
        dt = (g.timesteps - g.next_timesteps)[ctx.idx].to(device=loss.device, dtype=loss.dtype)
        loss = loss / dt
    return loss, inactive


base = FRAMEWORKS.get("flow_grpo")
REFERENCES = {
    **{k: Ref(v.value, "as Flow-GRPO: " + v.source, v.note, v.deliberate) for k, v in flow_grpo.REFERENCES.items()},
    "objective": Ref("grpo_guard", FF + ": `ratio = torch.exp((output.log_prob - old_log_prob) * scale_factor + mse / "
                     "(2 * scale_factor))`, then PPO clip; " + VO + ": the same"),
    "objective_options": Ref({"ratio_norm": True, "reweight": True},
                             VO + ": `pg_loss = torch.mean(per_elem_loss) / (sqrt_dt_mean**2)` (1/dt)",
                             note="Flow-Factory applies RatioNorm only (reweight: false)"),
}

register_framework(dataclasses.replace(
    base,
    name="grpo_guard",
    description="GRPO-Guard: Flow-GRPO with RatioNorm (per-step normalised ratio) and 1/dt step reweighting",
    objective="grpo_guard",
    objective_options={"ratio_norm": True, "reweight": True},
    references=REFERENCES,
    config_references={},
))
