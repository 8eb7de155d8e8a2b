"""Test drop-in baseline, written as a user would: its own advantage estimator (centred
ranks within each group) and its own loss (the PPO clip on the advantage's sign), DanceGRPO's
settings otherwise."""
import torch

from pcpo.advantages import register_advantage
from pcpo.algorithms import Framework, register_framework
from pcpo.objectives import ppo_clip_loss, register_objective


@register_advantage("wfdrop_rank")
def make_rank_advantage(**_):
    def estimate(prompts, rewards, group_ids):
        out = torch.zeros(len(rewards))
        for g in group_ids.unique():
            m = group_ids == g
            r = rewards[m].argsort().argsort().float()
            out[m] = r - r.mean()
        return out
    return estimate


@register_objective("wfdrop_sign")
def sign_loss(ctx):
    return ppo_clip_loss(ctx.log_ratio, torch.sign(ctx.advantages), ctx.clip_range)


register_framework(Framework(name="wfdrop", description="workflow test drop-in", samplers={"ddim": "ddim"},
                             eta=1.0, advantage="wfdrop_rank", objective="wfdrop_sign", timestep_fraction=0.5,
                             share_initial_noise=True))
