"""TempFlow-GRPO (He et al. 2025, arXiv 2508.04324), from Shredded-Pork/TempFlow-GRPO
(``scripts/train_sd3_pr.py`` @ e66824e, ``config/dgx.py`` @ 63e4def; its README still
calls the training code unreleased): Flow-GRPO with noise-aware per-step weights.

* **Noise-aware weighting.** Each trained step's clipped surrogate is multiplied by
  ``w_t = s_t / mean_trained(s)`` with ``s_t = sigma~(t) sqrt(dt)`` the step's
  transition std (train_sd3_pr.py: ``-2.25 * std_dev_t * advantages * ratio``; 2.25
  is 1/mean of the nine trained ``s_t`` of SD3.5-M's 10-step grid, recomputed: 2.252).
  It is a per-timestep credit scheme like PCPO's.
* advantages per prompt with the group's own std (``global_std=False``), KL 0.001
  (pickscore_sd3_pr); the rest as Flow-GRPO.

Not ported: **trajectory branching** (an ODE main path with k = 6 SDE branches at
every step, each branch's reward credited to its branch step, per-step advantages).
It needs per-step advantages, which the trainer's (B,) advantage contract does not
carry; a rollout hook can add the branches, but not their step-wise credit.  So this
is TempFlow-GRPO's weighting on ordinary Flow-GRPO trajectories.
"""
import dataclasses

import torch

from baselines import flow_grpo
from pcpo.algorithms import FRAMEWORKS, Ref, register_framework
from pcpo.objectives import StepContext, ppo_clip_loss, register_objective

REPO = "Shredded-Pork/TempFlow-GRPO"
TRAIN = f"{REPO}@e66824e scripts/train_sd3_pr.py, main()"
CFG = f"{REPO}@63e4def config/dgx.py, pickscore_sd3_pr()"


def noise_weights(std: torch.Tensor, pool: torch.Tensor | None) -> torch.Tensor:
    """``std / mean(std[pool])``: the weights of all steps, mean 1 over the trained ones."""
    ref = std if pool is None else std[pool]
    return std / ref.mean()


@register_objective("tempflow_weighted", step_weight=lambda grid, pool: noise_weights(grid.std, pool))
def tempflow_weighted(ctx: StepContext):
    """PPO-clip times the step's noise-aware weight."""
    loss, inactive = ppo_clip_loss(ctx.log_ratio, ctx.advantages, ctx.clip_range)
    w = noise_weights(ctx.grid.std, ctx.trained_pool)[ctx.idx].to(device=loss.device, dtype=loss.dtype)
    return loss * w, inactive


base = FRAMEWORKS.get("flow_grpo")
REFERENCES = {
    **{k: Ref(v.value, "as Flow-GRPO (TempFlow-GRPO's base): " + v.source, v.note, v.deliberate)
       for k, v in flow_grpo.REFERENCES.items()},
    "objective": Ref("tempflow_weighted", TRAIN + ": `unclipped_loss = - 2.25 * std_dev_t * advantages * ratio`, "
                     "std_dev_t = sigma~(t) sqrt(dt) (sde_step_with_logprob's 4th output)"),
    "advantage_options": Ref(
        {"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False, "global_std": False, "history": False},
        CFG + ": `config.sample.global_std = False`; stat_tracking.py per-prompt mean and std + 1e-4"),
    "kl_beta": Ref(0.001, CFG + ": `config.train.beta = 0.001`", note="0.004 for geneval_sd3_pr and flux_pr"),
    "kl_form": Ref("gaussian", TRAIN + ": `kl = ((mean - mean_ref) ** 2).mean() / (2 * std_dev_t ** 2)` with "
                   "std_dev_t the step std sigma~ sqrt(dt): the exact Gaussian KL"),
    "branching": Ref("k = 6 SDE branches at every step, ODE elsewhere, branch reward credited to its step",
                     f"{REPO}@e66824e flow_grpo/diffusers_patch/sd3_pipeline_with_logprob_perstep.py",
                     note="not ported: needs per-step advantages (see the module docstring)", deliberate=True),
}

register_framework(dataclasses.replace(
    base,
    name="tempflow_grpo",
    description="TempFlow-GRPO: Flow-GRPO with noise-aware per-step weights s_t / mean(s) (no branching)",
    objective="tempflow_weighted",
    advantage_options={"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False, "global_std": False,
                       "history": False},
    kl_beta=0.001,
    kl_form="gaussian",
    references=REFERENCES,
    config_references={},
))
