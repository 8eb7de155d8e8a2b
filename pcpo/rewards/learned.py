"""Learned full-scale rewards: LAION aesthetic, HPSv2.1, PickScore, ImageReward,
CLIPScore, and a weighted combination of any registered rewards.

Every reward loads its weights from a local path, the Hugging Face cache or
the data root; what is missing is downloaded (hub ids through huggingface_hub,
the aesthetic head through ``pcpo data fetch``), except in huggingface_hub's
offline mode (``HF_HUB_OFFLINE=1``) or with ``local_files_only``.  When the
weights cannot be had the factory raises :class:`RewardWeightsError`, whose
one-line message names the missing weights (hub id or file), why, the command
that fetches them, the option that takes a path and the environment variable
that can hold it.  Options common to all: ``device`` (default ``cuda`` when available,
else ``cpu``), ``dtype`` (``float32`` default), ``batch_size`` (images per
forward pass, default 32), ``local_files_only``.

Images arrive as float tensors in [0, 1] ``(B, C, H, W)``; they are quantised
to uint8 (rounding) and handed to each model's *own* preprocessing -- the
transformers ``CLIPProcessor`` (resize, centre crop, normalise) or open_clip's
validation transform -- exactly as the reference scorers feed their models
decoded PIL/uint8 images.  Grey images are repeated to RGB.

=============  =======================================================================================
name           score
=============  =======================================================================================
aesthetic      LAION improved aesthetic predictor: MLP head on the L2-normalised CLIP ViT-L/14 image
               embedding (``clip``: ``openai/clip-vit-large-patch14``; ``head``: the
               ``sac+logos+ava1-l14-linearMSE.pth`` file), as in DDPO.  Roughly 1..10.
hpsv21         HPSv2.1: open_clip ViT-H-14 with the ``HPS_v2.1_compressed.pt`` checkpoint (``xswu/HPSv2``);
               the score is the cosine of the normalised image and text embeddings (no logit scale), as
               the ``hpsv2`` package computes it.  Roughly 0.2..0.4.
pickscore      PickScore: transformers ``CLIPModel`` ``yuvalkirstain/PickScore_v1`` with the processor of
               ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; ``logit_scale.exp() * cos(image, text)`` (about
               20..23); option ``scale`` divides it (Flow-GRPO uses 26).
imagereward    ImageReward: BLIP (ViT-L/16 + BERT cross-attending to it) and an MLP on the [CLS] state,
               standardised by the package's mean/std; built on transformers' BLIP classes and loaded from
               the original ``ImageReward.pt`` + ``med_config.json`` (``THUDM/ImageReward``) with BERT's
               ``bert-base-uncased`` tokenizer.  (The ``image-reward`` package itself does not import
               under transformers 5.)  Roughly -2..2.
clipscore      CLIPScore (Hessel et al. 2021): ``w * max(cos(image, text), 0)`` with a transformers
               ``CLIPModel`` (default ``openai/clip-vit-large-patch14``).  ``w = 100`` by default (the
               torchmetrics convention, range 0..100); ``w: 2.5`` gives the paper's CLIP-S.
combined       ``sum_k weight_k * reward_k`` over ``components: {name: weight}``, each built with
               ``options: {name: {...}}``; the info holds every component's rewards.
=============  =======================================================================================
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from pcpo.rewards import get_reward, register_reward

# default weights and the environment variables that may point at them
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HPS_REPO, HPS_FILE, HPS_ARCH = "xswu/HPSv2", "HPS_v2.1_compressed.pt", "ViT-H-14"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
IMAGEREWARD_REPO, IMAGEREWARD_FILE, IMAGEREWARD_MED = "THUDM/ImageReward", "ImageReward.pt", "med_config.json"
CLIPSCORE_MODEL = "openai/clip-vit-large-patch14"

ENV = {
    "aesthetic_clip": "PCPO_AESTHETIC_CLIP", "aesthetic_head": "PCPO_AESTHETIC_HEAD",
    "hps": "PCPO_HPS_CHECKPOINT",
    "pickscore_model": "PCPO_PICKSCORE_MODEL", "pickscore_processor": "PCPO_PICKSCORE_PROCESSOR",
    "imagereward": "PCPO_IMAGEREWARD_CHECKPOINT", "imagereward_med": "PCPO_IMAGEREWARD_MED_CONFIG",
    "imagereward_tokenizer": "PCPO_IMAGEREWARD_TOKENIZER",
    "clipscore": "PCPO_CLIPSCORE_MODEL",
}


class RewardWeightsError(FileNotFoundError, ValueError):
    """A learned reward's weights are not available offline; the message names them and how to provide them."""

    user_facing = True


class RewardUnavailableError(ValueError):
    """A learned reward's reference package cannot run in this environment."""

    user_facing = True


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _local_only(local_files_only: bool | None) -> bool:
    from pcpo.models.sd import default_local_files_only

    return default_local_files_only() if local_files_only is None else bool(local_files_only)


def _pick(option: str | None, env: str, default: str | None) -> str | None:
    if option is not None:
        return str(option)
    return os.environ.get(env) or default


def _device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    from pcpo.models.tiny import _as_dtype

    return _as_dtype(dtype or "float32")


def _missing(reward: str, what: str, source: str, option: str, env: str, err: Exception | None = None,
             extra: str = "") -> RewardWeightsError:
    msg = (f"reward {reward}: the {what} is not available ({source}); pass a local path as "
           f"reward.options.{option} or set {env}{extra}")
    if err is not None:
        text = " ".join(str(err).split())
        msg += f" [{type(err).__name__}: {text[:300]}{' ...' if len(text) > 300 else ''}]"
    return RewardWeightsError(msg)


def _hub_reason(err: Exception, repo: str, filename: str | None = None) -> str | None:
    """The one-line reason (offline, gated, missing; with the fetch command) for a hub failure on ``repo``."""
    from pcpo.data.download import explain_load_failure

    known = explain_load_failure(err, repo, filename=filename)
    return None if known is None else str(known)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] -> (B, 3, H, W) uint8 on the CPU (grey repeated to RGB)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (B, C, H, W) with C in {{1, 3}}, got shape {tuple(images.shape)}")
    x = (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def _features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _load_hf(cls, name: str, reward: str, what: str, option: str, env: str, local_only: bool, **kw):
    from pcpo.models.tiny import quiet_hf

    try:
        with quiet_hf():
            return cls.from_pretrained(name, local_files_only=local_only, **kw)
    except (OSError, ValueError) as e:
        source = (None if Path(name).exists() else _hub_reason(e, name)) or (
            f"{name!r} is neither a local folder nor in the Hugging Face cache" if local_only else
            f"loading {name!r} failed")
        raise _missing(reward, what, source, option, env, e) from e


class _ClipScorer:
    """A transformers CLIPModel with its CLIPProcessor, batched image and text embeddings."""

    def __init__(self, model: str, processor: str | None, reward: str, model_option: str, model_env: str,
                 processor_option: str | None = None, processor_env: str | None = None,
                 device=None, dtype=None, local_files_only=None, batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor

        local = _local_only(local_files_only)
        self.device, self.dtype = _device(device), _dtype(dtype)
        self.batch_size = int(batch_size)
        self.model = _load_hf(CLIPModel, model, reward, f"CLIP model {model!r}", model_option, model_env, local,
                              dtype=self.dtype).to(self.device).eval().requires_grad_(False)
        proc_name = processor or model
        self.processor = _load_hf(CLIPProcessor, proc_name, reward, f"CLIP processor {proc_name!r}",
                                  processor_option or model_option, processor_env or model_env, local)
        self.max_length = int(getattr(self.processor.tokenizer, "model_max_length", 77) or 77)
        if self.max_length > 10_000:  # tokenizers without a limit report a huge number
            self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        u8 = to_uint8(images)
        out = []
        for sl in _chunks(u8.shape[0], self.batch_size):
            px = self.processor(images=list(u8[sl]), return_tensors="pt")["pixel_values"]
            f = _features(self.model.get_image_features(pixel_values=px.to(self.device, self.dtype)))
            out.append(f.float())
        return torch.cat(out)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for sl in _chunks(len(prompts), self.batch_size):
            tok = self.processor(text=list(prompts[sl]), padding="max_length", max_length=self.max_length,
                                 truncation=True, return_tensors="pt")
            f = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                             attention_mask=tok["attention_mask"].to(self.device))
            out.append(_features(f).float())
        return torch.cat(out)


def _check_prompts(prompts, n: int, reward: str) -> list[str]:
    if prompts is None or len(prompts) != n:
        raise ValueError(f"reward {reward}: needs one prompt per image ({n} images, "
                         f"{'no' if prompts is None else len(prompts)} prompts)")
    return [str(p) for p in prompts]


# ---------------------------------------------------------------------------
# aesthetic
# ---------------------------------------------------------------------------

class AestheticHead(torch.nn.Module):
    """The LAION improved-aesthetic-predictor MLP (its ``layers.{0,2,4,6,7}`` state-dict names).

    Dropout layers sit between the first linears, as in the original; they
    are inactive in eval mode.
    """

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embed: torch.Tensor) -> torch.Tensor:
        return self.layers(embed)


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch (.pth/.pt/.bin) file."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # older checkpoints pickle more than tensors; the user supplied this file
        sd = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def load_aesthetic_head(path: str | os.PathLike) -> AestheticHead:
    sd = load_state_file(path)
    key = "layers.0.weight"
    if key not in sd:
        raise ValueError(f"reward aesthetic: {path} is not an aesthetic-predictor head (no {key!r}; "
                         f"keys: {sorted(sd)[:6]})")
    head = AestheticHead(int(sd[key].shape[1]))
    head.load_state_dict(sd)
    return head.eval().requires_grad_(False)


@register_reward("aesthetic")
def aesthetic(clip: str | None = None, head: str | None = None, device=None, dtype=None,
              local_files_only: bool | None = None, batch_size: int = 32):
    """LAION aesthetic score of each image (DDPO's aesthetic reward)."""
    head_path = _pick(head, ENV["aesthetic_head"], None)
    how = ""
    if head_path is None:  # the data root's copy, fetched now when missing (pcpo data fetch)
        from pcpo.data import DataError, local_file

        try:
            head_path, entry = local_file(AESTHETIC_HEAD_FILE, fetch_missing=not _local_only(local_files_only))
            how = (f" (fetch it with `pcpo data fetch {entry.name}`)" if entry is not None else
                   " (no entry of the data catalogue provides it)")
        except DataError as e:
            how = f" ({e})"
    if head_path is None or not Path(head_path).is_file():
        raise RewardWeightsError(
            f"reward aesthetic: the MLP head {AESTHETIC_HEAD_FILE} (LAION improved-aesthetic-predictor, also "
            f"shipped in ddpo-pytorch's assets) is missing{f' at {head_path!r}' if head_path else ''}{how}; pass "
            f"its local path as reward.options.head or set {ENV['aesthetic_head']}")
    scorer = _ClipScorer(_pick(clip, ENV["aesthetic_clip"], AESTHETIC_CLIP), None, "aesthetic", "clip",
                         ENV["aesthetic_clip"], device=device, dtype=dtype, local_files_only=local_files_only,
                         batch_size=batch_size)
    mlp = load_aesthetic_head(head_path).to(scorer.device)
    width = int(scorer.model.config.projection_dim)
    if mlp.layers[0].in_features != width:
        raise ValueError(f"reward aesthetic: the head expects {mlp.layers[0].in_features}-dim embeddings but the "
                         f"CLIP model gives {width}")

    @torch.no_grad()
    def fn(images, prompts=None, metadata=None):
        emb = _normalize(scorer.image_embeds(images)).to(scorer.device)
        r = mlp(emb).squeeze(-1).float().cpu()
        return r, {"aesthetic": r}

    return fn


# ---------------------------------------------------------------------------
# HPSv2.1 (open_clip)
# ---------------------------------------------------------------------------

def _hub_file(reward: str, path: str | None, env: str, repo: str, fname: str, option: str, label: str,
              local_only: bool) -> str:
    """A weights file: ``path`` (the option, else ``env``) when given, else ``fname`` of ``repo`` from the
    Hugging Face cache; a missing one raises :class:`RewardWeightsError` naming ``option`` and ``env``."""
    path = _pick(path, env, None)
    if path is not None:
        if not Path(path).is_file():
            raise _missing(reward, f"{label} {path!r}", "no such file", option, env)
        return str(path)
    try:
        from huggingface_hub import hf_hub_download

        from pcpo.data.download import hf_endpoint

        return hf_hub_download(repo, fname, local_files_only=local_only, endpoint=hf_endpoint())
    except Exception as e:  # noqa: BLE001 - every hub failure means the same thing here
        source = _hub_reason(e, repo, fname) or ("not in the Hugging Face cache" if local_only else "download failed")
        raise _missing(reward, f"{label} {fname} of {repo}", source, option, env, e) from e


def _resolve_hps_checkpoint(checkpoint: str | None, local_only: bool) -> str:
    return _hub_file("hpsv21", checkpoint, ENV["hps"], HPS_REPO, HPS_FILE, "checkpoint", "checkpoint", local_only)


@register_reward("hpsv21")
def hpsv21(checkpoint: str | None = None, model_name: str = HPS_ARCH, device=None, dtype=None,
           local_files_only: bool | None = None, batch_size: int = 32):
    """Human Preference Score v2.1 of each (image, prompt) pair."""
    try:
        import open_clip
    except ImportError as e:
        raise RewardUnavailableError(
            "reward hpsv21: needs the open_clip_torch package (pip install open_clip_torch)") from e
    from PIL import Image

    ckpt = _resolve_hps_checkpoint(checkpoint, _local_only(local_files_only))
    dev, dt = _device(device), _dtype(dtype)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, device="cpu")
    missing, unexpected = model.load_state_dict(load_state_file(ckpt), strict=False)
    if missing:
        raise ValueError(f"reward hpsv21: {ckpt} does not fit open_clip {model_name} (missing {missing[:4]} ...)")
    model = model.to(dev, dt).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    bs = int(batch_size)

    @torch.no_grad()
    def fn(images, prompts, metadata=None):
        u8 = to_uint8(images)
        prompts = _check_prompts(prompts, u8.shape[0], "hpsv21")
        scores = []
        for sl in _chunks(u8.shape[0], bs):
            pil = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in u8[sl]]
            px = torch.stack([preprocess(im) for im in pil]).to(dev, dt)
            txt = tokenizer(prompts[sl]).to(dev)
            img_f = _normalize(model.encode_image(px).float())
            txt_f = _normalize(model.encode_text(txt).float())
            scores.append((img_f * txt_f).sum(-1).cpu())
        r = torch.cat(scores).float()
        return r, {"hpsv21": r}

    return fn


# ---------------------------------------------------------------------------
# PickScore, CLIPScore
# ---------------------------------------------------------------------------

@register_reward("pickscore")
def pickscore(model: str | None = None, processor: str | None = None, scale: float = 1.0, device=None,
              dtype=None, local_files_only: bool | None = None, batch_size: int = 32):
    """PickScore ``logit_scale.exp() * cos(image, text)``, divided by ``scale``."""
    scorer = _ClipScorer(_pick(model, ENV["pickscore_model"], PICKSCORE_MODEL),
                         _pick(processor, ENV["pickscore_processor"], PICKSCORE_PROCESSOR),
                         "pickscore", "model", ENV["pickscore_model"], "processor", ENV["pickscore_processor"],
                         device=device, dtype=dtype, local_files_only=local_files_only, batch_size=batch_size)
    logit_scale = float(scorer.model.logit_scale.exp())
    scale = float(scale)

    def fn(images, prompts, metadata=None):
        prompts = _check_prompts(prompts, images.shape[0], "pickscore")
        cos = (_normalize(scorer.image_embeds(images)) * _normalize(scorer.text_embeds(prompts))).sum(-1)
        r = (logit_scale * cos / scale).float().cpu()
        return r, {"pickscore": r}

    return fn


@register_reward("clipscore")
def clipscore(model: str | None = None, w: float = 100.0, device=None, dtype=None,
              local_files_only: bool | None = None, batch_size: int = 32):
    """CLIPScore ``w * max(cos(image, text), 0)``; ``w = 100`` (torchmetrics) or 2.5 (the paper's CLIP-S)."""
    scorer = _ClipScorer(_pick(model, ENV["clipscore"], CLIPSCORE_MODEL), None, "clipscore", "model",
                         ENV["clipscore"], device=device, dtype=dtype, local_files_only=local_files_only,
                         batch_size=batch_size)
    w = float(w)

    def fn(images, prompts, metadata=None):
        prompts = _check_prompts(prompts, images.shape[0], "clipscore")
        cos = (_normalize(scorer.image_embeds(images)) * _normalize(scorer.text_embeds(prompts))).sum(-1)
        r = (w * cos.clamp_min(0.0)).float().cpu()
        return r, {"clipscore": r, "clip_cosine": cos.float().cpu()}

    return fn


# ---------------------------------------------------------------------------
# ImageReward
# ---------------------------------------------------------------------------
# ImageReward (Xu et al. 2023) is BLIP: a ViT image encoder whose output tokens a BERT text
# encoder cross-attends to; the [CLS] state of the text goes through a 5-linear MLP (the
# aesthetic head's shape, 768 wide) and is standardised with the training set's mean/std.
# The `image-reward` package cannot be imported next to transformers 5, so the same network is
# built here from transformers' BLIP classes (BlipVisionModel, BlipTextModel: ports of BLIP's
# vit.py and med.py) and loaded from the original ImageReward.pt by renaming its keys.

IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072
IMAGEREWARD_TOKENIZER = "bert-base-uncased"
IMAGEREWARD_MAX_TOKENS = 35
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

_VIT_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
_VIT_BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
              "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def imagereward_key(key: str) -> tuple[str, str] | None:
    """Where a key of the original ``ImageReward.pt`` goes: ``(part, name)`` with part ``vision``
    (a ``BlipVisionModel`` key), ``text`` (a ``BlipTextModel`` key) or ``head``; None for the
    parts the score does not use (BLIP's projections and heads)."""
    if key.startswith("mlp."):
        return "head", key[len("mlp."):]
    if key.startswith("blip.text_encoder."):
        return "text", key[len("blip.text_encoder."):]
    if key.startswith("blip.visual_encoder."):
        k = key[len("blip.visual_encoder."):]
        if k in _VIT_TOP:
            return "vision", _VIT_TOP[k]
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            mod, _, leaf = rest.rpartition(".")
            if mod in _VIT_BLOCK:
                return "vision", f"encoder.layers.{i}.{_VIT_BLOCK[mod]}.{leaf}"
        raise ValueError(f"reward imagereward: unexpected image-encoder key {key!r} in the checkpoint")
    return None


def build_imagereward(state: dict[str, torch.Tensor], med_config: dict, vision_heads: int | None = None):
    """(vision, text, head) modules holding an ImageReward checkpoint's weights.

    The vision transformer's width, depth, MLP width, patch and image size come from the
    weights; its head count is ``width // 64`` (ViT-B and ViT-L) unless ``vision_heads`` is
    given.  The text encoder is ``med_config`` (BLIP's BERT config) with its cross-attention
    width set to the vision width, as BLIP does.
    """
    from transformers import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "text": {}, "head": {}}
    for k, v in state.items():
        where = imagereward_key(k)
        if where is not None:
            parts[where[0]][where[1]] = v
    vis = parts["vision"]
    need = ("embeddings.class_embedding", "embeddings.patch_embedding.weight", "encoder.layers.0.mlp.fc1.weight")
    if any(n not in vis for n in need) or not parts["text"] or "layers.0.weight" not in parts["head"]:
        raise ValueError("reward imagereward: the checkpoint is not an ImageReward state dict (expected keys "
                         "blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*; got "
                         f"{sorted(state)[:4]} ...)")
    width = int(vis["embeddings.class_embedding"].shape[-1])
    patch = int(vis["embeddings.patch_embedding.weight"].shape[-1])
    grid = round((int(vis["embeddings.position_embedding"].shape[1]) - 1) ** 0.5)
    depth = 1 + max(int(k.split(".")[2]) for k in vis if k.startswith("encoder.layers."))
    heads = int(vision_heads or width // 64)
    if heads < 1 or width % heads:
        raise ValueError(f"reward imagereward: cannot infer the image encoder's head count for width {width}; "
                         "pass reward.options.vision_heads")
    vcfg = BlipVisionConfig(hidden_size=width, intermediate_size=int(vis["encoder.layers.0.mlp.fc1.weight"].shape[0]),
                            num_hidden_layers=depth, num_attention_heads=heads,
                            image_size=grid * patch, patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu")
    mc = dict(med_config)
    tcfg = BlipTextConfig(
        vocab_size=int(mc.get("vocab_size", 30524)), hidden_size=int(mc.get("hidden_size", 768)),
        encoder_hidden_size=width, intermediate_size=int(mc.get("intermediate_size", 3072)),
        num_hidden_layers=int(mc.get("num_hidden_layers", 12)),
        num_attention_heads=int(mc.get("num_attention_heads", 12)),
        max_position_embeddings=int(mc.get("max_position_embeddings", 512)),
        hidden_act=str(mc.get("hidden_act", "gelu")), layer_norm_eps=float(mc.get("layer_norm_eps", 1e-12)),
        is_decoder=True,  # builds the cross-attention layers; the forward runs bidirectionally
        pad_token_id=int(mc.get("pad_token_id", 0)), bos_token_id=None, eos_token_id=None, sep_token_id=None,
    )
    vision = BlipVisionModel(vcfg)
    text = BlipTextModel(tcfg, add_pooling_layer=False)
    head = AestheticHead(int(parts["head"]["layers.0.weight"].shape[1]))
    for name, mod, part in (("image encoder", vision, "vision"), ("text encoder", text, "text"),
                            ("MLP head", head, "head")):
        missing, unexpected = mod.load_state_dict(parts[part], strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        unexpected = [u for u in unexpected if not u.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"reward imagereward: the checkpoint's {name} does not fit (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
    return vision.eval().requires_grad_(False), text.eval().requires_grad_(False), head.eval().requires_grad_(False)


def imagereward_pixels(u8: torch.Tensor, size: int) -> torch.Tensor:
    """ImageReward's preprocessing of uint8 (B, 3, H, W): bicubic resize of the short side to
    ``size`` (PIL), centre crop, [0, 1], CLIP mean/std normalisation."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)])
    return torch.stack([tf(Image.fromarray(u8[i].permute(1, 2, 0).numpy())) for i in range(u8.shape[0])])


@register_reward("imagereward")
def imagereward(checkpoint: str | None = None, med_config: str | None = None, tokenizer: str | None = None,
                device=None, dtype=None, local_files_only: bool | None = None, batch_size: int = 32,
                vision_heads: int | None = None):
    """ImageReward score of each (image, prompt) pair, standardised as the package does (about -2..2)."""
    import json

    from transformers import BertTokenizer

    local_only = _local_only(local_files_only)
    ckpt = _hub_file("imagereward", checkpoint, ENV["imagereward"], IMAGEREWARD_REPO, IMAGEREWARD_FILE, "checkpoint",
                     "file", local_only)
    med = _hub_file("imagereward", med_config, ENV["imagereward_med"], IMAGEREWARD_REPO, IMAGEREWARD_MED,
                    "med_config", "file", local_only)
    tok_name = _pick(tokenizer, ENV["imagereward_tokenizer"], IMAGEREWARD_TOKENIZER)
    tok = _load_hf(BertTokenizer, tok_name, "imagereward", f"BERT tokenizer {tok_name!r}", "tokenizer",
                   ENV["imagereward_tokenizer"], local_only)
    if len(tok.get_vocab()) <= len(set(tok.all_special_tokens)):
        # transformers 5 builds an empty tokenizer instead of failing when the files are absent
        raise _missing("imagereward", f"BERT tokenizer {tok_name!r}", "no vocab.txt found locally or in the "
                       "Hugging Face cache", "tokenizer", ENV["imagereward_tokenizer"])
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})  # as BLIP's tokenizer
    vision, text, head = build_imagereward(load_state_file(ckpt), json.loads(Path(med).read_text()), vision_heads)
    dev, dt = _device(device), _dtype(dtype)
    vision, text, head = vision.to(dev, dt), text.to(dev, dt), head.to(dev)
    size = int(vision.config.image_size)
    bs = int(batch_size)

    @torch.no_grad()
    def fn(images, prompts, metadata=None):
        u8 = to_uint8(images)
        prompts = _check_prompts(prompts, u8.shape[0], "imagereward")
        out = []
        for sl in _chunks(u8.shape[0], bs):
            px = imagereward_pixels(u8[sl], size).to(dev, dt)
            img = vision(pixel_values=px).last_hidden_state
            t = tok(prompts[sl], padding="max_length", truncation=True, max_length=IMAGEREWARD_MAX_TOKENS,
                    return_tensors="pt")
            txt = text(input_ids=t["input_ids"].to(dev), attention_mask=t["attention_mask"].to(dev),
                       encoder_hidden_states=img,
                       encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long, device=dev)).last_hidden_state
            out.append(head(txt[:, 0].float()).squeeze(-1).float().cpu())
        r = (torch.cat(out) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
        return r, {"imagereward": r}

    return fn


# ---------------------------------------------------------------------------
# combinations
# ---------------------------------------------------------------------------

@register_reward("combined")
def combined(components: dict[str, float] | None = None, options: dict[str, dict[str, Any]] | None = None):
    """Weighted sum of registered rewards: ``components: {name: weight}``, ``options: {name: {...}}``."""
    if not isinstance(components, dict) or not components:
        raise ValueError("reward.options.components: a non-empty mapping {reward name: weight} is required")
    options = options or {}
    if not isinstance(options, dict):
        raise ValueError("reward.options.options: expected a mapping {reward name: {option: value}}")
    extra = sorted(set(options) - set(components))
    if extra:
        raise ValueError(f"reward.options.options.{extra[0]}: not one of the components ({', '.join(components)})")
    if "combined" in components:
        raise ValueError("reward.options.components: 'combined' cannot contain itself")
    parts: list[tuple[str, float, Callable]] = []
    for name, weight in components.items():
        try:
            wt = float(weight)
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward.options.components.{name}: weight must be a number, got {weight!r}") from e
        parts.append((name, wt, get_reward(name, f"reward.options.components.{name}", **(options.get(name) or {}))))

    def fn(images, prompts, metadata):
        total = None
        info: dict[str, Any] = {}
        for name, wt, f in parts:
            r, _ = f(images, prompts, metadata)
            r = torch.as_tensor(r, dtype=torch.float32).reshape(-1).cpu()
            info[name] = r
            total = wt * r if total is None else total + wt * r
        return total, info

    return fn


__all__ = [
    "AestheticHead", "RewardUnavailableError", "RewardWeightsError", "load_aesthetic_head", "load_state_file",
    "to_uint8", "ENV",
]
