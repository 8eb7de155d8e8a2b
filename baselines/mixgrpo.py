"""MixGRPO (Li et al. 2025, arXiv 2507.21802), ported from Tencent-Hunyuan/MixGRPO at
commit e5cdd6a (FLUX.1-dev, ``scripts/finetune/finetune_flux_grpo_MixGRPO.sh``):

* a sliding window of w = 4 consecutive steps samples with the Flow-GRPO SDE
  (eta 0.7); every other step is the deterministic Euler (ODE) step;
* only the window's steps are trained (PPO clip 1e-4, no KL);
* the window starts at step 0 and moves one step every 25 iterations (one of our
  epochs is one of its iterations: a rollout and its update), back to 0 past the end;
* the G = 12 images of a prompt share their initial noise; advantages are each
  group's z-score with the unbiased std, clipped to +-5.

It brings one mechanism the other frameworks lack, registered here: the
``mixgrpo_window`` noise schedule.  The ``stochastic`` step selection trains
exactly the window.  MixGRPO-Flash (DPM-Solver++ after the window, fewer steps) is
not ported: it changes the grid after the window, which no trained step sees.

``pcpo algorithms --show mixgrpo`` prints the recipe card (docs/recipes/mixgrpo.md).
"""
import torch

from pcpo.algorithms import Framework, Ref, register_framework
from pcpo.noise_schedules import register_noise_schedule

REPO = "Tencent-Hunyuan/MixGRPO@e5cdd6a"
TRAIN = f"{REPO} fastvideo/train_grpo_flux.py"
STATES = f"{REPO} fastvideo/utils/grpo_states.py, GRPOTrainingStates"
SAMPLING = f"{REPO} fastvideo/utils/sampling_utils.py"
SCRIPT = f"{REPO} scripts/finetune/finetune_flux_grpo_MixGRPO.sh"


def window_start(epoch: int, T: int, window_size: int = 4, shift_interval: int = 25, stride: int = 1,
                 start: int = 0, strategy: str = "progressive", roll_back: bool = True) -> int:
    """The first step of the SDE window at ``epoch`` (progressive: advance ``stride`` steps
    every ``shift_interval`` epochs; random: a fresh start every epoch, seeded by the epoch)."""
    last = T - 2 - window_size  # the reference's window never reaches the last two steps
    if last < 0:
        raise ValueError(f"noise_schedule_options.window_size: {window_size} steps do not fit in {T} sampler "
                         f"steps (MixGRPO keeps the last two out of the window; need T >= window_size + 2)")
    if strategy == "random":
        g = torch.Generator().manual_seed(1_000_003 * (epoch + 1))
        return int(torch.randint(0, last + 1, (1,), generator=g))
    if strategy != "progressive":
        raise ValueError(f"noise_schedule_options.strategy: 'progressive' or 'random', got {strategy!r}")
    cur = start + stride * (epoch // shift_interval)
    if cur > last:
        if not roll_back:
            return last
        span = last - start + 1
        cur = start + (cur - start) % span
    return cur


@register_noise_schedule("mixgrpo_window", count=lambda T, window_size=4, **_: window_size)
def mixgrpo_window(T: int, epoch: int, window_size: int = 4, **options) -> torch.Tensor:
    lv = torch.zeros(T, dtype=torch.float64)
    s = window_start(epoch, T, window_size, **options)
    lv[s:s + window_size] = 1.0
    return lv


WINDOW = {"window_size": 4, "shift_interval": 25, "stride": 1, "start": 0, "strategy": "progressive",
          "roll_back": True}

REFERENCES = {
    "sampler": Ref("flow-grpo", SCRIPT + ": `--flow_grpo_sampling`; " + SAMPLING + ", flow_grpo_step(): the "
                   "Flow-GRPO SDE inside the window"),
    "eta": Ref(None, "no DDIM sampler in MixGRPO"),
    "noise_level": Ref(0.7, SCRIPT + ": `--eta 0.7`"),
    "noise_schedule": Ref("mixgrpo_window", SAMPLING + ", run_sample_step(): `determistic[i] = False` only for i in "
                          "the window (training_strategy 'part'); `x + dt * v` elsewhere"),
    "noise_schedule_options": Ref(
        WINDOW, STATES + ": `range(cur, min(cur + group_size, max_timesteps))` with group_size 4 (the window), "
        "iters_per_group 25, prog_overlap_step 1, init 0, roll_back (" + SCRIPT + ")",
        note="the reference shrinks the window near the end (max_timesteps = T - 2 is an exclusive bound; not "
        "reached in its 300 iterations); here the start stops at T - 2 - w and rolls back, so every epoch trains "
        "w steps and the batch arithmetic is fixed. Random starts are seeded by the epoch (the reference's "
        "default_rng(None) is unseeded)", deliberate=True),
    "advantage": Ref("group", TRAIN + ", train_one_step(): per reward model `(r - mean) / (std + 1e-8)` over the "
                     "local group of 12"),
    "advantage_options": Ref({"eps": 1e-8, "unbiased": True}, TRAIN + ", train_one_step(): torch `.std()`",
                             note="the reference averages the z-scores of three reward models "
                             "(advantage_aggr); one reward here"),
    "adv_clip": Ref(5.0, TRAIN + ": `--adv_clip_max 5.0`; `torch.clamp(advantages, -adv_clip_max, adv_clip_max)`"),
    "objective": Ref("ppo_clip", TRAIN + ", grpo_one_step(): `torch.mean(torch.maximum(unclipped_loss, clipped_loss))`"),
    "objective_form": Ref("ratio", TRAIN + ": `ratio = torch.exp(new_log_probs - old_log_probs)`"),
    "clip_range": Ref(1e-4, SCRIPT + ": `--clip_range 1e-4`"),
    "timestep_fraction": Ref(None, "MixGRPO trains the window; the fraction does not apply"),
    "step_selection": Ref("stochastic", TRAIN + ": `timesteps_train = grpo_states.get_current_timesteps()`, every "
                          "window step in order for every image"),
    "cfg_grad": Ref("both", "FLUX.1-dev is guidance-distilled: `--cfg 0.0`, no unconditional branch",
                    note="no CFG branch to detach; irrelevant on FLUX"),
    "prompt_draw": Ref("per_group", TRAIN + ": `--use_group`, `num_generations 12` images of one prompt per GPU"),
    "share_initial_noise": Ref(True, SCRIPT + ": `--init_same_noise`"),
    "kl_beta": Ref(0.0, SCRIPT + ": `--kl_coeff 0.0`",
                   note="its kl_loss is 0.5 (log rho)^2 to the sampling policy, off in every script"),
    "kl_form": Ref(None, "no KL term"),
    "ema_decay": Ref(None, "no EMA of the weights in the MixGRPO scripts"),
    "ema_warmup": Ref(None, "no EMA"),
    "ema_every": Ref(None, "no EMA"),
    "ema_unit": Ref(None, "no EMA"),
    "proportional": Ref(False, "native credit"),
    "defaults": Ref({"max_grad_norm": 1.0}, SCRIPT + ": `--max_grad_norm 1.0`"),
    "flash_dpm_solver": Ref(
        "DPM-Solver++ (2nd order) on a compressed grid after the window", SAMPLING + ", dpm_step()",
        note="MixGRPO-Flash is not ported: it only changes the untrained ODE steps after the window",
        deliberate=True),
}

register_framework(Framework(
    name="mixgrpo",
    description="MixGRPO: Flow-GRPO SDE in a sliding window of 4 steps, ODE elsewhere, only the window trained",
    samplers={"flow": "flow-grpo"},
    noise_level=0.7,
    noise_schedule="mixgrpo_window",
    noise_schedule_options=dict(WINDOW),
    advantage="group",
    advantage_options={"eps": 1e-8, "unbiased": True},
    adv_clip=5.0,
    objective="ppo_clip",
    objective_form="ratio",
    clip_range=1e-4,
    step_selection="stochastic",
    cfg_grad="both",
    prompt_draw="per_group",
    share_initial_noise=True,
    kl_beta=0.0,
    defaults={"max_grad_norm": 1.0},
    references=REFERENCES,
))
