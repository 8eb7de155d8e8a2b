"""Flow-DPPO: Flow-GRPO with PPO's ratio clip replaced by an exact per-step KL mask
(the diffusion port of DPPO's Binary-KL trust region, "Rethinking the Trust Region in LLM
Reinforcement Learning", arXiv 2602.04879).  Ported from Tencent-Hunyuan/UniRL at commit
1cc88b6, ``unirl/algorithms/flowdppo.py`` (``_flowdppo_kl_adv_loss``, ``FlowDPPO``):

* the per-sample KL of the step Gaussians between the current and the rollout policy,
  ``KL = mean_d (mu_theta - mu_old)^2 / (2 sigma^2)``, with ``sigma`` the step's
  transition std (``add_kl_coefficient = True``: Flow-GRPO's ``std_dev_t sqrt(-dt)``);
  with ``add_kl_coefficient = False`` sigma is 1;
* a sample is dropped when ``KL >= kl_mask_threshold`` (1e-5) *and* its ratio already
  moves the way the advantage pushes (``rho > 1, A > 0`` or ``rho < 1, A < 0``);
* the loss of every kept sample is the unclipped ``-A rho``; dropped ones give 0 (and no
  gradient).  No clip range enters.

The trainer hands the objective the current step mean (``ctx.out``) and the rollout
policy's (``ctx.old_mean()``), so it needs no trainer change.  verl-omni's
``verl_omni/trainer/diffusion/diffusion_algos.py`` (``FlowDPPOLoss``) implements the same
mask (read, not checked line by line).  Everything else is Flow-GRPO's (``baselines/flow_grpo.py``); UniRL's own FlowDPPO
has no reference KL at 1cc88b6 (a later version adds ``beta = 0.0``), kept here at Flow-GRPO's 0.01
(a named option).  The objective is a function of the step likelihood ratio, so
``pcpo-flow_dppo`` exists (PCPO's log-hinge replaces the masked loss).
"""
import dataclasses

import torch

from baselines import flow_grpo
from pcpo.algorithms import FRAMEWORKS, Ref, register_framework
from pcpo.objectives import StepContext, register_objective

UNIRL = "Tencent-Hunyuan/UniRL@1cc88b6 unirl/algorithms/flowdppo.py"
LOSS = f"{UNIRL}, _flowdppo_kl_adv_loss()"
INIT = f"{UNIRL}, FlowDPPO.__init__()"
SIGMA = f"{UNIRL}, FlowDPPO._compute_sigma_t()"


def dppo_kl(mean: torch.Tensor, old_mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``mean_d (mu - mu_old)^2 / (2 sigma^2)`` per sample, sigma (B,)."""
    s = sigma.to(mean.dtype).reshape(-1, *([1] * (mean.dim() - 1)))
    return ((mean - old_mean) ** 2 / (2 * s**2)).flatten(1).mean(dim=1)


def kl_masked_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, kl: torch.Tensor, threshold: float):
    """(loss, removed): ``-A rho`` where kept, 0 where removed; removed = ``KL >= threshold`` and the
    ratio on the advantage's side of 1."""
    ratio = torch.exp(log_ratio)
    adv = advantages.detach()
    with torch.no_grad():
        high = ~(kl < threshold)
        removed = high & (((ratio > 1.0) & (adv > 0)) | ((ratio < 1.0) & (adv < 0)))
    loss = torch.where(~removed, -adv * ratio, torch.zeros((), dtype=ratio.dtype, device=ratio.device))
    return loss, removed


@register_objective("flow_dppo")
def flow_dppo(ctx: StepContext):
    """Flow-DPPO's KL-ADV masked policy loss on one micro-batch at one trained step each."""
    o = {"kl_mask_threshold": 1e-5, "add_kl_coefficient": True, **ctx.options}
    mean = ctx.out.mean.detach()
    sigma = ctx.out.std.detach() if o["add_kl_coefficient"] else torch.ones_like(ctx.out.std)
    with torch.no_grad():
        kl = dppo_kl(mean.double(), ctx.old_mean().to(mean.device).double(), sigma.double())
    return kl_masked_loss(ctx.log_ratio, ctx.advantages, kl, float(o["kl_mask_threshold"]))


base = FRAMEWORKS.get("flow_grpo")
REFERENCES = {
    **{k: Ref(v.value, "as Flow-GRPO: " + v.source, v.note, v.deliberate) for k, v in flow_grpo.REFERENCES.items()},
    "objective": Ref("flow_dppo", LOSS + ": `kl_mask = kl_per_sample < kl_mask_threshold`; `pos_rm_mask = (~kl_mask) & "
                     "(ratio > 1.0) & (adv > 0)`; `neg_rm_mask = (~kl_mask) & (ratio < 1.0) & (adv < 0)`; "
                     "`loss_per_elem = torch.where(keep_adv_mask, unclipped_loss, zero)`"),
    "objective_options": Ref({"kl_mask_threshold": 1e-5, "add_kl_coefficient": True},
                             INIT + ": `kl_mask_threshold: float = 1e-5`, `add_kl_coefficient: bool = True`; "
                             + SIGMA + ": `sigma_t = std_dev_t * torch.sqrt(-dt)`, `torch.ones(...)` without"),
    "clip_range": Ref(None, LOSS + ": no ratio clip (the field is unused by the flow_dppo objective)"),
    "kl_beta": Ref(0.0, UNIRL + ", FlowDPPO.compute_loss_and_backward(): `loss = loss_per_elem.mean()`, no "
                   "reference KL (a later UniRL adds `beta: float = 0.0`)",
                   note="Flow-GRPO's 0.01 kept, so the two differ by the trust region alone", deliberate=True),
}

register_framework(dataclasses.replace(
    base,
    name="flow_dppo",
    description="Flow-DPPO: Flow-GRPO with the ratio clip replaced by an exact per-step KL mask (Binary-KL)",
    objective="flow_dppo",
    objective_options={"kl_mask_threshold": 1e-5, "add_kl_coefficient": True},
    references=REFERENCES,
    config_references={},
))
