"""Advantage Weighted Matching (AWM; Xue et al. 2025), ported from
scxue/advantage_weighted_matching at commit 12b1397 (``scripts/train_sd3_awm.py``,
``config/dgx_awm.py: pickscore_sd3_no_cfg_1node``): RL as the pretraining flow-matching
loss weighted by the advantage.  No step log-likelihood of the sampler enters.

* **Rollouts** with the current policy, deterministically (``sample.noise_level = 0.0``,
  ``sde_frac = 0.0``) and CFG-free (``guidance_scale = 1.0``); only the end point ``x0``
  of each trajectory is kept.
* **Training states** are the forward process at the sampler's own times,
  ``x_t = (1 - t) x0 + t eps`` with fresh noise (``time_type = 'discrete'``): the first
  ``int(0.9 T)`` step indices cut into strata of two, one random index per stratum
  (``train_timesteps = 6`` of 12 there).
* **"log-prob"** (``compute_log_prob_awm``): the negative flow-matching error
  ``-mean_d (v_theta - (eps - x0))^2``, generalised-Huber weighted
  (``weighting = 'ghuber'``, power 0.25): ``-((mse + 1e-10)^p - 1e-10^p) t / p``.
* **Loss** (``loss_type = 'exp_first'``, on-policy): PPO clip 1 on
  ``exp(lp - sg(lp))`` with ``A' = clip(A, -5, 5) / 5`` (``advantage_max = 1``), so the
  gradient is ``-A' grad lp``; plus ``1e-4 mean |v_theta - v_ref|^2`` to the adapter-free
  model (``kl_weight = 'Uniform'``) and ``1 * mean |v_theta - v_ema|^2`` to a slow copy
  (``ema_beta = 1``, ``kl_ema_weight = 'Uniform'``), soft-updated after every epoch with
  decay ``min(0.3, 0.001 * optimizer steps)`` (``kl_ema_decay_type = 'linear'``).
* EMA of the weights 0.99, once per epoch, for evaluation.

How it sits on the contracts, as DiffusionNFT (``baselines/diffusion_nft.py``), with no
trainer change: the ``ode`` noise schedule; the :class:`AWMSlowCopy` rollout hook, a
subclass of DiffusionNFT's sampling-policy hook that leaves the rollout to the current
policy, forward-noises the stored states and stores the slow copy's predictions there
(``ctx.old_pred``); the ``awm`` objective (``likelihood=False``) reads ``ctx.pred``,
``ctx.sample`` (``x_t``) and ``ctx.final_sample`` (``x0``), and recovers the target
``eps - x0 = (x_t - x0) / t``.  Its "ratio" is a function of the flow-matching error, not
of the step likelihood, so PCPO is not defined on it (``pcpo-awm`` is refused with that
reason).

Deliberate: the Euler ODE of the flow grid instead of the reference's SA-Solver at
noise 0 (``use_sa_solver = True``; the loss sees only the end point); the strata drawn per
sample, not once per training micro-batch; the reference's first two epochs, which sample
and train nothing ("the group size collected in the first two epochs has a bug"), are not
reproduced.
"""
from __future__ import annotations

import torch

from baselines.diffusion_nft import NFTSamplingPolicy
from pcpo.algorithms import Framework, Ref, register_framework
from pcpo.objectives import StepContext, ppo_clip_loss, register_objective
from pcpo.rollout_hooks import register_rollout_hook
from pcpo.trained_steps import register_step_selector

REPO = "scxue/advantage_weighted_matching@12b1397"
TRAIN = f"{REPO} scripts/train_sd3_awm.py, main()"
LP = f"{REPO} scripts/train_sd3_awm.py, compute_log_prob_awm()"
CFG = f"{REPO} config/dgx_awm.py, pickscore_sd3_no_cfg_1node()"
BASE = f"{REPO} config/base_awm.py, get_config()"
WEIGHTINGS = ("Uniform", "t", "t**2", "huber", "ghuber")


def awm_log_prob(v: torch.Tensor, target: torch.Tensor, t: torch.Tensor, weighting: str = "ghuber",
                 power: float = 0.25) -> torch.Tensor:
    """``compute_log_prob_awm``'s weighted negative flow-matching error per sample (float64);
    ``t`` (B,) the flow times, ``target = eps - x0``."""
    lp = -((v.double() - target.double()) ** 2).flatten(1).mean(dim=1)
    t = t.double().reshape(-1)
    if weighting == "Uniform":
        return lp
    if weighting == "t":
        return lp * t
    if weighting == "t**2":
        return lp * t**2
    if weighting == "huber":
        return -(torch.sqrt(-lp + 1e-10) - 1e-5) * t
    if weighting == "ghuber":
        tiny = torch.tensor(1e-10, dtype=lp.dtype, device=lp.device)
        return -(torch.pow(-lp + 1e-10, power) - torch.pow(tiny, power)) * t / power
    raise ValueError(f"algorithm awm: objective_options.weighting must be one of {WEIGHTINGS}, got {weighting!r}")


@register_objective("awm", likelihood=False)
def awm_loss(ctx: StepContext):
    """AWM's advantage-weighted matching loss on one micro-batch at one trained step each."""
    o = {"weighting": "ghuber", "ghuber_power": 0.25, "adv_clip_max": 5.0, "advantage_max": 1.0, "ema_beta": 1.0,
         **ctx.options}
    v = ctx.pred
    x, x0 = ctx.sample.to(v.device).double(), ctx.final_sample.to(v.device).double()
    t = ctx.grid.timesteps[ctx.idx.cpu()].to(device=v.device, dtype=torch.float64)
    target = (x - x0) / t.view(-1, *([1] * (x.dim() - 1)))  # eps - x0, from x_t = (1 - t) x0 + t eps
    lp = awm_log_prob(v, target, t, o["weighting"], float(o["ghuber_power"]))
    amax = float(o["adv_clip_max"])
    adv = ctx.advantages.to(lp.dtype).clamp(-amax, amax) / amax * float(o["advantage_max"])
    loss, inactive = ppo_clip_loss(lp - lp.detach(), adv, ctx.clip_range)
    if float(o["ema_beta"]) > 0:
        loss = loss + float(o["ema_beta"]) * ((v.double() - ctx.old_pred.to(v.device).double()) ** 2).flatten(1).mean(1)
    return loss.to(v.dtype), inactive


def _strata(T: int, fraction: float) -> int:
    return max(1, int(T * fraction) // 2)


@register_step_selector("awm_stratified", _strata)
def select_stratified(T: int, fraction: float, B: int, generator: torch.Generator) -> torch.Tensor:
    """``time_type == 'discrete'``: ``boundaries = linspace(0, int(T * fraction), K + 1)``, one index
    ``lower + int(u (upper - lower))`` per stratum, K = int(T * fraction) // 2 (6 of 12 there)."""
    n, K = int(T * fraction), _strata(T, fraction)
    b = torch.linspace(0, max(n, 1), K + 1)
    lo, hi = b[:-1].long(), b[1:].long()
    u = torch.rand((B, K), generator=generator)
    return (lo + (u * (hi - lo)).long()).clamp_max(T - 1)


@register_rollout_hook("awm_slow_copy")
class AWMSlowCopy(NFTSamplingPolicy):
    """AWM's 'ema' adapter: predicts at the forward-noised training states (for the ema_beta term)
    and follows the trained weights after every epoch; the rollout is the current policy's."""

    def __init__(self, trainer, flat: int = 0, uprate: float = 0.001, uphold: float = 0.3):
        if trainer.model.family != "flow":
            raise ValueError("algorithm awm: the forward process x_t = (1 - t) x0 + t eps needs a flow model")
        if trainer.sharded:
            raise ValueError("algorithm awm: the slow copy is a full copy of the trainable weights; run it with "
                             "train.sharding: none (LoRA weights replicate cheaply)")
        super().__init__(trainer, flat=flat, uprate=uprate, uphold=uphold)

    def before_rollout(self, trainer, epoch: int) -> None:
        pass  # off_policy = False: the current policy samples

    def after_rollout(self, trainer, traj, epoch: int):
        self._live = [p.detach().clone() for p in trainer.params]
        self._load(trainer, self.old)
        return super().after_rollout(trainer, traj, epoch)  # restores the live weights


REFERENCES = {
    "sampler": Ref("SA-Solver at noise 0", CFG + ": `config.train.use_sa_solver = True`, `sample.noise_level = 0.0`",
                   note="the Euler ODE of the flow grid: the loss sees only the end point", deliberate=True),
    "eta": Ref(None, "no DDIM sampler in AWM's SD3 script"),
    "noise_level": Ref(0.0, CFG + ": `config.sample.noise_level = 0.0`",
                       note="unused under the ode schedule; a positive level keeps the grid's credit plan defined",
                       deliberate=True),
    "noise_schedule": Ref("ode", CFG + ": `noise_level = 0.0`, `sde_frac = 0.0`: every step deterministic"),
    "advantage": Ref("per_prompt", TRAIN + ": `advantages = stat_tracker.update(prompts, gathered_rewards['avg'])`; "
                     "`per_prompt_stat_tracking = True`"),
    "advantage_options": Ref(
        {"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False, "global_std": True, "history": False},
        TRAIN + ": `PerPromptStatTracker(config.sample.global_std)` with `sample.global_std = True` (dgx_awm.py); "
        "`stat_tracker.clear()` every epoch",
        note="the tracker's file is not in the stored snapshot; taken as flow_grpo's, whose package AWM ships"),
    "adv_clip": Ref(5.0, BASE + ": `train.adv_clip_max = 5`; train_sd3_awm.py `torch.clamp(sample['advantages'][:, 0], "
                    "-config.train.adv_clip_max, config.train.adv_clip_max)`"),
    "objective": Ref("awm", LP + ": `log_prob = -(model_output - (random_noise - clean_latents))**2`, mean, then "
                     "`weighting == 'ghuber'`; " + TRAIN + ": `ratio = torch.exp(log_probs - old_log_probs.detach())` "
                     "(exp_first, on-policy old = current), PPO clip, `+ config.train.ema_beta * ema_kl_loss`"),
    "objective_form": Ref(None, "no step log-ratio: the field is unused by the awm objective"),
    "objective_options": Ref({"weighting": "ghuber", "ghuber_power": 0.25, "adv_clip_max": 5.0, "advantage_max": 1.0,
                              "ema_beta": 1.0},
                             CFG + ": `train.weighting = 'ghuber'`, `ghuber_power = 0.25`, `advantage_max = 1`, "
                             "`ema_beta = 1`, `kl_ema_weight = 'Uniform'`; base_awm.py `adv_clip_max = 5`"),
    "rollout_hook": Ref("awm_slow_copy", TRAIN + ": `transformer.module.set_adapter('ema')` for `model_output_ema`; "
                        "`noised_latents = (1-timesteps) * sample['clean_latents'] + timesteps * "
                        "sample['train_random_noise']`"),
    "rollout_hook_options": Ref({"flat": 0, "uprate": 0.001, "uphold": 0.3},
                                TRAIN + ": `decay = min(config.train.kl_ema_decay, 0.001 * global_step)` "
                                "(`kl_ema_decay = 0.3`, linear) after every epoch"),
    "clip_range": Ref(1.0, CFG + ": `config.train.clip_range = 1`"),
    "timestep_fraction": Ref(0.9, CFG + ": `config.train.timestep_fraction = 0.9`"),
    "step_selection": Ref("awm_stratified", TRAIN + ": `time_type == 'discrete'`: `boundaries = torch.linspace(0, "
                          "int(num_steps * timestep_fraction), steps=train_timesteps + 1)`, one index per stratum",
                          note="train_timesteps = 6 over 12 indices: strata of two (K = int(0.9 T) // 2); drawn per "
                          "sample, not once per training micro-batch"),
    "cfg_grad": Ref("both", CFG + ": `sample.guidance_scale = 1.0`, base_awm.py `train.cfg = False`: no CFG branch"),
    "prompt_draw": Ref("per_group", TRAIN + ": DistributedKRepeatSampler, `num_image_per_prompt = 24`"),
    "share_initial_noise": Ref(False, TRAIN + ": `pipeline_with_logprob` without a shared generator"),
    "kl_beta": Ref(1e-4, CFG + ": `config.train.beta = 0.0001`"),
    "kl_form": Ref("prediction", TRAIN + ": `kl_weight == 'Uniform'`: `kl_loss = ((model_output - "
                   "model_output_ref) ** 2).mean(dim=(2,3,4))` against `disable_adapter()`"),
    "ema_decay": Ref(0.99, CFG + ": `config.train.ema_decay = 0.99`, `train.ema = True`"),
    "ema_warmup": Ref(True, TRAIN + ": `EMAModuleWrapper` of AWM's flow_grpo package",
                      note="the wrapper's file is not in the stored snapshot; taken as flow_grpo's warm-up rule"),
    "ema_every": Ref(1, CFG + ": `config.train.ema_update_step_interval = 1`"),
    "ema_unit": Ref("epoch", TRAIN + ": `if config.train.ema: ema.step(transformer_trainable_parameters, "
                    "global_step)` once after each epoch's training loop"),
    "proportional": Ref(False, "no per-step credit: the loss is not a policy gradient on the sampler's steps"),
    "defaults": Ref({"max_grad_norm": 1.0, "guidance_scale": 1.0},
                    BASE + ": `train.max_grad_norm = 1.0`; " + CFG + ": `config.sample.guidance_scale = 1.0`"),
    "warmup_epochs": Ref("first 2 epochs sample nothing", TRAIN + ": `if epoch < 2: continue`",
                         note="a workaround for a group-size bug there, not ported", deliberate=True),
}

register_framework(Framework(
    name="awm",
    description="AWM: deterministic CFG-free rollouts, advantage-weighted flow-matching loss on forward-noised "
                "states with a slow-copy regulariser (likelihood-free)",
    samplers={"flow": "flow-grpo"},
    noise_level=0.7,
    noise_schedule="ode",
    advantage="per_prompt",
    advantage_options={"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False,
                       "global_std": True, "history": False},
    adv_clip=5.0,
    objective="awm",
    objective_options={"weighting": "ghuber", "ghuber_power": 0.25, "adv_clip_max": 5.0, "advantage_max": 1.0,
                       "ema_beta": 1.0},
    rollout_hook="awm_slow_copy",
    rollout_hook_options={"flat": 0, "uprate": 0.001, "uphold": 0.3},
    clip_range=1.0,
    timestep_fraction=0.9,
    step_selection="awm_stratified",
    prompt_draw="per_group",
    share_initial_noise=False,
    kl_beta=1e-4,
    kl_form="prediction",
    ema_decay=0.99,
    ema_warmup=True,
    ema_every=1,
    ema_unit="epoch",
    defaults={"max_grad_norm": 1.0, "guidance_scale": 1.0},
    references=REFERENCES,
))
