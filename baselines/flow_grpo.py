"""Flow-GRPO (Liu et al. 2025): the Flow-GRPO SDE (a = 0.7), group advantages, PPO clip,
KL penalty beta = 0.04 in closed form on the step means."""
from pcpo.algorithms import Framework, register_framework

register_framework(Framework(
    name="flow_grpo",
    description="Flow-GRPO: Flow-GRPO SDE, group advantages, KL to the reference model",
    samplers={"flow": "flow-grpo"},
    noise_level=0.7,
    advantage="group",
    advantage_options={"eps": 1e-4, "unbiased": False},
    adv_clip=5.0,
    objective="ppo_clip",
    objective_form="ratio",
    clip_range=1e-4,
    timestep_fraction=1.0,
    share_initial_noise=False,
    kl_beta=0.04,
    defaults={"max_grad_norm": 1.0},
))
