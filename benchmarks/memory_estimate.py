"""GPU memory estimate of one training process for each paper configuration.

No weights are needed: every network is built from its real architecture config
(written out below from the public ``config.json`` files of the model cards) on
PyTorch's ``meta`` device, where tensors have shapes and dtypes but no storage.
That gives exact parameter counts, the exact LoRA size (peft is applied to the
meta model with the adapters' target lists), and a count of the activations
autograd saves for the backward pass of one denoiser forward:

* every tensor autograd saves is seen through ``saved_tensors_hooks``; a tensor
  saved twice, or several views of one tensor, count once (the whole base), and
  the model's own weights (kept by linear layers for the input gradient) not at all;
* attention is counted as a fused (flash / memory-efficient) kernel saves it --
  q, k, v, the output and the float32 log-sum-exp -- rather than the
  ``L x L`` probability matrix of the unfused math path;
* gradient checkpointing is modelled as diffusers applies it (one checkpoint per
  block): what is saved outside blocks + the inputs of every block + the largest
  single block's saved tensors (its recomputation during backward).

The settings are read from ``config/paper/*.yaml`` through the trainer's own config
loader, framework resolution and run settings (``load_config``, ``resolve_framework``,
``RunSettings.build``), so the table follows the files: micro-batch, resolution, T5
tokens, LoRA rank or a full fine-tune, CFG, EMA, a KL reference copy, the processes of
``resources.train`` nodes x gpus (DDP, or FSDP under ``train.sharding: fsdp``) and a rollout
hook's copies of the weights.  One row per file and distinct setting: an algorithm and
its ``pcpo-`` variant train the same tensors and share a row.

The trainer backpropagates one (micro-batch, timestep) forward at a time
(gradients accumulate over timesteps), so activations are those of one forward
with the micro-batch -- doubled by classifier-free guidance when the training
guidance scale is not 1 (SD1.x / SD3; the unconditional half goes through the same
graph), never for guidance-distilled FLUX.  Trainable weights are float32 (the
trainer casts them) with float32 gradients and two AdamW moments (16 bytes each),
+4 for an EMA; the frozen weights, text encoders and VAE are in the model dtype; the
reward model in its own dtype (float32 by default).  The CUDA context (~0.5-1 GiB),
allocator fragmentation and the transient peaks of the rollout phase (VAE decode,
reward forward; no autograd) come on top.

``--measure`` (needs a CUDA device): builds each denoiser at full size with random
weights on the GPU and measures the peak of one training step (forward + backward +
AdamW; LoRA or full, as the config trains) with ``torch.cuda.max_memory_allocated`` --
the calibration of the estimate.

Calibration (``--measure`` on one H200, torch 2.11, bf16, random weights, 2026-11-27, with the
settings then assumed: LoRA everywhere, SD3.5-M micro-batch 8 with 256 T5 tokens), activations
of one training forward in GiB, estimate / measured (the measured peak includes transient buffers):
SD1.5 micro-batch 4 with CFG 7.7 / 7.9 (checkpointed 1.8 / 1.45); FLUX.1-dev 720px batch 1
16.7 / 15.3 (1.2 / 1.07); SD3.5-M 512px micro-batch 8 with CFG 47.2 / 47.7 (3.9 / 2.2).  The
checkpointed figure is an upper bound.  Measured peaks of the whole step (weights + LoRA + AdamW +
activations, no text encoders / VAE / reward): 9.6 / 3.6 GiB (SD1.5), 38.0 / 24.2 GiB (FLUX),
52.5 / 8.4 GiB (SD3.5-M), without / with checkpointing.

Run:  python benchmarks/memory_estimate.py [--json] [--measure] [--configs ddpo_sd15_aesthetic_bs256 ...]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GiB = 2**30

# ---------------------------------------------------------------------------
# architecture configs (facts from the model cards' config.json files)
# ---------------------------------------------------------------------------

SD15_UNET = dict(  # stable-diffusion-v1-5/stable-diffusion-v1-5 (and CompVis SD1.4): unet/config.json
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu",
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215,
)
FLUX_VAE = dict(SD15_VAE, latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
SD35_VAE = dict(FLUX_VAE, scaling_factor=1.5305, shift_factor=0.0609)
CLIP_L_TEXT = dict(  # openai/clip-vit-large-patch14 text tower (SD1.x text_encoder, FLUX/SD3 text_encoder)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
CLIP_G_TEXT = dict(  # SD3 text_encoder_2 (OpenCLIP ViT-bigG-14 text tower)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)
T5_XXL = dict(  # google/t5-v1_1-xxl encoder (FLUX text_encoder_2, SD3 text_encoder_3)
    vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
)
FLUX_DEV = dict(  # black-forest-labs/FLUX.1-dev: transformer/config.json
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
SD35_MEDIUM = dict(  # stabilityai/stable-diffusion-3.5-medium: transformer/config.json
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
CLIP_VIT_L14 = dict(  # openai/clip-vit-large-patch14 (aesthetic predictor backbone, CLIPScore)
    text_config=CLIP_L_TEXT,
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, hidden_act="quick_gelu"),
    projection_dim=768,
)
CLIP_VIT_H14 = dict(  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K (HPSv2.1 and PickScore backbones)
    text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
    vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                       image_size=224, patch_size=14, hidden_act="gelu"),
    projection_dim=1024,
)
IMAGEREWARD_PARAMS = 447_000_000  # BLIP ViT-L + BERT-base text encoder + MLP (not rebuilt here)


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class PaperConfig:
    """One training process of a paper setting.  ``micro_batch`` is per process (per GPU)."""

    name: str
    model: str  # sd1 | flux | sd3
    reward: str
    resolution: int
    micro_batch: int
    cfg: bool  # two-pass classifier-free guidance in the training forward
    lora_rank: int | None  # None: full fine-tune (every denoiser weight trained)
    dtype: str = "bfloat16"
    reward_dtype: str = "float32"
    text_tokens: int = 77  # T5 tokens for flux / sd3
    ema: bool = False  # a float32 EMA copy of the trainable weights
    kl_copy: bool = False  # a frozen copy of the denoiser as the KL reference (trainer: full fine-tune or kl_reference copy)
    policy_copies: int = 0  # float32 copies of the trainable weights a rollout hook holds
    processes: int = 1
    sharded: bool = False  # train.sharding: fsdp over ``processes``
    algorithms: tuple[str, ...] = ()
    source: str = ""
    note: str = ""

    @property
    def ddp(self) -> bool:
        """More than one process, unsharded: DDP's gradient buckets hold one more gradient's worth."""
        return self.processes > 1 and not self.sharded


#: float32 copies of the trainable weights each rollout hook keeps while it runs
#: (baselines/diffusion_nft.py NFTSamplingPolicy: ``old`` always, ``_live`` from before_rollout to after_rollout)
HOOK_WEIGHT_COPIES = {"nft_sampling_policy": 2}

#: the adapter class behind each model kind (its family, default guidance and option defaults)
ADAPTERS = {"sd1": ("pcpo.models.sd", "StableDiffusionAdapter"), "flux": ("pcpo.models.flux", "FluxAdapter"),
            "sd3": ("pcpo.models.sd3", "SD3Adapter")}

ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = ROOT / "config" / "paper"


def _settings_of(path: Path) -> list[PaperConfig]:
    """The training process of every algorithm in one paper file, as ``pcpo train`` would set it up
    (config -> framework -> run settings, the code paths of pcpo.trainer.Trainer.__init__)."""
    import yaml

    from pcpo.config import ConfigError, load_config
    from pcpo.launch import world_size
    from pcpo.trainer import RunSettings, resolve_framework

    raw = yaml.safe_load(path.read_text()) or {}
    cfg = load_config(path)
    kind = cfg.model.kind
    if kind not in ("sd1", "flux", "sd3"):
        raise ConfigError(f"{path}: model.kind: the estimate knows sd1, flux and sd3, got {kind!r}")
    mod, name = ADAPTERS[kind]
    cls = getattr(importlib.import_module(mod), name)
    opts = cfg.model.options
    if "resolution" not in opts:
        raise ConfigError(f"{path}: model.options.resolution: set it (the estimate needs the training resolution)")
    tokens = 77
    if kind in ("flux", "sd3"):
        tokens = int(opts.get("max_sequence_length",
                              inspect.signature(cls.__init__).parameters["max_sequence_length"].default))
    world = world_size(raw.get("resources"))
    algs: list[str] = []
    for entry in raw.get("matrix") or []:
        algs += [a for a in entry.get("algorithms", []) if a not in algs]
    if not algs:
        raise ConfigError(f"{path}: matrix: no algorithms listed")
    distilled = kind == "flux" and bool(FLUX_DEV["guidance_embeds"])  # guidance is an input, one pass
    source = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    rows = []
    for alg in algs:
        fw = resolve_framework(cfg, alg, cls.family)
        st = RunSettings.build(cfg, fw, cls.family, float(opts.get("guidance_scale", cls.default_guidance_scale)))
        lora = cfg.lora.enabled
        rows.append(PaperConfig(
            name=path.stem, model=kind, reward=cfg.reward.name, resolution=int(opts["resolution"]),
            micro_batch=cfg.train.train_batch_size, cfg=(not distilled and st.guidance_scale != 1.0),
            lora_rank=cfg.lora.rank if lora else None, dtype=cfg.model.dtype,
            text_tokens=tokens, ema=st.ema_decay is not None,
            kl_copy=st.kl_beta > 0 and (not lora or cfg.train.kl_reference == "copy"),
            policy_copies=HOOK_WEIGHT_COPIES.get(fw.rollout_hook, 0),
            processes=world, sharded=cfg.train.sharding == "fsdp" and world > 1, algorithms=(alg,),
            source=source,
        ))
        if fw.rollout_hook and fw.rollout_hook not in HOOK_WEIGHT_COPIES:
            rows[-1].note = f"rollout hook {fw.rollout_hook!r}: its state is not counted"
    return rows


def paper_configs(directory: Path = PAPER_DIR) -> list[PaperConfig]:
    """One row per paper file and distinct memory setting; algorithms that train the same
    tensors (an algorithm and its pcpo- variant) share a row."""
    out: list[PaperConfig] = []
    for path in sorted(Path(directory).glob("*.yaml")):
        merged: dict[tuple, PaperConfig] = {}
        for r in _settings_of(path):
            key = tuple((k, v) for k, v in asdict(r).items() if k not in ("algorithms", "name"))
            if key in merged:
                merged[key].algorithms += r.algorithms
            else:
                merged[key] = r
        rows = list(merged.values())
        if len(rows) > 1:
            for r in rows:
                r.name = f"{path.stem}:{'+'.join(r.algorithms)}"
        for r in rows:
            what = [", ".join(r.algorithms),
                    f"{r.processes} process{'es' if r.processes > 1 else ''}"
                    + (" FSDP" if r.sharded else " DDP" if r.ddp else ""),
                    f"LoRA r{r.lora_rank}" if r.lora_rank else "full fine-tune",
                    f"{r.resolution}px", f"micro-batch {r.micro_batch}" + (" x2 CFG" if r.cfg else "")]
            if r.model != "sd1":
                what.append(f"{r.text_tokens} T5 tokens")
            what += [w for w, on in (("EMA", r.ema), ("KL reference copy", r.kl_copy)) if on]
            if r.policy_copies:
                what.append(f"{r.policy_copies} sampling-policy copies")
            r.note = "; ".join(what) + (f"; {r.note}" if r.note else "") + f" ({r.source})"
        out += rows
    return out


# ---------------------------------------------------------------------------
# building on the meta device
# ---------------------------------------------------------------------------

def _meta(fn):
    with torch.device("meta"):
        return fn()


def build_denoiser(model: str, device="meta"):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    cls, cfg = {"sd1": (UNet2DConditionModel, SD15_UNET), "flux": (FluxTransformer2DModel, FLUX_DEV),
                "sd3": (SD3Transformer2DModel, SD35_MEDIUM)}[model]
    old = torch.get_default_dtype()
    if str(device) != "meta":
        torch.set_default_dtype(torch.bfloat16)  # build full-size weights directly in bf16 on the GPU
    try:
        with torch.device(device):
            return cls(**cfg)
    finally:
        torch.set_default_dtype(old)


def count(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if (p.requires_grad or not trainable))


def buffer_count(module: torch.nn.Module) -> int:
    """Non-parameter tensors that live with the weights (SD3's 384x384 positional table: 226M values)."""
    return sum(b.numel() for b in module.buffers())


@contextlib.contextmanager
def _quiet():
    from pcpo.models.tiny import quiet_hf

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dv, tv = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        with quiet_hf():
            yield
    finally:
        dlog.set_verbosity(dv)
        tlog.set_verbosity(tv)


def frozen_parts(model: str) -> dict[str, int]:
    """Parameter counts of the non-trained components: VAE and text encoders."""
    from diffusers import AutoencoderKL
    from transformers import (
        CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel,
    )

    if model == "sd1":
        return {"vae": count(_meta(lambda: AutoencoderKL(**SD15_VAE))),
                "text": count(_meta(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))))}
    t5 = count(_meta(lambda: T5EncoderModel(T5Config(**T5_XXL))))
    if model == "flux":
        return {"vae": count(_meta(lambda: AutoencoderKL(**FLUX_VAE))),
                "text": count(_meta(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)))) + t5}
    clip_l = count(_meta(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L_TEXT))))
    clip_g = count(_meta(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_TEXT))))
    return {"vae": count(_meta(lambda: AutoencoderKL(**SD35_VAE))), "text": clip_l + clip_g + t5}


def reward_params(reward: str) -> int:
    from transformers import CLIPConfig, CLIPModel

    if reward == "imagereward":
        return IMAGEREWARD_PARAMS
    cfg = CLIP_VIT_L14 if reward in ("aesthetic", "clipscore") else CLIP_VIT_H14
    n = count(_meta(lambda: CLIPModel(CLIPConfig(**cfg))))
    if reward == "aesthetic":
        n += 768 * 1024 + 1024 + 1024 * 128 + 128 + 128 * 64 + 64 + 64 * 16 + 16 + 16 + 1
    return n


def add_lora(den: torch.nn.Module, model: str, rank: int) -> None:
    from peft import LoraConfig

    from pcpo.models.flux import FLUX_LORA_TARGETS
    from pcpo.models.sd import SD_LORA_TARGETS
    from pcpo.models.sd3 import SD3_LORA_TARGETS

    targets = {"sd1": SD_LORA_TARGETS, "flux": FLUX_LORA_TARGETS, "sd3": SD3_LORA_TARGETS}[model]
    den.requires_grad_(False)
    den.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
    for p in den.parameters():
        if p.requires_grad:
            p.data = p.data.float()


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------

class _FusedAttention(torch.autograd.Function):
    """Stands in for SDPA while counting: saves what a fused attention kernel keeps for backward."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - counting only
        raise RuntimeError("counting-only attention")


def _fused_sdpa(*args, **kw):
    q, k, v = (list(args) + [kw.get("query"), kw.get("key"), kw.get("value")][len(args):])[:3]
    return _FusedAttention.apply(q, k, v)


class ActivationCounter:
    """Bytes autograd saves during a forward, split into 'outside blocks' and per checkpointable block."""

    def __init__(self, module: torch.nn.Module | None = None):
        # the weights autograd keeps for the input gradient are the model's own tensors, not new memory
        self.seen: set[int] = set()
        if module is not None:
            self.seen |= {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while counting
        self.outside = 0
        self.block_inputs = 0
        self._inputs_seen: set[int] = set()
        self.blocks: list[int] = []
        self._local: int | None = None
        self._depth = 0

    def _pack(self, t: torch.Tensor):
        base = t._base if t._base is not None else t  # a view shares its base's storage
        if id(base) not in self.seen:
            self.seen.add(id(base))
            self.keep.append(base)
            n = base.numel() * base.element_size()
            if self._local is None:
                self.outside += n
            else:
                self._local += n
        return t

    def checkpoint_func(self, module, *args):
        """Used as diffusers' gradient_checkpointing_func: runs the block, attributing its saved tensors."""
        if self._depth:
            return module(*args)
        for a in args:  # the inputs a checkpoint keeps; temb, rotary tables etc. are shared by all blocks
            if isinstance(a, torch.Tensor):
                base = a._base if a._base is not None else a
                if id(base) not in self._inputs_seen:
                    self._inputs_seen.add(id(base))
                    self.keep.append(base)
                    self.block_inputs += base.numel() * base.element_size()
        self._local, self._depth = 0, 1
        try:
            return module(*args)
        finally:
            self.blocks.append(self._local)
            self._local, self._depth = None, 0

    @property
    def without_checkpointing(self) -> int:
        return self.outside + sum(self.blocks)

    @property
    def with_checkpointing(self) -> int:
        return self.outside + self.block_inputs + (max(self.blocks) if self.blocks else 0)


def denoiser_inputs(cfg: PaperConfig, device="meta", dtype=torch.bfloat16) -> dict:
    """One training forward's inputs (batch doubled under CFG)."""
    b = cfg.micro_batch * (2 if cfg.cfg else 1)
    res = cfg.resolution
    kw = dict(device=device, dtype=dtype)

    def rnd(*shape):
        return torch.randn(*shape, **kw) if device != "meta" else torch.empty(*shape, **kw)

    if cfg.model == "sd1":
        return dict(sample=rnd(b, 4, res // 8, res // 8), timestep=torch.full((b,), 500, device=device),
                    encoder_hidden_states=rnd(b, 77, 768))
    if cfg.model == "flux":
        h = 2 * (res // 16)
        seq = (h // 2) ** 2
        ids = torch.zeros(seq, 3, device=device)
        return dict(hidden_states=rnd(b, seq, 64), timestep=torch.full((b,), 0.5, device=device, dtype=dtype),
                    guidance=torch.full((b,), 3.5, device=device), pooled_projections=rnd(b, 768),
                    encoder_hidden_states=rnd(b, cfg.text_tokens, 4096),
                    txt_ids=torch.zeros(cfg.text_tokens, 3, device=device), img_ids=ids)
    return dict(hidden_states=rnd(b, 16, res // 8, res // 8), timestep=torch.full((b,), 500.0, device=device),
                encoder_hidden_states=rnd(b, 77 + cfg.text_tokens, 4096), pooled_projections=rnd(b, 2048))


def _output(out):
    return out.sample if hasattr(out, "sample") else out[0]


def count_activations(den: torch.nn.Module, cfg: PaperConfig) -> ActivationCounter:
    c = ActivationCounter(den)
    den.enable_gradient_checkpointing(c.checkpoint_func)
    orig = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(c._pack, lambda t: t):
            _output(den(**denoiser_inputs(cfg, "meta", torch.bfloat16)))
    finally:
        torch.nn.functional.scaled_dot_product_attention = orig
        den.disable_gradient_checkpointing()
    c.keep.clear()
    return c


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------

@dataclass
class Estimate:
    config: str
    model: str
    denoiser_params_m: float
    denoiser_buffers_m: float
    trainable_params_m: float
    weights_gib: float  # frozen weights in the model dtype: denoiser (LoRA runs only) + text encoders + VAE
    train_gib: float  # trainable weights, grads, AdamW moments (float32) + EMA + DDP buckets + hook copies
    ref_gib: float  # the KL reference copy of the denoiser
    reward_gib: float
    act_gib: float
    act_ckpt_gib: float
    total_gib: float
    total_ckpt_gib: float
    micro_batch: int
    forward_batch: int
    note: str


def train_state_bytes(cfg: PaperConfig, n_trainable: int) -> int:
    """Per process: the trainer casts trainable weights to float32 (4 B) and AdamW keeps a float32
    gradient and two moments (12 B); FSDP shards all of that, and the EMA (over the optimizer's
    parameters), over the processes.  DDP's gradient buckets (gradient_as_bucket_view off, torch's
    default) and a rollout hook's copies are whole."""
    shards = cfg.processes if cfg.sharded else 1
    n = n_trainable * (16 + (4 if cfg.ema else 0)) // shards
    return n + n_trainable * (4 * cfg.ddp + 4 * cfg.policy_copies)


def estimate(cfg: PaperConfig) -> Estimate:
    with _quiet():
        den = build_denoiser(cfg.model).to(torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32)
        n_den = count(den)
        n_buf = buffer_count(den)
        if cfg.lora_rank:
            add_lora(den, cfg.model, cfg.lora_rank)
        else:
            den.requires_grad_(True)
        n_train = count(den, trainable=True)
        parts = frozen_parts(cfg.model)
        n_reward = reward_params(cfg.reward)
        act = count_activations(den, cfg)
    wb = DTYPE_BYTES[cfg.dtype]
    frozen_den = n_den if cfg.lora_rank else 0  # a full fine-tune holds the denoiser only as float32 trainables
    weights = (frozen_den + n_buf + parts["vae"] + parts["text"]) * wb
    train = train_state_bytes(cfg, n_train)
    # trainer: copy.deepcopy of the denoiser after the float32 cast and before any sharding -- whole
    ref = ((frozen_den + n_buf) * wb + n_train * 4) if cfg.kl_copy else 0
    reward = n_reward * DTYPE_BYTES[cfg.reward_dtype]
    fixed = weights + train + ref + reward
    return Estimate(
        cfg.name, cfg.model, n_den / 1e6, n_buf / 1e6, n_train / 1e6, weights / GiB, train / GiB, ref / GiB,
        reward / GiB, act.without_checkpointing / GiB, act.with_checkpointing / GiB,
        (fixed + act.without_checkpointing) / GiB, (fixed + act.with_checkpointing) / GiB,
        cfg.micro_batch, cfg.micro_batch * (2 if cfg.cfg else 1), cfg.note,
    )


def format_table(rows: list[Estimate]) -> str:
    head = ["config", "denoiser M (+buffers)", "trained M", "weights", "train state", "KL ref", "reward", "act",
            "act(ckpt)", "total", "total(ckpt)", "mb (fwd)"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            r.config, f"{r.denoiser_params_m:,.0f}" + (f" (+{r.denoiser_buffers_m:,.0f})" if r.denoiser_buffers_m >= 1 else ""),
            f"{r.trainable_params_m:,.2f}", f"{r.weights_gib:.1f}", f"{r.train_gib:.2f}", f"{r.ref_gib:.1f}",
            f"{r.reward_gib:.1f}", f"{r.act_gib:.1f}", f"{r.act_ckpt_gib:.1f}",
            f"{r.total_gib:.1f}", f"{r.total_ckpt_gib:.1f}", f"{r.micro_batch} ({r.forward_batch})"]))
    lines.append("")
    lines.append("GiB per training process unless marked M (millions of parameters). weights: frozen weights in the "
                 "model dtype (the denoiser only under LoRA, + its buffers, text encoders, VAE); train state: float32 "
                 "trainable weights, grads and two AdamW moments, + EMA, DDP gradient buckets and rollout-hook copies "
                 "where the run has them; KL ref: the frozen reference copy; act: autograd-saved activations of one "
                 "training forward (mb = micro-batch; fwd = rows through the network, doubled by CFG); ckpt: with "
                 "per-block gradient checkpointing. CUDA context and rollout-phase peaks not included.")
    for r in rows:
        lines.append(f"- {r.config}: {r.note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# measurement on a GPU (calibration)
# ---------------------------------------------------------------------------

def measure(cfg: PaperConfig, checkpointing: bool) -> dict:
    """Peak GPU memory of one training step (LoRA or full, as the config) of the full-size denoiser with random weights."""
    dev = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with _quiet():
        den = build_denoiser(cfg.model, device=dev).to(torch.bfloat16)
        if cfg.lora_rank:
            add_lora(den, cfg.model, cfg.lora_rank)
        else:  # a full fine-tune: float32 trainable weights, as the trainer casts them
            den.float().requires_grad_(True)
    if checkpointing:
        den.enable_gradient_checkpointing()
    den.train()
    params = [p for p in den.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    base = torch.cuda.memory_allocated()
    inputs = denoiser_inputs(cfg, dev, torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    out = _output(den(**inputs))
    fwd_peak = torch.cuda.max_memory_allocated()
    out.float().pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated()
    res = {"config": cfg.name, "checkpointing": checkpointing, "weights_and_lora_gib": base / GiB,
           "forward_peak_gib": fwd_peak / GiB, "step_peak_gib": peak / GiB,
           "activations_gib": (fwd_peak - base) / GiB}
    del den, opt, params, out, inputs
    torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", help="subset of the names printed (a config/paper file's stem, or "
                   "stem:algorithms where its algorithms differ in memory)")
    p.add_argument("--paper-dir", type=Path, default=PAPER_DIR, help="folder of paper configs (default config/paper)")
    p.add_argument("--micro-batch", type=int, help="override every config's micro-batch")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--measure", action="store_true", help="also measure one training step on the CUDA device")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    every = paper_configs(args.paper_dir)
    unknown = sorted(set(args.configs or ()) - {c.name for c in every})
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)}; known: {', '.join(c.name for c in every)}")
    cfgs = [c for c in every if not args.configs or c.name in args.configs]
    if args.micro_batch:
        cfgs = [PaperConfig(**{**asdict(c), "micro_batch": args.micro_batch}) for c in cfgs]
    rows = [estimate(c) for c in cfgs]
    measured = []
    if args.measure:
        if not torch.cuda.is_available():
            p.error("--measure needs a CUDA device")
        # cuDNN's fused attention backward failed (illegal memory access) on an H200 with torch 2.11 for
        # SD1.5's head sizes; flash / memory-efficient SDPA have the same memory profile
        torch.backends.cuda.enable_cudnn_sdp(False)
        for c in cfgs:
            for ck in (False, True):
                try:
                    measured.append(measure(c, ck))
                except RuntimeError as e:  # report and go on with the other configs
                    measured.append({"config": c.name, "checkpointing": ck, "error": str(e).splitlines()[0]})
                    torch.cuda.empty_cache()
    if args.json:
        print(json.dumps({"estimates": [asdict(r) for r in rows], "measured": measured}, indent=2))
    else:
        print(format_table(rows))
        if measured:
            print("\nmeasured on", torch.cuda.get_device_name(0), "(random weights, one LoRA training step):")
            for m in measured:
                if "error" in m:
                    print(f"- {m['config']} ckpt={m['checkpointing']}: FAILED {m['error']}")
                    continue
                print(f"- {m['config']} ckpt={m['checkpointing']}: weights+LoRA {m['weights_and_lora_gib']:.2f}, "
                      f"activations {m['activations_gib']:.2f}, step peak {m['step_peak_gib']:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
