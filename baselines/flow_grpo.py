"""Flow-GRPO (Liu et al. 2025), ported from yifan123/flow_grpo at commit ac4c86e
(2025-07-18), SD3.5-M with PickScore (``config/grpo.py: pickscore_sd3``):

* the Flow-GRPO SDE with noise level a = 0.7, 10 sampler steps;
* advantages with the per-prompt mean of the epoch's samples and the global std
  of all gathered rewards + 1e-4 (the tracker is cleared every epoch), clipped to +-5;
* PPO clip 1e-4 on the first int(0.99 T) = 9 steps, in order, the same for every sample;
* the unconditional CFG branch detached in the training forward;
* KL to the LoRA-disabled model in the code's form |mu - mu_ref|^2 / (2 sigma~(s)^2),
  beta 0.01 (PickScore; 0.04 is the GenEval/OCR setting);
* EMA of the LoRA weights, decay 0.9 with warm-up, every 8th optimizer step, used
  for evaluation and checkpoints.

Every setting, with the line it comes from, is in the recipe card:
``pcpo algorithms --show flow_grpo`` (docs/recipes/flow_grpo.md).
"""
from pcpo.algorithms import Framework, Ref, register_framework

REPO = "yifan123/flow_grpo@ac4c86e"
TRAIN = f"{REPO} scripts/train_sd3.py, main()"
CFG = f"{REPO} config/grpo.py, pickscore_sd3()"
BASE = f"{REPO} config/base.py, get_config()"
SDE = f"{REPO} flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, sde_step_with_logprob()"
TRACK = f"{REPO} flow_grpo/stat_tracking.py, PerPromptStatTracker.update()"
EMA = f"{REPO} flow_grpo/ema.py, EMAModuleWrapper.step()"
PAPER = "config/paper/flowgrpo_sd35m_pickscore.yaml"

REFERENCES = {
    "sampler": Ref("flow-grpo", SDE + ": `std_dev_t = sqrt(sigma / (1 - where(sigma == 1, sigma_max, sigma))) * "
                   "noise_level`; step std `std_dev_t * sqrt(-dt)`"),
    "eta": Ref(None, "no DDIM sampler in Flow-GRPO"),
    "noise_level": Ref(0.7, BASE + ": `sample.noise_level = 0.7` (pickscore_sd3 keeps it)"),
    "advantage": Ref("per_prompt", TRAIN + ": `advantages = stat_tracker.update(prompts, gathered_rewards['avg'])`"),
    "advantage_options": Ref(
        {"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False, "global_std": True, "history": False},
        TRACK + ": `mean = np.mean(self.stats[prompt])`; `std = np.std(rewards) + 1e-4  # Use global std of all "
        "rewards`; cleared by `stat_tracker.clear()` every epoch in train_sd3.py",
        note="grouped by the prompt string, so a prompt drawn twice in an epoch is pooled, as there"),
    "adv_clip": Ref(5.0, BASE + ": `train.adv_clip_max = 5`; train_sd3.py `torch.clamp(sample['advantages'][:, j], "
                    "-config.train.adv_clip_max, config.train.adv_clip_max)`"),
    "objective": Ref("ppo_clip", TRAIN + ": `policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))`"),
    "objective_form": Ref("ratio", TRAIN + ": `ratio = torch.exp(log_prob - sample['log_probs'][:, j])`"),
    "clip_range": Ref(1e-4, BASE + ": `train.clip_range = 1e-4`"),
    "timestep_fraction": Ref(0.99, CFG + ": `config.train.timestep_fraction = 0.99` (base default 1.0)"),
    "step_selection": Ref("first", TRAIN + ": `num_train_timesteps = int(config.sample.num_steps * "
                          "config.train.timestep_fraction)`; `train_timesteps = [step_index for step_index in "
                          "range(num_train_timesteps)]`: 9 of 10 steps, in order, every sample"),
    "cfg_grad": Ref("cond_only", TRAIN + ", compute_log_prob(): `noise_pred_uncond = noise_pred_uncond.detach()`",
                    note="added in 2d76907 (2025-07-15); a later train_sd3.py (74db691) drops the detach — "
                    "`algorithms: {flow_grpo: {cfg_grad: both}}` runs that version"),
    "prompt_draw": Ref("per_group", TRAIN + ": DistributedKRepeatSampler repeats each of m prompts k = 24 times"),
    "share_initial_noise": Ref(False, "sd3_pipeline_with_logprob.py: every sample draws its own initial latents "
                               "(no same_latent at ac4c86e; later config/base.py: `sample.same_latent = False`)"),
    "kl_beta": Ref(0.01, CFG + ": `config.train.beta = 0.01`",
                   note="0.04 in general_ocr_sd3/geneval_sd3; base default 0"),
    "kl_form": Ref("flow_grpo", TRAIN + ": `kl_loss = ((prev_sample_mean - prev_sample_mean_ref) ** 2).mean(dim=(1,2,3), "
                   "keepdim=True) / (2 * std_dev_t ** 2)`, std_dev_t = sigma~(s) without sqrt(-dt)",
                   note="`kl_form: gaussian` gives the exact KL of the step Gaussians (1/ds times this)"),
    "ema_decay": Ref(0.9, TRAIN + ": `EMAModuleWrapper(..., decay=0.9, update_step_interval=8)`; CFG `train.ema = True`"),
    "ema_warmup": Ref(True, EMA + ": `min((1 + optimization_step) / (10 + optimization_step), self.decay)`"),
    "ema_every": Ref(8, EMA + ": `if (optimization_step + 1) % self.update_step_interval == 0`, called after every "
                     "training batch with the optimizer-step count (train_sd3.py `ema.step(..., global_step)`)"),
    "ema_unit": Ref("batch", TRAIN + ": `if config.train.ema: ema.step(transformer_trainable_parameters, global_step)` "
                    "after each training batch's timestep loop"),
    "proportional": Ref(False, "native credit: the log-ratio is log p_new - log p_old"),
    "defaults": Ref({"max_grad_norm": 1.0}, BASE + ": `train.max_grad_norm = 1.0`"),
    # reference steps with no framework field
    "zero_advantage_filter": Ref(
        "drop samples whose advantages are all 0", TRAIN + ": `mask = (samples['advantages'].abs().sum(dim=1) != 0)`",
        note="not ported: such samples add no policy gradient, only compute (and a KL term); with continuous "
        "rewards and a global std they do not occur", deliberate=True),
}

CONFIG_REFERENCES = {
    PAPER: {
        "model.path": Ref("stabilityai/stable-diffusion-3.5-medium", BASE + ": `pretrained.model`"),
        "model.options.resolution": Ref(512, CFG + ": `config.resolution = 512`"),
        "model.options.max_sequence_length": Ref(128, TRAIN + ": `compute_text_embeddings(..., max_sequence_length=128)`"),
        "model.options.time_grid": Ref("pipeline", "sd3_pipeline_with_logprob.py: `retrieve_timesteps(...)` on the "
                                       "scheduler's default sigmas"),
        "model.dtype": Ref("float16", BASE + ": `config.mixed_precision = 'fp16'` (fp32 LoRA weights, autocast)",
                           note="bf16 weights here; old log-probs recomputed in the training layout is #12's remedy",
                           deliberate=True),
        "sampling.steps": Ref(10, CFG + ": `config.sample.num_steps = 10`"),
        "sampling.guidance_scale": Ref(4.5, CFG + ": `config.sample.guidance_scale = 4.5`"),
        "sampling.noise_level": Ref(0.7, BASE + ": `sample.noise_level = 0.7`"),
        "train.prompts_per_epoch": Ref(48, CFG + ": `num_batches_per_epoch = int(48/(gpu_number*train_batch_size/"
                                       "num_image_per_prompt))`"),
        "train.group_size": Ref(24, CFG + ": `config.sample.num_image_per_prompt = 24`"),
        "train.train_batch_size": Ref(9, CFG + ": `config.sample.train_batch_size = 9`; `train.batch_size = "
                                      "sample.train_batch_size`"),
        "resources.train.gpus": Ref(32, CFG + ": `gpu_number=32`",
                                    note="8 GPUs here; accumulation 8 instead of 2 keeps the global batch", deliberate=True),
        "train.gradient_accumulation": Ref(2, CFG + ": `gradient_accumulation_steps = num_batches_per_epoch//2` "
                                           "(2 at 32 GPUs; the same rule gives 8 at 8 GPUs)",
                                           note="8 on 8 GPUs: 9 x 8 x 8 = 576 samples per optimizer step, as "
                                           "9 x 2 x 32", deliberate=True),
        "samples_per_epoch": Ref(1152, CFG + ": 48 groups x 24 images"),
        "optimizer_steps_per_epoch": Ref(2, CFG + ": `assert num_batches_per_epoch % 2 == 0, '... gradients are "
                                         "updated twice per epoch'`"),
        "samples_per_optimizer_step": Ref(576, "9 per GPU x 2 accumulated x 32 GPUs"),
        "train.lr": Ref(3e-4, BASE + ": `train.learning_rate = 3e-4`"),
        "train.adam_betas": Ref([0.9, 0.999], BASE + ": `train.adam_beta1 = 0.9`, `adam_beta2 = 0.999`"),
        "train.weight_decay": Ref(1e-4, BASE + ": `train.adam_weight_decay = 1e-4`"),
        "train.adam_eps": Ref(1e-8, BASE + ": `train.adam_epsilon = 1e-8`"),
        "train.max_grad_norm": Ref(1.0, BASE + ": `train.max_grad_norm = 1.0`"),
        "train.inner_epochs": Ref(1, CFG + ": `config.train.num_inner_epochs = 1`"),
        "train.kl_beta": Ref(0.01, CFG + ": `config.train.beta = 0.01`"),
        "lora.rank": Ref(32, TRAIN + ": `LoraConfig(r=32, lora_alpha=64, init_lora_weights='gaussian', ...)`"),
        "lora.alpha": Ref(64, TRAIN + ": `lora_alpha=64`"),
        "model.options.lora_targets": Ref(
            ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k", "attn.to_out.0",
             "attn.to_q", "attn.to_v"], TRAIN + ": `target_modules = [...]` (not attn2)"),
        "reward.options.scale": Ref(26.0, f"{REPO} flow_grpo/pickscore_scorer.py: `scores = scores/26`"),
        "evaluation.steps": Ref(40, CFG + ": `config.sample.eval_num_steps = 40`"),
        "evaluation.guidance_scale": Ref(4.5, TRAIN + ", eval(): `guidance_scale=config.sample.guidance_scale`"),
        "evaluation.deterministic": Ref(True, TRAIN + ", eval(): `noise_level=0` (Euler ODE)"),
    },
}

register_framework(Framework(
    name="flow_grpo",
    description="Flow-GRPO: Flow-GRPO SDE, per-prompt mean / global std advantages, first 99% of steps, "
                "uncond branch detached, KL in the code's form, EMA",
    samplers={"flow": "flow-grpo"},
    noise_level=0.7,
    advantage="per_prompt",
    advantage_options={"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False,
                       "global_std": True, "history": False},
    adv_clip=5.0,
    objective="ppo_clip",
    objective_form="ratio",
    clip_range=1e-4,
    timestep_fraction=0.99,
    step_selection="first",
    cfg_grad="cond_only",
    prompt_draw="per_group",
    share_initial_noise=False,
    kl_beta=0.01,
    kl_form="flow_grpo",
    ema_decay=0.9,
    ema_warmup=True,
    ema_every=8,
    defaults={"max_grad_norm": 1.0},
    references=REFERENCES,
    config_references=CONFIG_REFERENCES,
))
