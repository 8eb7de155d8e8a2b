"""Pretraining of the tiny world's two base models on the real digits.

Both are ``diffusers.UNet2DConditionModel`` in pixel space (1 channel,
16x16) with cross-attention on the states of a small ``CLIPTextModel`` that
is trained jointly with the UNet:

* ``"eps"``: epsilon prediction under a DDPM noise schedule over 1000 steps
  with SD's "scaled_linear" betas (0.00085 -> 0.012).  The saved scheduler is
  a ``DDIMScheduler`` in the SD1.5 convention (``steps_offset=1``,
  ``set_alpha_to_one=False``).
* ``"flow"``: velocity prediction under rectified flow,
  ``x_s = (1 - s) x0 + s noise``, ``v = noise - x0``, with ``s`` drawn
  logit-normally; the network's time input is ``1000 s``.  The saved
  scheduler is a ``FlowMatchEulerDiscreteScheduler`` with ``shift``.

Why scaled_linear and 1500 steps for eps: the 16x16 digits are bilinear
upsamplings of 8x8 scans, so they lie exactly in a 64-dimensional linear
subspace of the 256 pixels, and a deterministic sampler has to remove every
bit of noise outside it.  Deterministic DDIM (eta=0) keeps each sample's
initial noise energy ratio, and the UNet (GroupNorm everywhere, including
before its output conv) under-predicts the noise of samples whose initial
noise energy is atypically high; those samples end with visible leftover
noise.  Fraction of visibly noisy samples at eta=0, guidance 1, 20 steps
(100-200 samples): linear betas (1e-4 -> 0.02) after 1500 steps: ~40%;
scaled_linear after 1000 steps: 14.5%, 1200: 8%, 1500: 2.5-3%.  Stochastic
DDIM (eta=1, what DDPO samples with) is clean for all of them, and so is
the flow model's deterministic sampler after only 300 steps (its Euler
steps do not amplify the error).

The output folder has diffusers' layout (``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) plus ``pcpo_model.json`` (kind, resolution,
default guidance scale and steps) and ``pretrain_log.json`` (config, seed,
losses, wall time).  It is written to a temporary sibling folder and renamed
into place at the end.

Runs are deterministic for a seed on a given machine and thread count: all
randomness (initialisation, data order, captions, noise, times) comes from
``torch.manual_seed(seed)`` and one ``torch.Generator`` seeded from it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pcpo.tiny.data import RESOLUTION, load_split
from pcpo.tiny.prompts import captions
from pcpo.tiny.text import build_text_encoder, build_tokenizer, tokenize

KINDS = ("eps", "flow")
MODEL_JSON = "pcpo_model.json"
FLOW_TIME_SCALE = 1000.0  # the UNet's time input is FLOW_TIME_SCALE * s for the flow model


def _check_keys(cls, d: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            raise ValueError(f"{where}.{k}: unknown option; known: {', '.join(sorted(names))}")


@dataclass
class TinyPretrainConfig:
    """Every knob of base-model pretraining (both kinds; kind-specific ones say so)."""

    # optimisation
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decay from lr to lr * min_lr_ratio
    grad_clip: float = 1.0
    ema_decay: float = 0.995  # 0 disables EMA; the saved weights are the EMA ones
    # conditioning
    prompt_dropout: float = 0.1
    attribute_prob: float = 0.5
    # UNet
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    # cross-attention at the 4x4 level and in the mid block only: attention at 8x8 cost ~35% more
    # time per step for no measurable gain in prompt accuracy
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_heads: int = 2  # diffusers' ``attention_head_dim`` argument is in fact the number of heads
    norm_num_groups: int = 8
    # text encoder (its width is the UNet's cross_attention_dim)
    text_hidden_size: int = 32
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = 12
    # eps: DDPM training schedule
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # flow: time sampling and the sampling-grid shift stored in the scheduler
    flow_time_sampling: str = "logit_normal"  # or "uniform"
    flow_logit_mean: float = 0.0
    flow_logit_std: float = 1.0
    flow_shift: float = 3.0
    # written to pcpo_model.json: 1.0 = no classifier-free guidance, which halves the cost of
    # every rollout and leaves the alignment reward headroom (CFG still works: raise it)
    guidance_scale: float = 1.0
    sample_steps: int = 20
    # runtime
    num_threads: int = 1  # 0: leave torch's default; 1 is fastest on a small shared CPU
    progress: bool = True
    log_every: int = 50

    @classmethod
    def for_kind(cls, kind: str) -> "TinyPretrainConfig":
        """The defaults for one kind of model (they differ only in ``KIND_DEFAULTS``)."""
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        return cls(**KIND_DEFAULTS[kind])

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "pretrain", kind: str | None = None) -> "TinyPretrainConfig":
        """Defaults (of ``kind`` when given) overridden by ``d``; unknown keys raise naming the field."""
        d = dict(d or {})
        _check_keys(cls, d, where)
        if kind is not None:
            if kind not in KINDS:
                raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
            d = {**KIND_DEFAULTS[kind], **d}
        for k in ("block_out_channels", "down_block_types", "up_block_types"):
            if k in d:
                d[k] = tuple(d[k])
        cfg = cls(**d)
        cfg.validate(where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def validate(self, where: str = "pretrain") -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"{where}.block_out_channels: needs as many entries as down_block_types/up_block_types")
        if self.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ValueError(f"{where}.beta_schedule: unknown schedule {self.beta_schedule!r}")
        if self.flow_time_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"{where}.flow_time_sampling: expected 'logit_normal' or 'uniform'")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"{where}.prompt_dropout: must be in [0, 1)")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"{where}.steps/batch_size: must be positive")

    @classmethod
    def smoke(cls, **overrides) -> "TinyPretrainConfig":
        """A minute model that trains in a second or two (tests, smoke runs)."""
        base = dict(
            steps=4, batch_size=8, warmup_steps=1, ema_decay=0.0,
            block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_heads=1, norm_num_groups=4,
            text_hidden_size=8, text_layers=1, text_heads=1, progress=False, log_every=1, sample_steps=4,
        )
        base.update(overrides)
        return cls.from_dict(base, where="pretrain(smoke)")


#: per-kind departures from the dataclass defaults.  The flow model learns
#: much faster; 300 steps leave it a deliberately early checkpoint (about 90%
#: prompt accuracy at guidance 1) so that RL on the alignment reward has
#: room to improve.  The eps model needs its 1500 steps before deterministic
#: DDIM (eta=0) is clean (see above and benchmarks/tiny_base_quality.py).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "eps": {},
    "flow": {"steps": 300, "sample_steps": 16},
}


# --------------------------------------------------------------------------- builders


def build_unet(cfg: TinyPretrainConfig, resolution: int = RESOLUTION):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=resolution,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_hidden_size,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_scheduler(kind: str, cfg: TinyPretrainConfig):
    """The scheduler saved with a model: DDIM (SD1.5 convention) or flow-matching Euler."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if kind == "eps":
        return DDIMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_start=cfg.beta_start, beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
            clip_sample=False, set_alpha_to_one=False, steps_offset=1,
            prediction_type="epsilon", timestep_spacing="leading",
        )
    if kind == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=cfg.flow_shift)
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def ddpm_alphas_cumprod(cfg: TinyPretrainConfig) -> torch.Tensor:
    """The training schedule's cumulative alphas, exactly as the saved DDIM scheduler has them."""
    return build_scheduler("eps", cfg).alphas_cumprod.clone()


def save_model_folder(out_dir: str | os.PathLike, kind: str, unet, text_encoder, tokenizer, scheduler,
                      cfg: TinyPretrainConfig, extra: dict[str, Any] | None = None) -> Path:
    """Write a model folder (diffusers layout + ``pcpo_model.json``) directly to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    meta = {
        "kind": kind,
        "prediction_type": "epsilon" if kind == "eps" else "velocity",
        "resolution": RESOLUTION,
        "channels": 1,
        "guidance_scale": cfg.guidance_scale,
        "sample_steps": cfg.sample_steps,
        "flow_time_scale": FLOW_TIME_SCALE if kind == "flow" else None,
    }
    meta.update(extra or {})
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def atomic_dir(out_dir: str | os.PathLike) -> Path:
    """A fresh temporary sibling of ``out_dir`` (rename it into place with :func:`commit_dir`)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def commit_dir(tmp: Path, out_dir: str | os.PathLike) -> Path:
    """Replace ``out_dir`` by ``tmp`` (an existing ``out_dir`` is removed first)."""
    out = Path(out_dir)
    if out.exists():
        old = out.parent / f"{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- training


class _EMA:
    """Exponential moving average of parameters, with the usual warm-up
    ``decay_n = min(decay, (1 + n) / (10 + n))``."""

    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.n = 0

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def _lr_factor(step: int, cfg: TinyPretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = (step - cfg.warmup_steps) / span
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _noisy_batch(kind: str, x0: torch.Tensor, gen: torch.Generator, cfg: TinyPretrainConfig,
                 alphas_cumprod: torch.Tensor | None):
    """(x_t, network time input, regression target) for a clean batch."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen)
    if kind == "eps":
        t = torch.randint(0, cfg.num_train_timesteps, (b,), generator=gen)
        ab = alphas_cumprod[t].view(b, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise
        return xt, t, noise
    if cfg.flow_time_sampling == "logit_normal":
        s = torch.sigmoid(cfg.flow_logit_mean + cfg.flow_logit_std * torch.randn(b, generator=gen))
    else:
        s = torch.rand(b, generator=gen)
    sv = s.view(b, 1, 1, 1)
    xs = (1.0 - sv) * x0 + sv * noise
    return xs, s * FLOW_TIME_SCALE, noise - x0


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch CPU threads (0: unchanged), restoring the old count after."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(old)


def pretrain(kind: str, out_dir: str | os.PathLike, cfg: TinyPretrainConfig | None = None, seed: int = 0) -> Path:
    """Train the ``kind`` ("eps" or "flow") base model and save it to ``out_dir``.

    ``cfg`` defaults to :meth:`TinyPretrainConfig.for_kind`.  Returns the
    output path.  Deterministic for ``seed`` (same machine and thread count).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    cfg = cfg or TinyPretrainConfig.for_kind(kind)
    cfg.validate()
    with torch_threads(cfg.num_threads):
        return _pretrain(kind, out_dir, cfg, seed)


def _pretrain(kind: str, out_dir: str | os.PathLike, cfg: TinyPretrainConfig, seed: int) -> Path:
    from tqdm.auto import tqdm

    t_start = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    data = load_split("train")
    images, labels = data.images, data.labels
    tokenizer = build_tokenizer(cfg.max_length)
    text_encoder = build_text_encoder(tokenizer, cfg.text_hidden_size, cfg.text_layers, cfg.text_heads)
    unet = build_unet(cfg)
    scheduler = build_scheduler(kind, cfg)
    alphas_cumprod = ddpm_alphas_cumprod(cfg) if kind == "eps" else None
    unet.train()
    text_encoder.train()

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _lr_factor(i, cfg))
    ema = _EMA([unet, text_encoder], cfg.ema_decay) if cfg.ema_decay > 0 else None

    n = images.shape[0]
    order = torch.randperm(n, generator=gen)
    pos = 0
    losses: list[float] = []
    window: list[float] = []
    bar = tqdm(range(cfg.steps), desc=f"pretrain tiny-{kind}", disable=not cfg.progress, dynamic_ncols=True)
    for step in bar:
        if pos + cfg.batch_size > n:
            order = torch.randperm(n, generator=gen)
            pos = 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        idx_list = idx.tolist()
        prompts = captions(labels[idx].tolist(), [data.thickness_word[i] for i in idx_list],
                           [data.slant_word[i] for i in idx_list], gen,
                           attribute_prob=cfg.attribute_prob, dropout=cfg.prompt_dropout)
        ids = tokenize(tokenizer, prompts, cfg.max_length)
        xt, t, target = _noisy_batch(kind, images[idx], gen, cfg, alphas_cumprod)

        states = text_encoder(input_ids=ids).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=states).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update()
        window.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            losses.append(sum(window) / len(window))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            window = []
    bar.close()
    if ema is not None:
        ema.copy_to()
    unet.eval()
    text_encoder.eval()
    wall = time.time() - t_start

    tmp = atomic_dir(out_dir)
    try:
        from pcpo.models.tiny import quiet_hf

        with quiet_hf():
            save_model_folder(tmp, kind, unet, text_encoder, tokenizer, scheduler, cfg)
        log = {"kind": kind, "seed": seed, "config": cfg.to_dict(), "wall_time_s": wall,
               "threads": torch.get_num_threads(), "loss_every": cfg.log_every, "losses": losses,
               "unet_parameters": sum(p.numel() for p in unet.parameters()),
               "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters())}
        (tmp / "pretrain_log.json").write_text(json.dumps(log, indent=2) + "\n")
        return commit_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
