"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117), from NVlabs/DiffusionNFT @ 24af555
(``scripts/train_nft_sd3.py``, ``config/nft.py``, ``config/base.py``): online RL on the
forward process, not a policy gradient.  No step log-likelihood enters anywhere.

* **Rollouts** with the *sampling policy* ``theta_old`` (the reference's LoRA adapter
  "old"), deterministically and CFG-free (``sample.deterministic = True``,
  ``guidance_scale = 1.0``).  Only each trajectory's clean end point ``x0`` is kept.
* **Training states** are the forward process at the sampler's own times:
  ``x_t = (1 - t) x0 + t eps`` with fresh noise, for a random 99% of the steps of every
  sample (``timestep_fraction = 0.99``, a per-sample permutation).
* **Loss** (the registered ``nft`` objective), with ``r = clip(A, -5, 5) / 10 + 1/2``:
  the implicit positive and negative policies ``v+ = beta v_theta + (1 - beta) v_old``
  and ``v- = (1 + beta) v_old - beta v_theta`` are each scored by their x0 error,
  ``||x0(v) - x0||^2 / sg(mean |x0(v) - x0|)``, and the loss is
  ``(r L+ + (1 - r) L-) * 5 / beta``, beta = 1.
* **KL** ``1e-4 mean |v_theta - v_ref|^2`` to the adapter-free model (``kl_form: prediction``).
* After every epoch ``theta_old <- d theta_old + (1 - d) theta`` with
  ``d = min(0.001 * optimizer steps so far, 0.5)`` (``return_decay``, ``decay_type = 1``).
* EMA 0.9 with warm-up after every optimizer step, used for evaluation.

How it sits on the contracts (no special case in the trainer): the ``ode`` noise
schedule makes the rollout deterministic; the :class:`NFTSamplingPolicy` rollout hook
swaps ``theta_old`` in for the rollout, replaces the stored states by forward-noised ones
and stores ``theta_old``'s predictions there (the trajectory's "old predictions", as for
every framework), and soft-updates ``theta_old`` after the update; the objective reads
``ctx.pred``, ``ctx.old_pred``, ``ctx.sample`` and ``ctx.final_sample``.  Being
likelihood-free (``likelihood=False``), it has no ``pcpo-`` variant, and the trainer
neither recomputes old log-probs nor gates on a log-ratio for it.

Deviations and what is not pinned down: the reference samples with a 2nd-order
DPM-Solver (``sample.solver = "dpm2"``); this port uses the Euler ODE of the flow
grid (the loss sees only the end point, so the solver changes the rollouts' quality,
not the objective).  The reference draws the training noise inside the training loop;
here the hook draws it once per epoch from the per-process training stream, the same
distribution with one inner epoch.  The hook scores ``theta_old`` at all T steps, the
reference at the ~0.99 T trained ones (``nfe_hook`` is T / int(0.99 T) of its count).
"""
from __future__ import annotations

import torch

from pcpo.algorithms import Framework, Ref, register_framework
from pcpo.objectives import StepContext, register_objective
from pcpo.rollout_hooks import RolloutHook, register_rollout_hook

REPO = "NVlabs/DiffusionNFT@24af555"
TRAIN = f"{REPO} scripts/train_nft_sd3.py, main()"
DECAY = f"{REPO} scripts/train_nft_sd3.py, return_decay()"
NFT = f"{REPO} config/nft.py, _get_config()"
BASE = f"{REPO} config/base.py, get_config()"
TRACK = f"{REPO} flow_grpo/stat_tracking.py, PerPromptStatTracker.update()"
EMA = f"{REPO} flow_grpo/ema.py, EMAModuleWrapper"


def old_policy_decay(step: int, flat: int = 0, uprate: float = 0.001, uphold: float = 0.5) -> float:
    """The sampling policy's soft-update decay after ``step`` optimizer steps (``return_decay``;
    decay_type 1 is flat 0, uprate 0.001, uphold 0.5; the OCR config's type 2 is 75, 0.0075, 0.999)."""
    return 0.0 if step < flat else min((step - flat) * uprate, uphold)


def _x0_loss(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``||x0(v) - x0||^2 / sg(mean |x0(v) - x0|)`` per sample, ``x0(v) = x_t - t v``."""
    x0_pred = x - t * v
    with torch.no_grad():
        w = (x0_pred.double() - x0.double()).abs().flatten(1).mean(dim=1).clamp_min(1e-5)
    return ((x0_pred - x0) ** 2).flatten(1).mean(dim=1) / w.to(x0_pred.dtype)


@register_objective("nft", likelihood=False)
def nft_loss(ctx: StepContext):
    """DiffusionNFT's negative-aware loss on one micro-batch at one trained step each."""
    o = ctx.options
    beta, amax = float(o.get("beta", 1.0)), float(o.get("adv_clip_max", 5.0))
    v, v_old = ctx.pred.float(), ctx.old_pred.float()
    x, x0 = ctx.sample.float(), ctx.final_sample.float()
    t = ctx.grid.timesteps[ctx.idx.cpu()].to(device=v.device, dtype=v.dtype).view(-1, *([1] * (v.dim() - 1)))
    adv = ctx.advantages.to(v.dtype).clamp(-amax, amax)
    r = (adv / amax / 2.0 + 0.5).clamp(0.0, 1.0)
    v_pos = beta * v + (1.0 - beta) * v_old
    v_neg = (1.0 + beta) * v_old - beta * v
    loss = (r * _x0_loss(v_pos, x, t, x0) + (1.0 - r) * _x0_loss(v_neg, x, t, x0)) / beta * amax
    # no trust region: the gradient is never cut off
    return loss, torch.zeros_like(loss, dtype=torch.bool)


@register_rollout_hook("nft_sampling_policy")
class NFTSamplingPolicy(RolloutHook):
    """theta_old: samples the rollouts, predicts at the forward-noised training states, and
    follows the trained weights by a soft update after every epoch."""

    def __init__(self, trainer, flat: int = 0, uprate: float = 0.001, uphold: float = 0.5):
        super().__init__(trainer, flat=flat, uprate=uprate, uphold=uphold)
        if trainer.model.family != "flow":
            raise ValueError("algorithm diffusion_nft: the forward process x_t = (1 - t) x0 + t eps needs a flow model")
        if trainer.sharded:
            raise ValueError("algorithm diffusion_nft: the sampling policy is a full copy of the trainable weights; "
                             "run it with train.sharding: none (LoRA weights replicate cheaply)")
        self.old = [p.detach().clone() for p in trainer.params]
        self._live: list[torch.Tensor] | None = None

    @torch.no_grad()
    def _load(self, trainer, values) -> None:
        for p, v in zip(trainer.params, values):
            p.copy_(v)

    def before_rollout(self, trainer, epoch: int) -> None:
        self._live = [p.detach().clone() for p in trainer.params]
        self._load(trainer, self.old)

    @torch.no_grad()
    def after_rollout(self, trainer, traj, epoch: int):
        try:
            x0 = traj.states[:, -1]
            B, T = traj.batch_size, traj.num_steps
            t = trainer.epoch_grid.timesteps.float()  # flow times s of the steps, 1 = noise
            eps = torch.randn((B, T, *x0.shape[1:]), generator=trainer.gen_train)
            tb = t.view(1, T, *([1] * (x0.dim() - 1)))
            states = traj.states.clone()
            states[:, :T] = (1 - tb) * x0.unsqueeze(1) + tb * eps
            preds = torch.empty_like(traj.preds)
            dev, model = trainer.acc.device, trainer.model
            bs = trainer.cfg.sampling.batch_size
            for lo in range(0, B, bs):
                sl = slice(lo, min(lo + bs, B))
                c = {k: v[sl].to(dev) for k, v in traj.cond.items()}
                u = {k: v[sl].to(dev) for k, v in traj.uncond.items()} if traj.uncond is not None else None
                for i in range(T):
                    tt = trainer.epoch_grid.model_time(torch.full((sl.stop - sl.start,), i, dtype=torch.long)).to(dev)
                    p = model.predict_guided(states[sl, i].to(dev, model.dtype), tt, c, u, trainer.st.guidance_scale)
                    preds[sl, i] = p.float().cpu()
            traj.states, traj.preds, traj.noise = states, preds, eps
            traj.log_probs = torch.zeros_like(traj.log_probs)
        finally:
            self._load(trainer, self._live)
            self._live = None
        return traj

    @torch.no_grad()
    def after_update(self, trainer, epoch: int) -> None:
        o = self.options
        d = old_policy_decay(trainer.global_step, o["flat"], o["uprate"], o["uphold"])
        for e, p in zip(self.old, trainer.params):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)

    def state_dict(self) -> dict:
        return {"old": [e.cpu() for e in self.old]}

    def load_state_dict(self, state: dict) -> None:
        self.old = [e.to(device=p.device, dtype=p.dtype) for e, p in zip(state["old"], self.old)]


REFERENCES = {
    "sampler": Ref("dpm2 (deterministic)", TRAIN + ": `pipeline_with_logprob(..., noise_level=config.sample.noise_level, "
                   "deterministic=config.sample.deterministic, solver=config.sample.solver)` with "
                   "`deterministic = True`, `solver = 'dpm2'` (nft.py)",
                   note="the Euler ODE of the flow grid, not DPM-Solver++(2M): see the module docstring",
                   deliberate=True),
    "eta": Ref(None, "no DDIM sampler in DiffusionNFT"),
    "objective_form": Ref(None, "no log-ratio: the field is unused by the nft objective"),
    "noise_level": Ref(0.7, NFT + ": `config.sample.noise_level = 0.7`, unused by the deterministic sampler"),
    "noise_schedule": Ref("ode", NFT + ": `config.sample.deterministic = True`"),
    "advantage": Ref("per_prompt", TRAIN + ": `advantages = stat_tracker.update(prompts_all_decoded, "
                     "gathered_rewards_dict['avg'])`; `config.per_prompt_stat_tracking = True` (base.py)"),
    "advantage_options": Ref(
        {"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False, "global_std": True, "history": False},
        TRACK + " with `PerPromptStatTracker(config.sample.global_std)`, `sample.global_std = True` (base.py); "
        "`stat_tracker.clear()` every epoch"),
    "adv_clip": Ref(5.0, TRAIN + ": `torch.clamp(train_sample_batch['advantages'][:, j_idx], "
                    "-config.train.adv_clip_max, config.train.adv_clip_max)`; `adv_clip_max = 5` (base.py)"),
    "objective": Ref("nft", TRAIN + ": `positive_prediction = config.beta * forward_prediction + (1 - config.beta) "
                     "* old_prediction.detach()`, `implicit_negative_prediction = (1.0 + config.beta) * "
                     "old_prediction.detach() - config.beta * forward_prediction`, adaptive weights "
                     "`abs(x0_prediction - x0).mean(...).clip(min=0.00001)`, `ori_policy_loss = r * positive_loss / "
                     "config.beta + (1.0 - r) * negative_loss / config.beta`, `policy_loss = (ori_policy_loss * "
                     "config.train.adv_clip_max).mean()`"),
    "objective_options": Ref({"beta": 1.0, "adv_clip_max": 5.0},
                             NFT + ": `config.beta = 1.0`", note="sd3_ocr() sets beta 0.1 and decay_type 2"),
    "rollout_hook": Ref("nft_sampling_policy", TRAIN + ": `transformer_ddp.module.set_adapter('old')` around "
                        "`pipeline_with_logprob`; `xt = (1 - t_expanded) * x0 + t_expanded * noise`; "
                        "`old_prediction` under the 'old' adapter"),
    "rollout_hook_options": Ref({"flat": 0, "uprate": 0.001, "uphold": 0.5},
                                DECAY + " decay_type 1 (nft.py `config.decay_type = 1`); after every epoch "
                                "`tgt_param.data.copy_(tgt_param * decay + src_param * (1.0 - decay))`"),
    "clip_range": Ref(None, "no trust region in DiffusionNFT (the field is unused by the nft objective)"),
    "timestep_fraction": Ref(0.99, BASE + ": `train.timestep_fraction = 0.99`; "
                             "`num_train_timesteps = int(config.sample.num_steps * config.train.timestep_fraction)`"),
    "step_selection": Ref("random", TRAIN + ": `perms_time = torch.stack([torch.randperm(num_timesteps_filtered) "
                          "for _ in range(total_batch_size_filtered)])`, then the first num_train_timesteps"),
    "cfg_grad": Ref("both", "no CFG in the training forward (guidance 1): the field has no effect"),
    "prompt_draw": Ref("per_group", TRAIN + ": DistributedKRepeatSampler, `num_image_per_prompt = 24`"),
    "share_initial_noise": Ref(False, TRAIN + ": `pipeline_with_logprob` without a shared generator"),
    "kl_beta": Ref(1e-4, NFT + ": `config.train.beta = 0.0001`"),
    "kl_form": Ref("prediction", TRAIN + ": `kl_div_loss = ((forward_prediction - ref_forward_prediction) ** 2)"
                   ".mean(dim=tuple(range(1, x0.ndim)))` against the adapter-free model"),
    "ema_decay": Ref(0.9, TRAIN + ": `EMAModuleWrapper(transformer_trainable_parameters, decay=0.9, "
                     "update_step_interval=1)`; `train.ema = True` (base.py)"),
    "ema_warmup": Ref(True, EMA + ".get_current_decay: `min((1 + optimization_step) / (10 + optimization_step), "
                      "self.decay)`"),
    "ema_every": Ref(1, TRAIN + ": `update_step_interval=1`"),
    "ema_unit": Ref("step", TRAIN + ": `ema.step(...)` when `current_accumulated_steps % effective_grad_accum_steps "
                    "== 0`, i.e. after each optimizer step"),
    "proportional": Ref(False, "no per-step credit: the loss is not a policy gradient"),
    "defaults": Ref({"max_grad_norm": 1.0, "guidance_scale": 1.0},
                    BASE + ": `train.max_grad_norm = 1.0`; " + NFT + ": `config.sample.guidance_scale = 1.0`"),
}

PAPER = "config/paper/diffusionnft_sd35m_pickscore.yaml"
PICK = f"{REPO} config/nft.py, sd3_pickscore()"
CONFIG_REFERENCES = {
    PAPER: {
        "model.path": Ref("stabilityai/stable-diffusion-3.5-medium", NFT + ": `config.pretrained.model`"),
        "model.options.resolution": Ref(512, NFT + ": `config.resolution = 512` (sd3)"),
        "model.options.max_sequence_length": Ref(128, TRAIN + ": `compute_text_embeddings(..., "
                                                 "max_sequence_length=128)`"),
        "model.dtype": Ref("float16", BASE + ": `config.mixed_precision = 'fp16'` (fp32 LoRA weights, autocast)",
                           note="bf16 weights here, as the other SD3.5 config", deliberate=True),
        "sampling.steps": Ref(10, NFT + ": `config.sample.num_steps = 10`"),
        "sampling.guidance_scale": Ref(1.0, NFT + ": `config.sample.guidance_scale = 1.0`"),
        "train.prompts_per_epoch": Ref(48, NFT + ": `num_groups = 48`"),
        "train.group_size": Ref(24, NFT + ": `config.sample.num_image_per_prompt = 24`"),
        "train.train_batch_size": Ref(9, NFT + ": `bsz = 9` (sd3), kept by the divisibility search at 8 GPUs"),
        "resources.train.gpus": Ref(8, PICK + ": `n_gpus=8`"),
        "train.gradient_accumulation": Ref(16, NFT + ": `gradient_accumulation_steps = num_batches_per_epoch // "
                                           "gradient_step_per_epoch` = 1152 / (8 x 9) / 1"),
        "samples_per_epoch": Ref(1152, NFT + ": 48 groups x 24 images"),
        "optimizer_steps_per_epoch": Ref(1, PICK + ": `gradient_step_per_epoch=1`"),
        "samples_per_optimizer_step": Ref(1152, "9 per GPU x 16 accumulated x 8 GPUs"),
        "train.lr": Ref(3e-4, BASE + ": `train.learning_rate = 3e-4`"),
        "train.adam_betas": Ref([0.9, 0.999], BASE + ": `train.adam_beta1 = 0.9`, `adam_beta2 = 0.999`"),
        "train.weight_decay": Ref(1e-4, BASE + ": `train.adam_weight_decay = 1e-4`"),
        "train.adam_eps": Ref(1e-8, BASE + ": `train.adam_epsilon = 1e-8`"),
        "train.max_grad_norm": Ref(1.0, BASE + ": `train.max_grad_norm = 1.0`"),
        "train.inner_epochs": Ref(1, BASE + ": `train.num_inner_epochs = 1`"),
        "train.kl_beta": Ref(1e-4, NFT + ": `config.train.beta = 0.0001`"),
        "lora.rank": Ref(32, TRAIN + ": `LoraConfig(r=32, lora_alpha=64, init_lora_weights='gaussian', ...)`"),
        "lora.alpha": Ref(64, TRAIN + ": `lora_alpha=64`"),
        "model.options.lora_targets": Ref(
            ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k", "attn.to_out.0",
             "attn.to_q", "attn.to_v"], TRAIN + ": `target_modules = [...]`"),
        "evaluation.steps": Ref(40, NFT + ": `config.sample.eval_num_steps = 40`"),
        "evaluation.guidance_scale": Ref(1.0, TRAIN + ", eval(): `guidance_scale=config.sample.guidance_scale`"),
        "evaluation.deterministic": Ref(True, TRAIN + ", eval(): `deterministic=True, solver='flow'`"),
    },
}

register_framework(Framework(
    name="diffusion_nft",
    description="DiffusionNFT: deterministic CFG-free rollouts by a soft-updated sampling policy, "
                "negative-aware x0 loss on forward-noised states (likelihood-free)",
    samplers={"flow": "flow-grpo"},
    noise_level=0.7,
    noise_schedule="ode",
    advantage="per_prompt",
    advantage_options={"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False,
                       "global_std": True, "history": False},
    adv_clip=5.0,
    objective="nft",
    objective_options={"beta": 1.0, "adv_clip_max": 5.0},
    rollout_hook="nft_sampling_policy",
    rollout_hook_options={"flat": 0, "uprate": 0.001, "uphold": 0.5},
    timestep_fraction=0.99,
    step_selection="random",
    prompt_draw="per_group",
    share_initial_noise=False,
    kl_beta=1e-4,
    kl_form="prediction",
    ema_decay=0.9,
    ema_warmup=True,
    ema_every=1,
    ema_unit="step",
    defaults={"max_grad_norm": 1.0, "guidance_scale": 1.0},
    references=REFERENCES,
    config_references=CONFIG_REFERENCES,
))
