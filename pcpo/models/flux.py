"""FLUX.1 adapter ("flux"): a rectified-flow transformer on packed VAE latents.

A model is a diffusers ``FluxPipeline`` folder (or hub id, e.g.
``black-forest-labs/FLUX.1-dev``)::

    transformer/     FluxTransformer2DModel (velocity; guidance embedding in FLUX.1-dev)
    vae/             AutoencoderKL (16 latent channels, scaling_factor and shift_factor)
    text_encoder/    CLIPTextModel (only its pooled output is used)
    tokenizer/       CLIPTokenizer
    text_encoder_2/  T5EncoderModel (the sequence conditioning)
    tokenizer_2/     T5TokenizerFast
    scheduler/       FlowMatchEulerDiscreteScheduler config (the time shift)

Choices, all matching diffusers' ``FluxPipeline``:

* **State.**  The rollout state is the *packed* latent, shape
  ``(seq, 4 C)`` per sample with ``seq = (h/2)(w/2)``: every 2x2 patch of the
  ``C x h x w`` VAE latent becomes one token of ``4 C`` features (channel
  major, then the patch row, then the patch column).  The transformer reads and
  writes this layout, so no reshaping happens inside the sampler; only
  :meth:`FluxAdapter.decode` unpacks.  Log-probabilities are reduced over all
  ``seq x 4C`` entries, the same numbers as the unpacked latent.
* **Ids.**  Text ids are zeros ``(L, 3)``; image ids are ``(0, row, col)`` of
  each patch.  They are the same for every sample and are rebuilt from shapes
  in :meth:`FluxAdapter.predict`, so the conditioning dict holds only
  ``encoder_hidden_states`` (T5, ``(B, L, 4096)``) and ``pooled_projections``
  (CLIP pooled, ``(B, 768)``).
* **Time.**  Flow time ``s`` in [0, 1] is passed as ``timestep=s`` (the pipeline
  passes ``t / 1000`` with ``t = 1000 sigma``; the transformer multiplies by
  1000 inside).
* **Guidance.**  FLUX.1-dev is guidance-distilled: the guidance scale is an
  input embedding, and there is no unconditional pass.
  :meth:`FluxAdapter.predict_guided` therefore runs one forward pass with
  ``guidance = scale`` and ignores ``uncond``; :meth:`FluxAdapter.null_cond`
  returns an empty dict so rollouts store nothing for it.  A transformer
  without ``guidance_embeds`` (FLUX.1-schnell) falls back to ordinary
  two-pass CFG with the empty prompt.
* **Shift.**  FluxPipeline shifts its sigmas with the resolution-dependent
  exponential rule ``sigma <- e^mu / (e^mu + (1/sigma - 1))`` with ``mu`` linear
  in the number of image tokens (``base_shift``/``max_shift`` of the scheduler
  config).  That is exactly the rollout's ``s <- k s / (1 + (k - 1) s)`` with
  ``k = exp(mu)``, so :meth:`FluxAdapter.schedule` reports ``shift = exp(mu)``
  for the configured resolution (``mu`` and the rule are in ``extra``).  The
  option ``shift`` (a number) overrides it, e.g. ``shift: 3`` as DanceGRPO's
  FLUX runs use.

Options: those of :mod:`pcpo.models.sd` (``dtype``, ``revision``,
``variant``, ``local_files_only``, ``resolution`` (default 1024 for
FLUX.1-dev), ``guidance_scale`` (default 3.5), ``lora_targets``) plus
``max_sequence_length`` (T5 tokens, default 512) and ``shift``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from pcpo.models import register_model
from pcpo.models.base import Cond, ModelAdapter, ScheduleSpec
from pcpo.models.sd import DiffusersAdapter, lib_of, module_device, tokenize, vae_decode, write_model_index
from pcpo.models.tiny import merged_copy, quiet_hf

#: DanceGRPO's FLUX LoRA targets (XueZeyue/DanceGRPO fastvideo/train_grpo_flux_lora.py, main():
#: `target_modules=["to_k", "to_q", "to_v", "to_out.0"]`): the image-stream projections of the
#: double-stream blocks and the single-stream blocks' to_q/to_k/to_v, not the text-stream add_*
FLUX_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


# ---------------------------------------------------------------------------
# packing and ids (the layout FluxPipeline uses)
# ---------------------------------------------------------------------------

def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/2)(W/2), 4C): one token per 2x2 patch."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even to pack 2x2 patches, got {h}x{w}")
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # B, h/2, w/2, C, 2, 2
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent of ``height x width``."""
    b, n, d = tokens.shape
    if n != (height // 2) * (width // 2) or d % 4:
        raise ValueError(f"cannot unpack {tuple(tokens.shape)} into a {height}x{width} latent")
    x = tokens.reshape(b, height // 2, width // 2, d // 4, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)  # B, C, h/2, 2, w/2, 2
    return x.reshape(b, d // 4, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(seq, 3) position ids ``(0, row, col)`` of the packed tokens of a ``height x width`` latent."""
    rows = torch.arange(height // 2, dtype=dtype, device=device)
    cols = torch.arange(width // 2, dtype=dtype, device=device)
    ids = torch.zeros(height // 2, width // 2, 3, dtype=dtype, device=device)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(-1, 3)


# ---------------------------------------------------------------------------
# time shift
# ---------------------------------------------------------------------------

def dynamic_mu(image_seq_len: int, config) -> float:
    """FLUX's ``mu``: linear in the token count between (base_image_seq_len, base_shift) and (max_*, max_shift)."""
    base_len = float(config.get("base_image_seq_len", 256))
    max_len = float(config.get("max_image_seq_len", 4096))
    base_shift = float(config.get("base_shift", 0.5))
    max_shift = float(config.get("max_shift", 1.15))
    slope = (max_shift - base_shift) / (max_len - base_len)
    return base_shift + slope * (float(image_seq_len) - base_len)


def flow_shift(scheduler, image_seq_len: int, override: float | str | None = None) -> tuple[float, dict[str, Any]]:
    """The grid shift ``k`` of a FlowMatchEulerDiscreteScheduler and how it was obtained.

    With ``use_dynamic_shifting`` (exponential ``time_shift_type``) the pipeline's
    shift ``exp(mu)`` is returned; otherwise the config's ``shift``.  A number
    ``override`` wins.
    """
    cfg = scheduler.config
    if override is not None and override != "auto":
        k = float(override)
        if not k > 0:
            raise ValueError(f"model.options.shift: must be > 0, got {override!r}")
        return k, {"shift_rule": "option"}
    if cfg.get("use_dynamic_shifting", False):
        kind = cfg.get("time_shift_type", "exponential")
        if kind != "exponential":
            raise ValueError(f"scheduler time_shift_type {kind!r} has no equivalent fixed shift; set "
                             "model.options.shift to a number")
        mu = dynamic_mu(image_seq_len, cfg)
        return math.exp(mu), {"shift_rule": "dynamic", "mu": mu, "image_seq_len": int(image_seq_len)}
    return float(cfg.get("shift", 1.0)), {"shift_rule": "config"}


class FluxAdapter(DiffusersAdapter):
    """FLUX.1: velocity transformer on packed 16-channel latents; CLIP pooled + T5 text; distilled guidance."""

    prediction_type = "velocity"
    family = "flow"
    lora_target_modules = list(FLUX_LORA_TARGETS)
    # DanceGRPO's FSDP wraps each block of the transformer's _no_split_modules, the double- and
    # single-stream blocks (fastvideo/utils/fsdp_util.py, get_dit_fsdp_kwargs)
    fsdp_block_classes = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    default_guidance_scale = 3.5
    default_steps = 28
    kind_name = "flux"
    model_name = "FLUX.1"
    _modules = ("transformer", "vae", "text_encoder", "text_encoder_2")
    _denoiser_attr = "transformer"

    def __init__(self, path: str | os.PathLike, max_sequence_length: int = 512, shift: float | str | None = None,
                 **options):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self._init_options(path, **options)
        ld = self.loader
        self.transformer = ld.diffusers_model(FluxTransformer2DModel, "transformer")
        self.vae = ld.diffusers_model(AutoencoderKL, "vae")
        self.text_encoder = ld.transformers_model(CLIPTextModel, "text_encoder")
        self.tokenizer = ld.tokenizer(CLIPTokenizer, "tokenizer")
        self.text_encoder_2 = ld.transformers_model(T5EncoderModel, "text_encoder_2")
        self.tokenizer_2 = ld.tokenizer(T5TokenizerFast, "tokenizer_2")
        self.scheduler = ld.scheduler(FlowMatchEulerDiscreteScheduler)
        self._freeze()
        self.max_sequence_length = int(max_sequence_length)
        if not 0 < self.max_sequence_length <= 512:
            raise ValueError(f"model.options.max_sequence_length: must be in [1, 512], got {max_sequence_length}")
        self.clip_max_length = int(self.tokenizer.model_max_length)
        self.guidance_embeds = bool(self.transformer.config.get("guidance_embeds", False))
        vsf = self.vae_scale_factor
        default_res = 128 * vsf  # FluxPipeline's default_sample_size (128) x the VAE factor
        self.resolution = self._check_resolution(self._resolution_opt or default_res, vsf * 2)
        self.latent_size = self.resolution // vsf
        self.latent_channels = int(self.transformer.config.in_channels) // 4
        self._shift_opt = shift
        self.shift, self._shift_info = flow_shift(self.scheduler, self.seq_len, shift)
        if self._device_opt is not None:
            self.to(self._device_opt)

    @property
    def seq_len(self) -> int:
        return (self.latent_size // 2) ** 2

    # -- text ------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        prompts = list(prompts)
        dev1 = module_device(self.text_encoder)
        ids1 = tokenize(self.tokenizer, prompts, self.clip_max_length).to(dev1)
        pooled = self.text_encoder(ids1, output_hidden_states=False).pooler_output
        dev2 = module_device(self.text_encoder_2)
        ids2 = tokenize(self.tokenizer_2, prompts, self.max_sequence_length).to(dev2)
        seq = self.text_encoder_2(ids2, output_hidden_states=False)[0]
        return {"encoder_hidden_states": seq, "pooled_projections": pooled}

    def null_cond(self, batch_size: int) -> Cond:
        """Empty for guidance-distilled models (no unconditional pass); else the empty prompt."""
        if self.guidance_embeds:
            return {}
        return super().null_cond(batch_size)

    # -- the network -----------------------------------------------------
    def latent_shape(self) -> tuple[int, ...]:
        return (self.seq_len, self.latent_channels * 4)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, guidance: float | None) -> torch.Tensor:
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(B)
        seq = cond["encoder_hidden_states"].to(device=x.device, dtype=x.dtype)
        pooled = cond["pooled_projections"].to(device=x.device, dtype=x.dtype)
        txt_ids = torch.zeros(seq.shape[1], 3, device=x.device, dtype=torch.float32)
        img_ids = latent_image_ids(self.latent_size, self.latent_size, device=x.device)
        g = None
        if self.guidance_embeds:
            g = torch.full((B,), float(self.default_guidance_scale if guidance is None else guidance),
                           device=x.device, dtype=torch.float32)
        return self.transformer(hidden_states=x, timestep=t.to(x.dtype), guidance=g, pooled_projections=pooled,
                                encoder_hidden_states=seq, txt_ids=txt_ids, img_ids=img_ids,
                                return_dict=False)[0]

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Velocity at the model's default embedded guidance (for distilled models)."""
        return self._forward(x, t, cond, None)

    def predict_guided(self, x, t, cond, uncond, guidance_scale, cfg_grad="both"):
        if self.guidance_embeds:
            return self._forward(x, t, cond, guidance_scale)
        return ModelAdapter.predict_guided(self, x, t, cond, uncond or None, guidance_scale, cfg_grad)

    # -- images ----------------------------------------------------------
    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        lat = unpack_latents(x0, self.latent_size, self.latent_size)
        c = self.vae.config
        return vae_decode(self.vae, lat, float(c.scaling_factor), float(c.shift_factor or 0.0),
                          upcast=self._decode_upcast())

    # -- schedule --------------------------------------------------------
    def schedule(self) -> ScheduleSpec:
        return ScheduleSpec(family="flow", shift=float(self.shift),
                            num_train_timesteps=int(self.scheduler.config.num_train_timesteps),
                            extra={"time_input": "s", **self._shift_info})

    # -- persistence -----------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with quiet_hf():
            merged_copy(self.transformer).save_pretrained(out / "transformer")
            self.vae.save_pretrained(out / "vae")
            self.text_encoder.save_pretrained(out / "text_encoder")
            self.tokenizer.save_pretrained(out / "tokenizer")
            self.text_encoder_2.save_pretrained(out / "text_encoder_2")
            self.tokenizer_2.save_pretrained(out / "tokenizer_2")
            self.scheduler.save_pretrained(out / "scheduler")
        write_model_index(out, "FluxPipeline", {
            "transformer": lib_of(self.transformer), "vae": lib_of(self.vae),
            "text_encoder": lib_of(self.text_encoder), "tokenizer": lib_of(self.tokenizer),
            "text_encoder_2": lib_of(self.text_encoder_2), "tokenizer_2": lib_of(self.tokenizer_2),
            "scheduler": lib_of(self.scheduler), "image_encoder": None, "feature_extractor": None,
        })

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"shift": self.shift, **self._shift_info, "guidance_embeds": self.guidance_embeds,
                  "max_sequence_length": self.max_sequence_length})
        return d


@register_model("flux")
def load_flux(path: str, **options) -> FluxAdapter:
    return FluxAdapter(path, **options)


__all__ = ["FluxAdapter", "pack_latents", "unpack_latents", "latent_image_ids", "dynamic_mu", "flow_shift",
           "FLUX_LORA_TARGETS"]
