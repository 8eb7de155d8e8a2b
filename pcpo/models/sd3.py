"""Stable Diffusion 3 / 3.5 adapter ("sd3"): a joint (MMDiT) transformer trained with
rectified flow, on 16-channel VAE latents, with three text encoders.

A model is a diffusers ``StableDiffusion3Pipeline`` folder (or hub id, e.g.
``stabilityai/stable-diffusion-3.5-medium``)::

    transformer/     SD3Transformer2DModel (velocity)
    vae/             AutoencoderKL (16 channels, scaling_factor and shift_factor)
    text_encoder/    CLIPTextModelWithProjection (CLIP-L)
    text_encoder_2/  CLIPTextModelWithProjection (OpenCLIP bigG)
    text_encoder_3/  T5EncoderModel (optional: absent, or ``use_t5: false``, means zeros as in the pipeline)
    tokenizer/, tokenizer_2/ CLIPTokenizer;  tokenizer_3/ T5TokenizerFast
    scheduler/       FlowMatchEulerDiscreteScheduler config (``shift``, 3.0 for SD3.5)

Conditioning, built as ``StableDiffusion3Pipeline.encode_prompt`` does (no
clip skip): each CLIP gives its penultimate hidden states and its projected
pooled embedding; the two hidden-state sequences are concatenated on the
feature axis, zero-padded to the T5 width and stacked *before* the T5
sequence on the token axis -> ``encoder_hidden_states`` ``(B, 77 + L, 4096)``;
the two pooled embeddings concatenated -> ``pooled_projections`` ``(B, 2048)``.

The state is the unpacked latent ``(16, H/8, W/8)`` (the transformer patchifies
inside).  Flow time ``s`` goes to the network as ``timestep = 1000 s``.  CFG is
the standard two-pass form with the empty prompt as negative.  The grid shift
is the scheduler's ``shift`` (or FLUX-style ``exp(mu)`` if the config asks for
dynamic shifting); option ``shift`` overrides it.

Time grid (option ``time_grid``): ``pipeline`` (default) spaces the N steps as
``StableDiffusion3Pipeline`` does, which is what Flow-GRPO samples SD3.5 with:
``linspace(sigma_max, sigma_min, N)`` of the scheduler (1 and 0.003 for SD3.5),
shifted, then a last step to 0 -- so the last step is short (0.009 -> 0 at
shift 3).  ``uniform`` is ``linspace(1, 0, N + 1)`` shifted, DanceGRPO's grid.

Options: those of :mod:`pcpo.models.sd` plus ``max_sequence_length`` (T5
tokens, default 256 as in the pipeline), ``use_t5`` (default true), ``shift``
and ``time_grid``.  Default CFG scale 4.5 (Flow-GRPO's and the SD3.5-M card's value).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pcpo.models import register_model
from pcpo.models.base import Cond, ScheduleSpec
from pcpo.models.flux import flow_shift
from pcpo.models.sd import DiffusersAdapter, lib_of, module_device, tokenize, vae_decode, write_model_index
from pcpo.models.tiny import merged_copy, quiet_hf


#: Flow-GRPO's LoRA targets (yifan123/flow_grpo scripts/train_sd3.py, main(): `target_modules`);
#: "attn.to_q" matches ``transformer_blocks.N.attn.to_q`` but not ``...attn2.to_q``
SD3_LORA_TARGETS = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]


class SD3Adapter(DiffusersAdapter):
    """SD3.x: velocity MMDiT on 16-channel latents, CLIP-L + CLIP-G + T5 text, two-pass CFG."""

    prediction_type = "velocity"
    family = "flow"
    #: the joint attention's image- and text-stream projections, not the dual-attention
    #: blocks' attn2 (Flow-GRPO's `target_modules` in scripts/train_sd3.py)
    lora_target_modules = list(SD3_LORA_TARGETS)
    fsdp_block_classes = ("JointTransformerBlock",)
    default_guidance_scale = 4.5
    default_steps = 40
    kind_name = "sd3"
    model_name = "Stable Diffusion 3.x"
    _modules = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    _denoiser_attr = "transformer"

    def __init__(self, path: str | os.PathLike, max_sequence_length: int = 256, use_t5: bool = True,
                 shift: float | str | None = None, time_grid: str = "pipeline", **options):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self._init_options(path, **options)
        ld = self.loader
        self.transformer = ld.diffusers_model(SD3Transformer2DModel, "transformer")
        self.vae = ld.diffusers_model(AutoencoderKL, "vae")
        self.text_encoder = ld.transformers_model(CLIPTextModelWithProjection, "text_encoder")
        self.text_encoder_2 = ld.transformers_model(CLIPTextModelWithProjection, "text_encoder_2")
        self.tokenizer = ld.tokenizer(CLIPTokenizer, "tokenizer")
        self.tokenizer_2 = ld.tokenizer(CLIPTokenizer, "tokenizer_2")
        self.text_encoder_3 = None
        self.tokenizer_3 = None
        has_t5 = not ld.is_local or (Path(self.path) / "text_encoder_3").is_dir()
        if use_t5 and has_t5:
            self.text_encoder_3 = ld.transformers_model(T5EncoderModel, "text_encoder_3")
            self.tokenizer_3 = ld.tokenizer(T5TokenizerFast, "tokenizer_3")
        self.scheduler = ld.scheduler(FlowMatchEulerDiscreteScheduler)
        self._freeze()
        self.max_sequence_length = int(max_sequence_length)
        if not 0 < self.max_sequence_length <= 512:
            raise ValueError(f"model.options.max_sequence_length: must be in [1, 512], got {max_sequence_length}")
        self.clip_max_length = int(self.tokenizer.model_max_length)
        vsf = self.vae_scale_factor
        patch = int(self.transformer.config.patch_size)
        default_res = int(self.transformer.config.sample_size) * vsf
        self.resolution = self._check_resolution(self._resolution_opt or default_res, vsf * patch)
        self.latent_size = self.resolution // vsf
        # cached: a DDP-wrapped denoiser has no .config
        self.latent_channels = int(self.transformer.config.in_channels)
        self.joint_attention_dim = int(self.transformer.config.joint_attention_dim)
        self.shift, self._shift_info = flow_shift(self.scheduler, (self.latent_size // patch) ** 2, shift)
        self.time_grid, self._flow_span = self._time_grid(time_grid)
        if self._device_opt is not None:
            self.to(self._device_opt)

    # -- text ------------------------------------------------------------
    def _clip(self, encoder, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenize(tokenizer, prompts, self.clip_max_length).to(module_device(encoder))
        out = encoder(ids, output_hidden_states=True)
        return out.hidden_states[-2], out[0]  # penultimate layer, projected pooled embedding

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        prompts = list(prompts)
        h1, p1 = self._clip(self.text_encoder, self.tokenizer, prompts)
        h2, p2 = self._clip(self.text_encoder_2, self.tokenizer_2, prompts)
        h2 = h2.to(h1.device)
        clip_seq = torch.cat([h1, h2.to(h1.dtype)], dim=-1)
        width = self.joint_attention_dim
        if self.text_encoder_3 is not None:
            ids = tokenize(self.tokenizer_3, prompts, self.max_sequence_length).to(module_device(self.text_encoder_3))
            t5 = self.text_encoder_3(ids)[0].to(device=h1.device, dtype=h1.dtype)
        else:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, width, device=h1.device, dtype=h1.dtype)
        clip_seq = torch.nn.functional.pad(clip_seq, (0, t5.shape[-1] - clip_seq.shape[-1]))
        seq = torch.cat([clip_seq, t5], dim=-2)
        pooled = torch.cat([p1, p2.to(device=p1.device, dtype=p1.dtype)], dim=-1)
        return {"encoder_hidden_states": seq, "pooled_projections": pooled}

    # -- the network -----------------------------------------------------
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        seq = cond["encoder_hidden_states"].to(device=x.device, dtype=x.dtype)
        pooled = cond["pooled_projections"].to(device=x.device, dtype=x.dtype)
        timestep = t.to(torch.float32) * 1000.0  # float32 like the pipeline's scheduler timesteps
        return self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=seq,
                                pooled_projections=pooled, return_dict=False)[0]

    # -- images ----------------------------------------------------------
    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        c = self.vae.config
        return vae_decode(self.vae, x0, float(c.scaling_factor), float(c.shift_factor or 0.0),
                          upcast=self._decode_upcast())

    # -- schedule --------------------------------------------------------
    def _time_grid(self, time_grid: str) -> tuple[str, tuple[float, float]]:
        if time_grid == "uniform":
            return "uniform", (1.0, 0.0)
        if time_grid != "pipeline":
            raise ValueError(f"model.options.time_grid: must be 'pipeline' or 'uniform', got {time_grid!r}")
        c = self.scheduler.config
        for flag in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                     "invert_sigmas"):
            if c.get(flag):
                raise ValueError(f"model.options.time_grid: 'pipeline' reproduces the scheduler's shifted linear "
                                 f"sigmas, but its config sets {flag}={c.get(flag)!r}; use time_grid: uniform")
        return "pipeline", (float(self.scheduler.sigma_max), float(self.scheduler.sigma_min))

    def schedule(self) -> ScheduleSpec:
        return ScheduleSpec(family="flow", shift=float(self.shift),
                            num_train_timesteps=int(self.scheduler.config.num_train_timesteps),
                            flow_spacing=self.time_grid, flow_span=self._flow_span,
                            extra={"time_input": "1000*s", "time_grid": self.time_grid, **self._shift_info})

    # -- persistence -----------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with quiet_hf():
            merged_copy(self.transformer).save_pretrained(out / "transformer")
            self.vae.save_pretrained(out / "vae")
            for name in ("text_encoder", "text_encoder_2", "text_encoder_3",
                         "tokenizer", "tokenizer_2", "tokenizer_3", "scheduler"):
                obj = getattr(self, name)
                if obj is not None:
                    obj.save_pretrained(out / name)
        comps: dict[str, Any] = {}
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                     "tokenizer", "tokenizer_2", "tokenizer_3", "scheduler"):
            obj = getattr(self, name)
            comps[name] = lib_of(obj) if obj is not None else None
        comps.update({"image_encoder": None, "feature_extractor": None})
        write_model_index(out, "StableDiffusion3Pipeline", comps)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"shift": self.shift, **self._shift_info, "t5": self.text_encoder_3 is not None,
                  "max_sequence_length": self.max_sequence_length, "time_grid": self.time_grid,
                  "time_span": list(self._flow_span)})
        return d


@register_model("sd3")
def load_sd3(path: str, **options) -> SD3Adapter:
    return SD3Adapter(path, **options)


__all__ = ["SD3Adapter", "SD3_LORA_TARGETS"]
