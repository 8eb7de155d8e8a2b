"""DanceGRPO (Xue et al. 2025), ported from XueZeyue/DanceGRPO at commit 15cc71d:
group-relative advantages over G images of a prompt that share their initial noise,
PPO clip 1e-4, advantages clipped to +-5, the last sampler step never trained and a
random int((T - 1) * fraction) of the others per sample (fraction 1.0 on SD, 0.6 on
FLUX); DDIM (eta 1) on epsilon models, the DanceGRPO flow SDE (eta 0.3) on velocity
models.

The SD recipe is ``fastvideo/train_grpo_sd.py`` with ``fastvideo/config_sd/dgx.py:
hpsv2``; the FLUX recipe is ``fastvideo/train_grpo_flux_lora.py`` with
``scripts/finetune/finetune_flux_grpo_8gpus_lora.sh`` (LoRA).  The full FLUX fine-tune
(``train_grpo_flux.py``, ``finetune_flux_grpo_8gpus.sh``: FSDP, lr 1e-5, max grad norm
0.01, 16 steps, EMA 0.995 once per iteration) needs FSDP, which the trainer does not
have yet; its EMA runs with ``algorithms: {dancegrpo: {ema_decay: 0.995, ema_unit: epoch}}``.

Every setting, with the line it comes from, is in the recipe card:
``pcpo algorithms --show dancegrpo`` (docs/recipes/dancegrpo.md).
"""
from pcpo.algorithms import Framework, Ref, register_framework

REPO = "XueZeyue/DanceGRPO@15cc71d"
SD = f"{REPO} fastvideo/train_grpo_sd.py, main()"
SDCFG = f"{REPO} fastvideo/config_sd/dgx.py, hpsv2()"
SDBASE = f"{REPO} fastvideo/config_sd/base.py, get_config()"
FLUX = f"{REPO} fastvideo/train_grpo_flux_lora.py"
FLUXSH = f"{REPO} scripts/finetune/finetune_flux_grpo_8gpus_lora.sh"
FULLSH = f"{REPO} scripts/finetune/finetune_flux_grpo_8gpus.sh"

REFERENCES = {
    "ddim.sampler": Ref("ddim", SD + ": `pipeline_with_logprob(..., eta=config.sample.eta)` (DDIM with log-probs)"),
    "flow.sampler": Ref("flow-dance", FLUX + ", flux_step(): `prev_sample_mean = latents + dsigma * model_output`, "
                        "`+ log_term * dsigma`, `std_dev_t = eta * math.sqrt(delta_t)`",
                        note="the network there sees `int(sigma * 1000) / 1000`, here the exact s: a time input "
                        "off by under 1e-3"),
    "eta": Ref(1.0, SDBASE + ": `sample.eta = 1.0`"),
    "noise_level": Ref(0.3, FLUXSH + ": `--eta 0.3`"),
    "advantage": Ref("group", FLUX + ", train_one_step(): `group_mean = group_rewards.mean()`, `group_std = "
                     "group_rewards.std() + 1e-8` (`--use_group`); the same in train_grpo_sd.py"),
    "advantage_options": Ref({"eps": 1e-8, "unbiased": True}, FLUX + ", train_one_step(): torch's `.std()` (unbiased) "
                             "+ 1e-8 over the num_generations images of a prompt",
                             note="computed on each rank's own samples there; here on the gathered batch, the "
                             "same numbers because every rank holds whole groups"),
    "adv_clip": Ref(5.0, FLUXSH + ": `--adv_clip_max 5.0`; " + SDBASE + ": `train.adv_clip_max = 5`"),
    "objective": Ref("ppo_clip", FLUX + ", train_one_step(): `torch.mean(torch.maximum(unclipped_loss, clipped_loss)) "
                     "/ (args.gradient_accumulation_steps * train_timesteps)`"),
    "objective_form": Ref("ratio", FLUX + ", train_one_step(): `ratio = torch.exp(new_log_probs - "
                          "sample['log_probs'][:,_])`"),
    "clip_range": Ref(1e-4, FLUXSH + ": `--clip_range 1e-4`; " + SDBASE + ": `train.clip_range = 1e-4`"),
    "ddim.timestep_fraction": Ref(1.0, SDBASE + ": `train.timestep_fraction = 1.0`; train_grpo_sd.py "
                                  "`num_train_timesteps = int((config.sample.num_steps-1) * config.train.timestep_fraction)`"),
    "flow.timestep_fraction": Ref(0.6, FLUXSH + ": `--timestep_fraction 0.6`"),
    "step_selection": Ref("random_but_last", FLUX + ", train_one_step(): `'timesteps': timesteps[:, :-1]` drops the "
                          "last step, `perms = torch.stack([torch.randperm(len(samples['timesteps'][0])) for _ in "
                          "range(batch_size)])`, `train_timesteps = int(len(samples['timesteps'][0])*args.timestep_fraction)`; "
                          "train_grpo_sd.py: `[:, :-1]`, per-sample `torch.randperm(num_timesteps)`"),
    "cfg_grad": Ref("both", SD + ": `unet(torch.cat([sample['latents'][:, j]] * 2), ...)`, no detach (FLUX: no "
                    "CFG branch, `--cfg 0.0`, guidance embedded)"),
    "prompt_draw": Ref("per_group", SD + ": `expanded_prompts.extend([p] * config.num_generations)`; FLUX "
                       "`torch.repeat_interleave(tensor, args.num_generations, dim=0)`"),
    "share_initial_noise": Ref(True, FLUXSH + ": `--init_same_noise`; " + SD + ": `global_input_latents = "
                               "torch.randn((1, 4, 64, 64))` 'the same latents for all prompts in a batch'",
                               note="the reference draws one latent per process and epoch, shared by all of that "
                               "process's groups; here one per group (the same within each group, which is what "
                               "the group-relative advantage compares)"),
    "kl_beta": Ref(0.0, "no KL term in train_grpo_sd.py or train_grpo_flux*.py"),
    "kl_form": Ref(None, "no KL term"),
    "ema_decay": Ref(None, FLUXSH + " and " + SDBASE + ": no EMA",
                     note="the full fine-tune script " + FULLSH + " has `--use_ema --ema_decay 0.995`, "
                     "updated once per iteration (`ema_handler.update(transformer)` after train_one_step): "
                     "`ema_decay: 0.995, ema_unit: epoch`"),
    "ema_warmup": Ref(None, "no EMA (FSDP_EMA in train_grpo_flux.py has no warm-up)"),
    "ema_every": Ref(None, "no EMA"),
    "ema_unit": Ref(None, "no EMA (train_grpo_flux.py updates once per iteration: `ema_unit: epoch`)"),
    "proportional": Ref(False, "native credit: the log-ratio is log p_new - log p_old"),
    "ddim.defaults": Ref({"max_grad_norm": 1.0}, SDBASE + ": `train.max_grad_norm = 1.0`"),
    "flow.defaults": Ref({"max_grad_norm": 1.0}, FLUXSH + ": `--max_grad_norm 1.0`",
                         note="the full fine-tune script uses `--max_grad_norm 0.01`"),
}

_SD_PAPER = "config/paper/dancegrpo_sd14_hpsv21.yaml"
_FLUX_PAPER = "config/paper/dancegrpo_flux_hpsv21.yaml"

CONFIG_REFERENCES = {
    _SD_PAPER: {
        "model.path": Ref("CompVis/stable-diffusion-v1-4", f"{REPO} fastvideo/config_sd/dgx.py, compressibility(): "
                          "`config.pretrained.model = 'CompVis/stable-diffusion-v1-4'`"),
        "model.dtype": Ref("bfloat16", SDBASE + ": `config.mixed_precision = 'bf16'`"),
        "model.options.resolution": Ref(512, SD + ": `global_input_latents = torch.randn((1, 4, 64, 64))` (64 x 8 px)"),
        "lora.enabled": Ref(False, SDBASE + ": `config.use_lora = False` (a full fine-tune)"),
        "sampling.steps": Ref(50, SDBASE + ": `sample.num_steps = 50`"),
        "sampling.eta": Ref(1.0, SDBASE + ": `sample.eta = 1.0`"),
        "sampling.guidance_scale": Ref(5.0, SDBASE + ": `sample.guidance_scale = 5.0`"),
        "resources.train.gpus": Ref(8, f"{REPO} scripts/finetune/finetune_sd_grpo.sh: `torchrun --nproc_per_node=8`"),
        "train.prompts_per_epoch": Ref(32, SDCFG + ": `config.sample.batch_size = 4` prompts per GPU x 8 GPUs"),
        "train.group_size": Ref(16, SDCFG + ": `config.num_generations = 16`"),
        "train.train_batch_size": Ref(4, SDCFG + ": `config.train.batch_size = 4`"),
        "train.gradient_accumulation": Ref(8, SDCFG + ": `config.train.gradient_accumulation_steps = 8`"),
        "samples_per_epoch": Ref(512, SDCFG + ": '8 * 16 * 4 = 512 samples per epoch'"),
        "optimizer_steps_per_epoch": Ref(2, SDCFG + ": '(16 * 4) / (4 * 8) = 2 gradient updates per epoch'"),
        "train.epochs": Ref(300, SDCFG + ": `config.num_epochs = 300`"),
        "train.lr": Ref(1e-5, SDBASE + ": `train.learning_rate = 1e-5`"),
        "train.adam_betas": Ref([0.9, 0.999], SDBASE + ": `train.adam_beta1 = 0.9`, `train.adam_beta2 = 0.999`"),
        "train.weight_decay": Ref(1e-4, SDBASE + ": `train.adam_weight_decay = 1e-4`"),
        "train.adam_eps": Ref(1e-8, SDBASE + ": `train.adam_epsilon = 1e-8`"),
        "train.max_grad_norm": Ref(1.0, SDBASE + ": `train.max_grad_norm = 1.0`"),
        "train.inner_epochs": Ref(1, SDBASE + ": `train.num_inner_epochs = 1`"),
    },
    _FLUX_PAPER: {
        "model.path": Ref("black-forest-labs/FLUX.1-dev", FLUXSH + ": `--pretrained_model_name_or_path data/flux` "
                          "(FLUX.1-dev, README)"),
        "model.dtype": Ref("bfloat16", FLUXSH + ": `--mixed_precision bf16`"),
        "model.options.resolution": Ref(720, FLUXSH + ": `--h 720 --w 720`"),
        "model.options.shift": Ref(3.0, FLUXSH + ": `--shift 3`"),
        "model.options.lora_targets": Ref(["to_k", "to_q", "to_v", "to_out.0"], FLUX + ", main(): "
                                          "`target_modules=['to_k', 'to_q', 'to_v', 'to_out.0']`"),
        "lora.enabled": Ref(True, FLUX + ": `LoraConfig(...)`; `get_peft_model`"),
        "lora.rank": Ref(128, FLUXSH + ": `--lora_rank 128`"),
        "lora.alpha": Ref(256, FLUXSH + ": `--lora_alpha 256`"),
        "sampling.steps": Ref(12, FLUXSH + ": `--sampling_steps 12`", note="16 in the full fine-tune script"),
        "sampling.noise_level": Ref(0.3, FLUXSH + ": `--eta 0.3`"),
        "sampling.guidance_scale": Ref(3.5, FLUX + ", grpo_one_step(): `guidance=torch.tensor([3.5])` (`--cfg 0.0`)"),
        "resources.train.gpus": Ref(8, FLUXSH + ": `torchrun --nproc_per_node=8`"),
        "train.prompts_per_epoch": Ref(16, FLUXSH + ": `--train_batch_size 2` prompts per GPU x 8 GPUs"),
        "train.group_size": Ref(12, FLUXSH + ": `--num_generations 12`"),
        "train.train_batch_size": Ref(1, FLUX + ", train_one_step(): one sample per backward (`samples_batched = "
                                      "{k: v.unsqueeze(1)}`), an optimizer step every `gradient_accumulation_steps` samples"),
        "train.gradient_accumulation": Ref(12, FLUXSH + ": `--gradient_accumulation_steps 12`"),
        "samples_per_epoch": Ref(192, "16 prompts x 12 images per iteration"),
        "optimizer_steps_per_epoch": Ref(2, "24 samples per GPU / 12 accumulated"),
        "train.epochs": Ref(300, FLUXSH + ": `--max_train_steps 301`"),
        "train.lr": Ref(3e-4, FLUXSH + ": `--learning_rate 3e-4`", note="1e-5 in the full fine-tune script"),
        "train.weight_decay": Ref(1e-4, FLUXSH + ": `--weight_decay 0.0001`"),
        "train.adam_betas": Ref([0.9, 0.999], FLUX + ", main(): `torch.optim.AdamW(..., betas=(0.9, 0.999), eps=1e-8)`"),
        "train.adam_eps": Ref(1e-8, FLUX + ", main(): `eps=1e-8`"),
        "train.max_grad_norm": Ref(1.0, FLUXSH + ": `--max_grad_norm 1.0`", note="0.01 in the full fine-tune script"),
        "train.timestep_fraction": Ref(0.6, FLUXSH + ": `--timestep_fraction 0.6`"),
        "train.clip_range": Ref(1e-4, FLUXSH + ": `--clip_range 1e-4`"),
    },
}

register_framework(Framework(
    name="dancegrpo",
    description="DanceGRPO: group advantages, shared initial noise, last step never trained, random steps of the rest",
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
    step_selection="random_but_last",
    cfg_grad="both",
    prompt_draw="per_group",
    share_initial_noise=True,
    defaults={"max_grad_norm": 1.0},
    per_family={"ddim": {"timestep_fraction": 1.0}, "flow": {"timestep_fraction": 0.6}},
    references=REFERENCES,
    config_references=CONFIG_REFERENCES,
))
