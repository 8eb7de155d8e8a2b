"""Flow-GRPO-Fast (Liu et al. 2025, the "Fast" variant of yifan123/flow_grpo), ported from
``scripts/train_sd3_fast.py`` at commit 74db691 with its config
``config/grpo.py: pickscore_sd3_fast_nocfg`` (SD3.5-M, PickScore, CFG-free):

* every trajectory is an ODE trajectory except a window of w = 3 consecutive steps, which
  branch off with CPS steps (``sde_type = 'cps'``, noise level 0.8); the window start is
  drawn uniformly from ``[lo, hi - w]`` with ``(lo, hi) = (0, T // 2)``
  (``random.randint(sde_window_range[0], sde_window_range[1] - sde_window_size)``);
* only the window's steps are stored and trained (``num_train_timesteps =
  sde_window_size``), in order, every one of them for every sample;
* PPO clip 1e-5, no KL (``beta = 0``), CFG-free rollouts and training (guidance 1,
  ``train.cfg = False``);
* advantages, EMA and everything else as Flow-GRPO (per-prompt mean, global std + 1e-4,
  clipped to +-5; EMA 0.9 every 8th optimizer step with warm-up).

On the contracts (no trainer change): the ``flow_grpo_fast_window`` noise schedule (levels
1 in the window, 0 elsewhere: the ODE step of the same sampler, which for CPS at level 0 is
the Euler step), the ``stochastic`` step selection (exactly the window's steps) and the
``flow-cps`` step of ``baselines/cps.py``.  The objective is PPO's clip on the step
likelihood ratio and the schedule is binary, so ``pcpo-flow_grpo_fast`` exists: PCPO's
log-hinge in matching form with proportional credit over the window's steps.

One difference is deliberate and named in the card: the reference draws a window per
sampling call (each process's batch of ``sample.train_batch_size`` images); here one window
per epoch is drawn for all samples, seeded by the epoch, because the noise schedule is a
per-epoch contract.  Each sample's window has the same distribution; only the correlation
between samples of one epoch differs.

The fast pipeline (``flow_grpo/diffusers_patch/sd3_pipeline_with_logprob_fast.py``) is not in
the stored copy of yifan123/flow_grpo; it was read in two forks that carry it unchanged apart
from comments, zhtmike/flow_grpo@3d02fd9 and Xianchao-Wu/flow_grpo@6cf00e0.

``pcpo algorithms --show flow_grpo_fast`` prints the recipe card (docs/recipes/flow_grpo_fast.md).
"""
from __future__ import annotations

import dataclasses

import torch

from baselines import cps, flow_grpo  # noqa: F401 (cps registers the flow-cps step)
from pcpo.algorithms import FRAMEWORKS, Ref, register_framework
from pcpo.noise_schedules import register_noise_schedule

REPO = "yifan123/flow_grpo@74db691"
TRAIN = f"{REPO} scripts/train_sd3_fast.py, main()"
LOGP = f"{REPO} scripts/train_sd3_fast.py, compute_log_prob()"
CFG = f"{REPO} config/grpo.py, pickscore_sd3_fast_nocfg()"
BASE = "yifan123/flow_grpo@54809b5 config/base.py, get_config()"
PIPE = ("flow_grpo/diffusers_patch/sd3_pipeline_with_logprob_fast.py, pipeline_with_logprob() (read in "
        "zhtmike/flow_grpo@3d02fd9; not in the stored yifan123 copy)")
STEP = "yifan123/flow_grpo@54809b5 flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, sde_step_with_logprob()"


def window_bounds(T: int, window_size: int, window_range=None) -> tuple[int, int]:
    """``(lo, hi)``, the steps a window may cover (``None``: the config's ``(0, T // 2)``), checked."""
    lo, hi = (0, T // 2) if window_range is None else (int(window_range[0]), int(window_range[1]))
    w = int(window_size)
    if w < 1:
        raise ValueError(f"noise_schedule_options.window_size: need at least 1 SDE step, got {window_size}")
    if not 0 <= lo < hi <= T or hi - lo < w:
        raise ValueError(f"noise_schedule_options.window_range: ({lo}, {hi}) must satisfy 0 <= lo < hi <= {T} "
                         f"(the sampler steps) and hold the window of {w} steps; with {T} steps and no range given "
                         f"the range is (0, {T // 2}): use more sampling.steps or a smaller window_size")
    return lo, hi


def window_start(epoch: int, T: int, window_size: int = 3, window_range=None) -> int:
    """The first SDE step of ``epoch``: uniform on ``[lo, hi - w]`` like ``random.randint(lo, hi - w)``,
    drawn from a generator seeded by the epoch (the same in every process and on resume)."""
    lo, hi = window_bounds(T, window_size, window_range)
    g = torch.Generator().manual_seed(2_000_003 * (epoch + 1))
    return lo + int(torch.randint(0, hi - int(window_size) - lo + 1, (1,), generator=g))


@register_noise_schedule("flow_grpo_fast_window", count=lambda T, window_size=3, **_: int(window_size))
def fast_window(T: int, epoch: int, window_size: int = 3, window_range=None) -> torch.Tensor:
    """Level 1 on the epoch's window of ``window_size`` steps, 0 (the ODE step) elsewhere."""
    lv = torch.zeros(T, dtype=torch.float64)
    s = window_start(epoch, T, window_size, window_range)
    lv[s:s + int(window_size)] = 1.0
    return lv


WINDOW = {"window_size": 3, "window_range": None}

base = FRAMEWORKS.get("cps")
REFERENCES = {
    "sampler": Ref("flow-cps", CFG + ": `config.sample.sde_type = 'cps'`; " + LOGP + ": `sde_step_with_logprob(..., "
                   "sde_type=config.sample.sde_type)` (" + STEP + ", the `cps` branch; baselines/cps.py)"),
    "eta": Ref(None, "no DDIM sampler in Flow-GRPO"),
    "noise_level": Ref(0.8, CFG + ": `config.sample.noise_level = 0.8`"),
    "noise_schedule": Ref("flow_grpo_fast_window", PIPE + ": `cur_noise_level = noise_level` for `sde_window[0] <= "
                          "i < sde_window[1]`, `cur_noise_level = 0` elsewhere"),
    "noise_schedule_options": Ref(
        WINDOW, CFG + ": `config.sample.sde_window_size = 3`, `config.sample.sde_window_range = (0, "
        "config.sample.num_steps//2)`; " + PIPE + ": `start = random.randint(sde_window_range[0], "
        "sde_window_range[1] - sde_window_size)`",
        note="window_range None is the config's (0, T // 2). The reference draws a window per sampling call "
        "(per process and batch, Python's process-seeded random); here one per epoch for every sample, seeded "
        "by the epoch: the noise schedule is a per-epoch contract", deliberate=True),
    "advantage": Ref(
        "per_prompt", TRAIN + ": `advantages = stat_tracker.update(prompts, gathered_rewards['avg'])`"),
    "advantage_options": Ref(
        {"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False, "global_std": True, "history": False},
        CFG + ": `config.sample.global_std = True`; " + flow_grpo.TRACK + " (cleared by `stat_tracker.clear()` "
        "every epoch in train_sd3_fast.py)"),
    "adv_clip": Ref(5.0, BASE + ": `train.adv_clip_max = 5`; " + TRAIN + ": `torch.clamp(sample['advantages'][:, j], "
                    "-config.train.adv_clip_max, config.train.adv_clip_max)`"),
    "objective": Ref("ppo_clip", TRAIN + ": `policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))`"),
    "objective_form": Ref("ratio", TRAIN + ": `ratio = torch.exp(log_prob - sample['log_probs'][:, j])`"),
    "clip_range": Ref(1e-5, CFG + ": `config.train.clip_range = 1e-5`"),
    "timestep_fraction": Ref(None, TRAIN + ": `num_train_timesteps = config.sample.sde_window_size`; the fraction "
                             "is not read"),
    "step_selection": Ref("stochastic", TRAIN + ": `train_timesteps = [step_index for step_index in "
                          "range(num_train_timesteps)]` over the stored window (" + PIPE + " appends latents, "
                          "log-probs and timesteps only for `i >= sde_window[0] and i < sde_window[1]`)"),
    "cfg_grad": Ref("both", CFG + ": `config.train.cfg = False`, `sample.guidance_scale = 1`: no CFG branch"),
    "prompt_draw": Ref("per_group", TRAIN + ": DistributedKRepeatSampler repeats each prompt "
                       "`k = config.sample.num_image_per_prompt` (18) times"),
    "share_initial_noise": Ref(False, BASE + ": `sample.same_latent = False` (the fast config keeps it)"),
    "kl_beta": Ref(0.0, CFG + ": `config.train.beta = 0`"),
    "kl_form": Ref(None, "no KL term (beta 0)"),
    "ema_decay": Ref(0.9, TRAIN + ": `EMAModuleWrapper(..., decay=0.9, update_step_interval=8)`; CFG "
                     "`config.train.ema = True`"),
    "ema_warmup": Ref(True, flow_grpo.EMA + ": `min((1 + optimization_step) / (10 + optimization_step), self.decay)`"),
    "ema_every": Ref(8, TRAIN + ": `update_step_interval=8`"),
    "ema_unit": Ref("batch", TRAIN + ": `if config.train.ema: ema.step(transformer_trainable_parameters, global_step)` "
                    "after each training batch's timestep loop"),
    "proportional": Ref(False, "native credit: the log-ratio is the difference of the reference's constant-free "
                        "CPS log-probs"),
    "defaults": Ref({"max_grad_norm": 1.0, "guidance_scale": 1.0},
                    BASE + ": `train.max_grad_norm = 1.0`; " + CFG + ": `config.sample.guidance_scale = 1`"),
    "zero_advantage_filter": Ref(
        "drop samples whose advantages are all 0", TRAIN + ": `mask = (samples['advantages'].abs().sum(dim=1) != 0)`",
        note="not ported, as for Flow-GRPO: such samples add no policy gradient; with continuous rewards and a "
        "global std they do not occur", deliberate=True),
}

register_framework(dataclasses.replace(
    base,
    name="flow_grpo_fast",
    description="Flow-GRPO-Fast: ODE trajectories with a random window of 3 CPS steps, only the window trained, "
                "CFG-free, clip 1e-5, no KL",
    samplers={"flow": "flow-cps"},
    noise_level=0.8,
    noise_schedule="flow_grpo_fast_window",
    noise_schedule_options=dict(WINDOW),
    clip_range=1e-5,
    timestep_fraction=1.0,
    step_selection="stochastic",
    cfg_grad="both",
    kl_beta=0.0,
    kl_form="gaussian",
    defaults={"max_grad_norm": 1.0, "guidance_scale": 1.0},
    references=REFERENCES,
    config_references={},
))
