"""Adapter for the tiny world's base models ("tiny-eps", "tiny-flow").

A model folder (written by :func:`pcpo.tiny.pretrain.pretrain` or
:func:`build_random_tiny`) has diffusers' layout::

    unet/            UNet2DConditionModel, 1 channel, 16x16 pixel space
    text_encoder/    CLIPTextModel
    tokenizer/       PreTrainedTokenizerFast (WordLevel)
    scheduler/       DDIMScheduler (eps) or FlowMatchEulerDiscreteScheduler (flow)
    pcpo_model.json  kind, resolution, default guidance scale and steps

There is no VAE: the state is the image itself in [-1, 1].  The flow model's
network time input is ``1000 * s`` (``pcpo_model.json: flow_time_scale``),
exactly as in pretraining.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from pcpo.models import register_model
from pcpo.models.base import Cond, ModelAdapter, ScheduleSpec

MODEL_JSON = "pcpo_model.json"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@contextlib.contextmanager
def quiet_hf():
    """Silence the progress bars transformers/diffusers print while loading."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    t_on, d_on = tlog.is_progress_bar_enabled(), dlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        if t_on:
            tlog.enable_progress_bar()
        if d_on:
            dlog.enable_progress_bar()


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    val = getattr(torch, aliases.get(name, name), None)
    if not isinstance(val, torch.dtype):
        raise ValueError(f"model.dtype: unknown dtype {dtype!r}")
    return val


def read_model_json(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    f = p / MODEL_JSON
    if not f.is_file():
        raise FileNotFoundError(
            f"model.path: {p} is not a tiny-world model folder (no {MODEL_JSON}); "
            "create one with `pcpo pretrain --model eps|flow --out DIR`"
        )
    return json.loads(f.read_text())


def merged_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with any LoRA (peft) adapters merged into plain weights."""
    m = copy.deepcopy(module)
    try:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return m
    if isinstance(m, PeftModel):
        return m.merge_and_unload()
    if any(isinstance(x, BaseTunerLayer) for x in m.modules()):
        m.fuse_lora()  # diffusers' PeftAdapterMixin (adapters injected with add_adapter)
        m.unload_lora()
    return m


class TinyAdapter(ModelAdapter):
    """The tiny world's epsilon ("eps") or velocity ("flow") UNet with its text encoder."""

    lora_target_modules = list(LORA_TARGETS)

    def __init__(self, path: str | os.PathLike, kind: str | None = None, device=None, dtype=None):
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, PreTrainedTokenizerFast

        self.path = Path(path)
        self.meta = read_model_json(self.path)
        self.kind = self.meta["kind"]
        if kind is not None and kind != self.kind:
            raise ValueError(f"model.kind: tiny-{kind} requested but {self.path} holds a tiny-{self.kind} model")
        if self.kind not in ("eps", "flow"):
            raise ValueError(f"{self.path / MODEL_JSON}: kind must be 'eps' or 'flow', got {self.kind!r}")
        with quiet_hf():
            self.unet = UNet2DConditionModel.from_pretrained(self.path / "unet")
            self.text_encoder = CLIPTextModel.from_pretrained(self.path / "text_encoder")
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(self.path / "tokenizer")
            sched_cls = DDIMScheduler if self.kind == "eps" else FlowMatchEulerDiscreteScheduler
            self.scheduler = sched_cls.from_pretrained(self.path / "scheduler")
        self.unet.eval()
        self.text_encoder.eval()
        self.text_encoder.requires_grad_(False)
        self.prediction_type = "epsilon" if self.kind == "eps" else "velocity"
        self.family = "ddim" if self.kind == "eps" else "flow"
        self.default_guidance_scale = float(self.meta.get("guidance_scale", 1.0))
        self.default_steps = int(self.meta.get("sample_steps", 20))
        self.resolution = int(self.meta.get("resolution", self.unet.config.sample_size))
        # cached: once training wraps the UNet (DistributedDataParallel) it has no .config
        self.in_channels = int(self.unet.config.in_channels)
        self.time_scale = float(self.meta.get("flow_time_scale") or 1000.0)
        self.max_length = int(self.tokenizer.model_max_length)
        if device is not None or dtype is not None:
            self.to(device, _as_dtype(dtype))

    # -- modules ---------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    @denoiser.setter
    def denoiser(self, module: torch.nn.Module) -> None:
        self.unet = module

    def to(self, device=None, dtype=None) -> "TinyAdapter":
        dtype = _as_dtype(dtype)
        self.unet.to(device=device, dtype=dtype)
        self.text_encoder.to(device=device, dtype=dtype)
        return self

    # -- text ------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        dev = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt")["input_ids"].to(dev)
        states = self.text_encoder(input_ids=ids).last_hidden_state
        return {"encoder_hidden_states": states}

    # -- the network -----------------------------------------------------
    def latent_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.resolution, self.resolution)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if self.family == "flow":
            t = t.to(torch.float32) * self.time_scale
        states = cond["encoder_hidden_states"].to(device=x.device, dtype=x.dtype)
        return self.unet(x, t, encoder_hidden_states=states).sample

    # -- images ----------------------------------------------------------
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return ((x0.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # -- schedule --------------------------------------------------------
    def schedule(self) -> ScheduleSpec:
        c = self.scheduler.config
        if self.family == "ddim":
            ac = self.scheduler.alphas_cumprod.to(torch.float64).clone()
            final = 1.0 if c.set_alpha_to_one else float(ac[0])
            return ScheduleSpec(
                family="ddim", alphas_cumprod=ac, final_alpha_cumprod=final,
                num_train_timesteps=int(c.num_train_timesteps), steps_offset=int(c.steps_offset),
                timestep_spacing=str(c.timestep_spacing),
                extra={"beta_schedule": c.beta_schedule, "beta_start": c.beta_start, "beta_end": c.beta_end},
            )
        return ScheduleSpec(family="flow", num_train_timesteps=int(c.num_train_timesteps),
                            shift=float(c.shift), extra={"time_scale": self.time_scale})

    # -- persistence -----------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with quiet_hf():
            merged_copy(getattr(self.unet, "module", self.unet)).save_pretrained(out / "unet")
            self.text_encoder.save_pretrained(out / "text_encoder")
            self.tokenizer.save_pretrained(out / "tokenizer")
            self.scheduler.save_pretrained(out / "scheduler")
        (out / MODEL_JSON).write_text(json.dumps(self.meta, indent=2) + "\n")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"kind": f"tiny-{self.kind}", "path": str(self.path), "resolution": self.resolution,
                  "unet_parameters": sum(p.numel() for p in self.unet.parameters()),
                  "default_guidance_scale": self.default_guidance_scale})
        return d


@register_model("tiny-eps")
def load_tiny_eps(path: str, **options) -> TinyAdapter:
    return TinyAdapter(path, kind="eps", **options)


@register_model("tiny-flow")
def load_tiny_flow(path: str, **options) -> TinyAdapter:
    return TinyAdapter(path, kind="flow", **options)


# sizes of randomly initialised models for tests of other parts
_RANDOM_SIZES = {
    "test": dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_heads=1, norm_num_groups=4,
                 text_hidden_size=8, text_layers=1, text_heads=1),
    "default": {},  # the pretraining architecture, untrained
}


def build_random_tiny(kind: str, out_dir: str | os.PathLike, seed: int = 0, size: str = "test") -> Path:
    """Write a randomly initialised tiny model folder (seconds); returns its path.

    ``size="test"`` is a minute UNet for fast tests; ``size="default"`` has
    the pretraining architecture.  Deterministic for ``seed``.
    """
    from pcpo.tiny.pretrain import (
        KINDS, TinyPretrainConfig, atomic_dir, build_scheduler, build_unet, commit_dir, save_model_folder,
    )
    from pcpo.tiny.text import build_text_encoder, build_tokenizer

    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if size not in _RANDOM_SIZES:
        raise ValueError(f"size: expected one of {sorted(_RANDOM_SIZES)}, got {size!r}")
    cfg = TinyPretrainConfig.from_dict(dict(_RANDOM_SIZES[size], sample_steps=4), where="build_random_tiny")
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(cfg.max_length)
    text_encoder = build_text_encoder(tokenizer, cfg.text_hidden_size, cfg.text_layers, cfg.text_heads)
    unet = build_unet(cfg)
    tmp = atomic_dir(out_dir)
    try:
        with quiet_hf():
            save_model_folder(tmp, kind, unet, text_encoder, tokenizer, build_scheduler(kind, cfg), cfg,
                              extra={"random_init": True, "seed": seed, "size": size})
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_dir(tmp, out_dir)


def write_tiny_clip_tokenizer(folder: str | os.PathLike, max_length: int,
                              merges: list[tuple[str, str]]) -> int:
    """A CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json) with a tiny vocabulary:
    the two special tokens, every byte-level symbol with and without ``</w>``, and one token per
    merge.  For randomly initialised stand-ins of CLIP text encoders; returns the vocabulary size."""
    from tokenizers.pre_tokenizers import ByteLevel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in sorted(ByteLevel.alphabet()):
            vocab[ch + suffix] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": int(max_length), "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return len(vocab)


__all__ = ["TinyAdapter", "build_random_tiny", "merged_copy", "read_model_json", "write_tiny_clip_tokenizer",
           "LORA_TARGETS"]
