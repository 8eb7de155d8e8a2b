"""Stable Diffusion 1.x adapter ("sd1") and the loading helpers shared by the
full-scale adapters (FLUX, SD3).

A model is a diffusers ``StableDiffusionPipeline`` folder (or hub id)::

    unet/          UNet2DConditionModel (epsilon prediction)
    vae/           AutoencoderKL (4 latent channels, ``scaling_factor``)
    text_encoder/  CLIPTextModel
    tokenizer/     CLIPTokenizer
    scheduler/     any DDPM-family scheduler config; read as a DDIMScheduler, so
                   ``steps_offset`` / ``set_alpha_to_one`` / betas are the folder's

Each component is loaded on its own with ``from_pretrained(path,
subfolder=...)``; nothing else of the pipeline (safety checker, feature
extractor) is read.  A hub id is downloaded into the Hugging Face cache when
it is not there yet (at the revision the data catalogue pins for it, unless
``revision`` is given); with huggingface_hub's offline mode (``HF_HUB_OFFLINE=1``)
or ``local_files_only: true`` only the cache is read.  A model that cannot be
had fails in one line naming it, why (offline, gated, missing) and the command
that fetches it (``pcpo data fetch NAME`` / ``hf download REPO``).

Adapter options (``model.options`` in a config): ``dtype`` (float32,
bfloat16, float16: every module is loaded in it; the VAE decode is upcast to
float32 when the VAE's ``force_upcast`` asks for it and the dtype is float16),
``revision``, ``variant``, ``local_files_only``, ``resolution`` (pixels,
default ``unet.sample_size * vae_scale_factor``), ``guidance_scale`` (default
CFG scale), ``lora_targets`` (override of the LoRA target list),
``cudnn_attention`` (default false: moving a full-scale adapter to CUDA turns
PyTorch's cuDNN attention backend off process-wide, because its backward gave
non-finite gradients / illegal memory accesses on an H200 with torch 2.11;
the flash and memory-efficient kernels take over).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from pcpo.models import register_model
from pcpo.models.base import Cond, ModelAdapter, ScheduleSpec, spec_from_scheduler
from pcpo.models.tiny import _as_dtype, merged_copy, quiet_hf

#: attention projections of diffusers' Attention modules (UNet self/cross attention)
SD_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class ModelLoadError(OSError, ValueError):
    """A component of a full-scale model could not be loaded; the message says which and how to fix it.

    An ``OSError`` (a missing file) that the ``pcpo`` command reports like a
    config error (``user_facing``): one line naming ``model.path``, exit code 2.
    """

    user_facing = True


def default_local_files_only() -> bool:
    """Read only the local cache when huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``); else download."""
    from pcpo.data.download import hf_offline

    return hf_offline()


def _one_line(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


class ComponentLoader:
    """Loads the components of a diffusers pipeline folder or hub repository one by one.

    Wraps every failure in a :class:`ModelLoadError` that names the model, the
    component and the way to provide it.
    """

    def __init__(self, path: str | os.PathLike, *, revision: str | None = None, variant: str | None = None,
                 local_files_only: bool | None = None, dtype: torch.dtype | None = None, model: str = "model"):
        self.path = str(path)
        self.is_local = Path(self.path).is_dir()
        if revision is None and not self.is_local:
            from pcpo.data import hub_revision

            revision = hub_revision(self.path)
        self.revision = revision
        self.variant = variant
        self.local_files_only = default_local_files_only() if local_files_only is None else bool(local_files_only)
        self.dtype = dtype
        self.model = model

    def _fail(self, subfolder: str, cls, err: Exception) -> ModelLoadError:
        where = Path(self.path) / subfolder
        if self.is_local:
            how = (f"the folder {self.path} has no loadable {subfolder}/ ({where} is missing or incomplete); "
                   f"write the full {self.model} pipeline there (e.g. `hf download <repo> "
                   f"--local-dir {self.path}`) or point model.path at a complete copy")
        else:
            from pcpo.data.download import explain_load_failure

            known = explain_load_failure(err, self.path)
            if known is not None:
                how = str(known)
            elif self.local_files_only:
                how = (f"{self.path!r} is not a local folder and its {subfolder}/ is not in the Hugging Face cache; "
                       f"fetch it with `hf download {self.path}` or point model.path at a local copy")
            else:
                how = (f"downloading {self.path!r} ({subfolder}/) failed; check the repository id, revision "
                       f"and access")
        msg = (f"model.path: cannot load {cls.__name__} from {self.path!r} subfolder {subfolder!r}: {how} "
               f"[{type(err).__name__}: {_one_line(err)}]")
        return ModelLoadError(msg)

    def _common(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"local_files_only": self.local_files_only}
        if self.revision is not None:
            kw["revision"] = self.revision
        return kw

    def diffusers_model(self, cls, subfolder: str, dtype: torch.dtype | None = None):
        kw = self._common()
        if self.variant is not None:
            kw["variant"] = self.variant
        dt = dtype or self.dtype
        if dt is not None:
            kw["torch_dtype"] = dt
        try:
            with quiet_hf():
                return cls.from_pretrained(self.path, subfolder=subfolder, **kw)
        except (OSError, ValueError, EnvironmentError) as e:
            raise self._fail(subfolder, cls, e) from e

    def transformers_model(self, cls, subfolder: str, dtype: torch.dtype | None = None):
        kw = self._common()
        if self.variant is not None:
            kw["variant"] = self.variant
        dt = dtype or self.dtype
        if dt is not None:
            kw["dtype"] = dt
        try:
            with quiet_hf():
                return cls.from_pretrained(self.path, subfolder=subfolder, **kw)
        except (OSError, ValueError, EnvironmentError) as e:
            raise self._fail(subfolder, cls, e) from e

    def tokenizer(self, cls, subfolder: str):
        try:
            with quiet_hf():
                return cls.from_pretrained(self.path, subfolder=subfolder, **self._common())
        except (OSError, ValueError, EnvironmentError, TypeError) as e:
            raise self._fail(subfolder, cls, e) from e

    def scheduler(self, cls, subfolder: str = "scheduler"):
        try:
            return cls.from_pretrained(self.path, subfolder=subfolder, **self._common())
        except (OSError, ValueError, EnvironmentError) as e:
            raise self._fail(subfolder, cls, e) from e


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def tokenize(tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """Token ids padded/truncated to ``max_length`` (the pipelines' ``padding="max_length"``)."""
    return tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt")["input_ids"]


def vae_decode(vae, latents: torch.Tensor, scaling: float, shift: float = 0.0, upcast: bool = False) -> torch.Tensor:
    """``vae.decode(latents / scaling + shift)`` mapped from [-1, 1] to [0, 1] float32."""
    dt = torch.float32 if upcast else module_dtype(vae)
    if upcast and module_dtype(vae) != torch.float32:
        vae = vae.to(torch.float32)  # diffusers' force_upcast behaviour, kept for the rest of the run
    z = latents.to(device=module_device(vae), dtype=dt) / scaling + shift
    img = vae.decode(z).sample
    return ((img.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def write_model_index(out: Path, pipeline_class: str, components: dict[str, tuple[str, str] | None]) -> None:
    """A ``model_index.json`` so diffusers' own pipeline class can load the saved folder."""
    import diffusers

    idx: dict[str, Any] = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__}
    for name, lib_cls in components.items():
        idx[name] = list(lib_cls) if lib_cls is not None else [None, None]
    (out / "model_index.json").write_text(json.dumps(idx, indent=2) + "\n")


def lib_of(obj) -> tuple[str, str]:
    mod = type(obj).__module__.split(".")[0]
    return mod, type(obj).__name__


class DiffusersAdapter(ModelAdapter):
    """Shared plumbing of the full-scale adapters: options, device moves, the empty-prompt cache."""

    #: names of the attributes holding the modules moved by :meth:`to`
    _modules: tuple[str, ...] = ()
    #: attribute of the trainable network
    _denoiser_attr: str = "unet"
    #: the model family's name for messages
    model_name: str = "model"

    def _init_options(self, path, dtype=None, revision=None, variant=None, local_files_only=None,
                      resolution=None, guidance_scale=None, lora_targets=None, device=None,
                      cudnn_attention: bool = False):
        self.path = str(path)
        self.cudnn_attention = bool(cudnn_attention)
        self.load_dtype = _as_dtype(dtype)
        self.loader = ComponentLoader(path, revision=revision, variant=variant, local_files_only=local_files_only,
                                      dtype=self.load_dtype, model=self.model_name)
        self._resolution_opt = None if resolution is None else int(resolution)
        if guidance_scale is not None:
            self.default_guidance_scale = float(guidance_scale)
        if lora_targets is not None:
            if isinstance(lora_targets, str) or not all(isinstance(t, str) for t in lora_targets):
                raise ValueError("model.options.lora_targets: expected a list of module-name patterns")
            self.lora_target_modules = list(lora_targets)
        else:
            self.lora_target_modules = list(type(self).lora_target_modules)
        self._null_cache: dict[str, torch.Tensor] | None = None
        self._device_opt = device

    def _freeze(self) -> None:
        for name in self._modules:
            m = getattr(self, name)
            if m is not None:
                m.eval()
                if name != self._denoiser_attr:
                    m.requires_grad_(False)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self._denoiser_attr)

    @denoiser.setter
    def denoiser(self, module: torch.nn.Module) -> None:
        setattr(self, self._denoiser_attr, module)

    def to(self, device=None, dtype=None) -> "DiffusersAdapter":
        dtype = _as_dtype(dtype)
        if device is not None and torch.device(device).type == "cuda" and not self.cudnn_attention:
            # cuDNN's fused attention backward gave inf/NaN LoRA gradients (tiny FLUX) and an illegal memory
            # access (SD1.5 head sizes) on an H200 with torch 2.11; flash / memory-efficient SDPA are fine
            torch.backends.cuda.enable_cudnn_sdp(False)
        for name in self._modules:
            m = getattr(self, name)
            if m is not None:
                m.to(device=device, dtype=dtype)
        self._null_cache = None
        return self

    def null_cond(self, batch_size: int) -> Cond:
        """The empty prompt's conditioning, encoded once and repeated."""
        if self._null_cache is None:
            self._null_cache = self.encode_prompts([""])
        return {k: v.expand(batch_size, *v.shape[1:]).contiguous() for k, v in self._null_cache.items()}

    def _check_resolution(self, res: int, multiple: int) -> int:
        if res % multiple:
            raise ValueError(f"model.options.resolution: {res} is not a multiple of {multiple} "
                             f"(VAE downsampling{' x patch size' if multiple > self.vae_scale_factor else ''})")
        return res

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _decode_upcast(self) -> bool:
        return module_dtype(self.vae) == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"kind": self.kind_name, "path": self.path, "resolution": self.resolution,
                  "default_guidance_scale": self.default_guidance_scale,
                  "denoiser_parameters": sum(p.numel() for p in self.denoiser.parameters()),
                  "lora_targets": list(self.lora_target_modules)})
        return d


class StableDiffusionAdapter(DiffusersAdapter):
    """SD1.x: epsilon-prediction UNet on 4-channel VAE latents, CLIP-L text encoder, CFG."""

    prediction_type = "epsilon"
    family = "ddim"
    lora_target_modules = list(SD_LORA_TARGETS)
    default_guidance_scale = 7.5
    default_steps = 50
    kind_name = "sd1"
    model_name = "Stable Diffusion 1.x"
    _modules = ("unet", "vae", "text_encoder")
    _denoiser_attr = "unet"

    def __init__(self, path: str | os.PathLike, **options):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self._init_options(path, **options)
        ld = self.loader
        self.unet = ld.diffusers_model(UNet2DConditionModel, "unet")
        self.vae = ld.diffusers_model(AutoencoderKL, "vae")
        self.text_encoder = ld.transformers_model(CLIPTextModel, "text_encoder")
        self.tokenizer = ld.tokenizer(CLIPTokenizer, "tokenizer")
        self.scheduler = ld.scheduler(DDIMScheduler)
        pred = self.scheduler.config.get("prediction_type", "epsilon")
        if pred != "epsilon":
            raise ValueError(f"model.path: {self.path} is a {pred!r}-prediction model; the sd1 adapter handles "
                             "epsilon prediction only (SD1.x)")
        self._freeze()
        self.resolution = self._check_resolution(
            self._resolution_opt or int(self.unet.config.sample_size) * self.vae_scale_factor, self.vae_scale_factor)
        self.max_length = int(self.tokenizer.model_max_length)
        self.latent_channels = int(self.unet.config.in_channels)  # cached: a DDP-wrapped denoiser has no .config
        if self._device_opt is not None:
            self.to(self._device_opt)

    # -- text ------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        dev = module_device(self.text_encoder)
        ids = tokenize(self.tokenizer, prompts, self.max_length).to(dev)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = (ids != self.tokenizer.pad_token_id).long()
        states = self.text_encoder(ids, attention_mask=mask)[0]
        return {"encoder_hidden_states": states}

    # -- the network -----------------------------------------------------
    def latent_shape(self) -> tuple[int, ...]:
        h = self.resolution // self.vae_scale_factor
        return (self.latent_channels, h, h)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        states = cond["encoder_hidden_states"].to(device=x.device, dtype=x.dtype)
        return self.unet(x, t, encoder_hidden_states=states).sample

    # -- images ----------------------------------------------------------
    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, x0, float(self.vae.config.scaling_factor), 0.0, upcast=self._decode_upcast())

    # -- schedule --------------------------------------------------------
    def schedule(self) -> ScheduleSpec:
        spec = spec_from_scheduler(self.scheduler)
        c = self.scheduler.config
        spec.extra = {"beta_schedule": c.beta_schedule, "beta_start": c.beta_start, "beta_end": c.beta_end}
        return spec

    # -- persistence -----------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with quiet_hf():
            merged_copy(self.unet).save_pretrained(out / "unet")
            self.vae.save_pretrained(out / "vae")
            self.text_encoder.save_pretrained(out / "text_encoder")
            self.tokenizer.save_pretrained(out / "tokenizer")
            self.scheduler.save_pretrained(out / "scheduler")
        write_model_index(out, "StableDiffusionPipeline", {
            "unet": lib_of(self.unet), "vae": lib_of(self.vae), "text_encoder": lib_of(self.text_encoder),
            "tokenizer": lib_of(self.tokenizer), "scheduler": lib_of(self.scheduler),
            "safety_checker": None, "feature_extractor": None, "image_encoder": None,
        })


@register_model("sd1")
def load_sd1(path: str, **options) -> StableDiffusionAdapter:
    return StableDiffusionAdapter(path, **options)


__all__ = [
    "StableDiffusionAdapter", "DiffusersAdapter", "ComponentLoader", "ModelLoadError", "SD_LORA_TARGETS",
    "default_local_files_only", "tokenize", "vae_decode", "write_model_index",
]
