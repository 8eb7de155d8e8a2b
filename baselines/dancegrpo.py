"""DanceGRPO (Xue et al. 2025): group-relative advantages over G images of a prompt
that share their initial noise, PPO clip, a random 60% of timesteps trained; DDIM on
epsilon models, the DanceGRPO flow SDE (eta = 0.3) on velocity models."""
from pcpo.algorithms import Framework, register_framework

register_framework(Framework(
    name="dancegrpo",
    description="DanceGRPO: group advantages, shared initial noise, timestep fraction 0.6",
    samplers={"ddim": "ddim", "flow": "flow-dance"},
    eta=1.0,
    noise_level=0.3,
    advantage="group",
    advantage_options={"eps": 1e-8, "unbiased": True},
    adv_clip=5.0,
    objective="ppo_clip",
    objective_form="ratio",
    clip_range=1e-4,
    timestep_fraction=0.6,
    share_initial_noise=True,
    defaults={"max_grad_norm": 1.0},
))
