"""DDPO (Black et al. 2023), ported from kvablack/ddpo-pytorch at commit 1958463:
DDIM with eta = 1 (50 steps, CFG 5), an i.i.d. prompt per sample, the per-prompt
running advantage tracker (batch statistics until a prompt has min_count rewards),
advantages clipped to +-5, PPO clip 1e-4 on every step in random order per sample,
gradients through both CFG branches, no KL, no EMA.

Every setting, with the line it comes from, is in the recipe card:
``pcpo algorithms --show ddpo`` (docs/recipes/ddpo.md).
"""
from pcpo.algorithms import Framework, Ref, register_framework

REPO = "kvablack/ddpo-pytorch@1958463"
TRAIN = f"{REPO} scripts/train.py, main()"
BASE = f"{REPO} config/base.py, get_config()"
DGX = f"{REPO} config/dgx.py, aesthetic()"
TRACK = f"{REPO} ddpo_pytorch/stat_tracking.py, PerPromptStatTracker.update()"
LOGP = f"{REPO} ddpo_pytorch/diffusers_patch/ddim_with_logprob.py, ddim_step_with_logprob()"

REFERENCES = {
    "sampler": Ref("ddim", LOGP + ": DDIM with eta, log-prob of prev_sample, mean over image dims"),
    "eta": Ref(1.0, BASE + ": `sample.eta = 1.0`"),
    "noise_level": Ref(None, "no flow sampler in DDPO"),
    "advantage": Ref("per_prompt", TRAIN + ": `advantages = stat_tracker.update(prompts, rewards)` on rewards "
                     "gathered over processes (`accelerator.gather(samples['rewards'])`)"),
    "advantage_options": Ref(
        {"buffer_size": 32, "min_count": 16}, DGX + ": `config.per_prompt_stat_tracking = {'buffer_size': 32, "
        "'min_count': 16}`; " + TRACK + ": `deque(maxlen=self.buffer_size)`, `np.std(...) + 1e-6`, batch "
        "`np.mean(rewards)`/`np.std(rewards)` below min_count",
        note="base.py has buffer_size 16; eps 1e-6 and the population std are the tracker's defaults here"),
    "adv_clip": Ref(5.0, BASE + ": `train.adv_clip_max = 5`; train.py `torch.clamp(sample['advantages'], "
                    "-config.train.adv_clip_max, config.train.adv_clip_max)`"),
    "objective": Ref("ppo_clip", TRAIN + ": `loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))`"),
    "objective_form": Ref("ratio", TRAIN + ": `ratio = torch.exp(log_prob - sample['log_probs'][:, j])`"),
    "clip_range": Ref(1e-4, BASE + ": `train.clip_range = 1e-4`"),
    "timestep_fraction": Ref(1.0, BASE + ": `train.timestep_fraction = 1.0`"),
    "step_selection": Ref("random", TRAIN + ": `perms = torch.stack([torch.randperm(num_timesteps) for _ in "
                          "range(total_batch_size)])`, then the first `int(num_steps * timestep_fraction)` of each"),
    "cfg_grad": Ref("both", TRAIN + ": `unet(torch.cat([sample['latents'][:, j]] * 2), ...)`, no detach"),
    "prompt_draw": Ref("per_sample", TRAIN + ": `prompt_fn(**config.prompt_fn_kwargs) for _ in "
                       "range(config.sample.batch_size)`"),
    "share_initial_noise": Ref(False, TRAIN + ": the pipeline draws fresh latents for every sample"),
    "kl_beta": Ref(0.0, "no KL term in scripts/train.py"),
    "kl_form": Ref(None, "no KL term"),
    "ema_decay": Ref(None, "no EMA in scripts/train.py"),
    "ema_warmup": Ref(None, "no EMA"),
    "ema_every": Ref(None, "no EMA"),
    "ema_unit": Ref(None, "no EMA"),
    "proportional": Ref(False, "native credit: the log-ratio is log p_new - log p_old"),
    "defaults": Ref({"max_grad_norm": 1.0}, BASE + ": `train.max_grad_norm = 1.0`"),
}


def _config_refs(samples: int) -> dict:
    """The DDPO aesthetic run at ``samples`` per epoch (256: dgx.py; 512: the PCPO paper's larger batch)."""
    ours_note = ("the PCPO paper's bs512 setting doubles the prompts per epoch and the accumulation: 2 optimizer "
                 "steps of 256") if samples == 512 else ""
    refs = {
        "model.path": Ref("CompVis/stable-diffusion-v1-4", f"{REPO} config/dgx.py, compressibility(): "
                          "`config.pretrained.model = 'CompVis/stable-diffusion-v1-4'`",
                          note="SD1.5, as the PCPO paper runs DDPO (base.py's default model)", deliberate=True),
        "model.dtype": Ref("float16", BASE + ": `config.mixed_precision = 'fp16'`",
                           note="bf16 here; #12 recomputes the old log-probs in the training layout", deliberate=True),
        "model.options.resolution": Ref(512, "SD1.x's native 512 px (the pipeline's default height and width)"),
        "sampling.steps": Ref(50, BASE + ": `sample.num_steps = 50`"),
        "sampling.eta": Ref(1.0, BASE + ": `sample.eta = 1.0`"),
        "sampling.guidance_scale": Ref(5.0, BASE + ": `sample.guidance_scale = 5.0`"),
        "prompts.options.path": Ref("config/paper/prompts/simple_animals.txt",
                                    DGX + ": `config.prompt_fn = 'simple_animals'` (ddpo_pytorch/assets/simple_animals.txt)"),
        "resources.train.gpus": Ref(8, f"{REPO} config/dgx.py, compressibility(): 'the DGX machine I used had 8 GPUs'"),
        "train.train_batch_size": Ref(4, f"{REPO} config/dgx.py, compressibility(): `config.train.batch_size = 4`"),
        "train.gradient_accumulation": Ref(4, DGX + ": `config.train.gradient_accumulation_steps = 4`",
                                           note=ours_note, deliberate=samples == 512),
        "samples_per_epoch": Ref(256, f"{REPO} config/dgx.py, compressibility(): '8 * 8 * 4 = 256 samples per epoch'",
                                 note=ours_note, deliberate=samples == 512),
        "optimizer_steps_per_epoch": Ref(2, DGX + ": 'I used 2 gradient updates per epoch'"),
        "samples_per_optimizer_step": Ref(128, "4 per GPU x 4 accumulated x 8 GPUs", note=ours_note,
                                          deliberate=samples == 512),
        "train.epochs": Ref(200, DGX + ": `config.num_epochs = 200`"),
        "train.lr": Ref(3e-4, BASE + ": `train.learning_rate = 3e-4`"),
        "train.adam_betas": Ref([0.9, 0.999], BASE + ": `train.adam_beta1 = 0.9`, `train.adam_beta2 = 0.999`"),
        "train.weight_decay": Ref(1e-4, BASE + ": `train.adam_weight_decay = 1e-4`"),
        "train.adam_eps": Ref(1e-8, BASE + ": `train.adam_epsilon = 1e-8`"),
        "train.max_grad_norm": Ref(1.0, BASE + ": `train.max_grad_norm = 1.0`"),
        "train.inner_epochs": Ref(1, BASE + ": `train.num_inner_epochs = 1`"),
        "lora.enabled": Ref(True, BASE + ": `config.use_lora = True`"),
        "lora.rank": Ref(4, TRAIN + ": `LoRAAttnProcessor(hidden_size=..., cross_attention_dim=...)` (diffusers' "
                         "default rank 4)"),
        "lora.alpha": Ref(4, "LoRAAttnProcessor has no alpha: scale 1, i.e. alpha = rank"),
    }
    return refs


register_framework(Framework(
    name="ddpo",
    description="DDPO: DDIM-SDE, i.i.d. prompts, per-prompt running advantages, PPO-clip on every step",
    samplers={"ddim": "ddim"},
    eta=1.0,
    advantage="per_prompt",
    advantage_options={"buffer_size": 32, "min_count": 16},
    adv_clip=5.0,
    objective="ppo_clip",
    objective_form="ratio",
    clip_range=1e-4,
    timestep_fraction=1.0,
    step_selection="random",
    cfg_grad="both",
    prompt_draw="per_sample",
    share_initial_noise=False,
    defaults={"max_grad_norm": 1.0},
    references=REFERENCES,
    config_references={
        "config/paper/ddpo_sd15_aesthetic_bs256.yaml": _config_refs(256),
        "config/paper/ddpo_sd15_aesthetic_bs512.yaml": _config_refs(512),
    },
))
