"""DDPO (Black et al. 2023): DDIM eta = 1, per-prompt advantage tracker, PPO clip 1e-4,
advantages clipped to +-5, every timestep trained."""
from pcpo.algorithms import Framework, register_framework

register_framework(Framework(
    name="ddpo",
    description="DDPO: DDIM-SDE, per-prompt running advantages, PPO-clip",
    samplers={"ddim": "ddim"},
    eta=1.0,
    advantage="per_prompt",
    advantage_options={"buffer_size": 32, "min_count": 16},
    adv_clip=5.0,
    objective="ppo_clip",
    objective_form="ratio",
    clip_range=1e-4,
    timestep_fraction=1.0,
    share_initial_noise=False,
    defaults={"max_grad_norm": 1.0},
))
