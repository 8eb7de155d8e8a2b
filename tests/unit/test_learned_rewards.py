"""Learned rewards (pcpo.rewards.learned) on tiny randomly initialised backbones of
the real classes (transformers CLIPModel + CLIPProcessor, open_clip CLIP),
saved to tmp folders and loaded through each reward's own loading code.

Checks: shapes, finiteness, determinism and batch independence; the value
equals an independent computation with the backbone's own forward pass; a
known aesthetic head gives a known value; missing weights raise an error that
names them and the option / environment variable that provides them.
"""
from __future__ import annotations

import json

import pytest
import torch

from pcpo.rewards import get_reward, reward_names
from tests.helpers import reordered_sum_tol

PROMPTS = ["a red cat", "a blue dog", "two birds", "a cat"]
MAX_LEN = 12
IMG = 32  # the tiny CLIPs' input size
#: bound on the float32 reductions behind one score of the tiny networks below: the patch embedding
#: (3 x 8 x 8 = 192 terms for the CLIPs, 3 x 16 x 16 = 768 for BLIP) plus each layer's attention,
#: MLP and projection sums (at most 64 terms each, a handful of layers)
TINY_NET_TERMS = 1024


def assert_batch_invariant(a: torch.Tensor, b: torch.Tensor) -> None:
    """The same scores computed in batches of different sizes.  The kernels a CPU picks depend on
    the batch shape, so only the reduction order may differ: within the reordered-sum bound for
    TINY_NET_TERMS terms at the scores' magnitude, which must be far below their spread across
    images (else mixing images up between batches would pass unseen)."""
    tol = reordered_sum_tol(TINY_NET_TERMS, scale=float(a.abs().max()))
    assert float((a.max() - a.min())) > 100 * tol, "the scores barely differ: this check would be vacuous"
    torch.testing.assert_close(b, a, rtol=0, atol=tol)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """huggingface_hub's offline mode and an empty data root: nothing here reaches a network."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("PCPO_DATA", str(tmp_path / "data"))
    for v in ("PCPO_AESTHETIC_CLIP", "PCPO_AESTHETIC_HEAD", "PCPO_HPS_CHECKPOINT", "PCPO_PICKSCORE_MODEL",
              "PCPO_PICKSCORE_PROCESSOR", "PCPO_CLIPSCORE_MODEL", "PCPO_IMAGEREWARD_CHECKPOINT",
              "PCPO_IMAGEREWARD_MED_CONFIG", "PCPO_IMAGEREWARD_TOKENIZER"):
        monkeypatch.delenv(v, raising=False)


def images(n=4, size=40, seed=0):
    return torch.rand(n, 3, size, size + 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------
# tiny backbones
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A CLIPModel + CLIPProcessor folder laid out like a hub CLIP repository."""
    from tests.rehearsal.tiny_hub import build_clip_model

    return str(build_clip_model(tmp_path_factory.mktemp("tiny_clip") / "clip", max_length=MAX_LEN, image_size=IMG))


def reference_clip(path, imgs, prompts):
    """Image/text embeddings and logits from the CLIPModel's own forward pass."""
    from transformers import CLIPModel, CLIPProcessor

    from pcpo.rewards.learned import to_uint8

    model, proc = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    batch = proc(text=prompts, images=list(to_uint8(imgs)), padding="max_length", max_length=MAX_LEN,
                 return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    return out


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------

def test_registered():
    names = reward_names()
    for n in ("aesthetic", "hpsv21", "pickscore", "imagereward", "clipscore", "combined"):
        assert n in names


def test_pickscore_matches_clip_logits_and_is_deterministic(tiny_clip):
    imgs = images()
    fn = get_reward("pickscore", model=tiny_clip, processor=tiny_clip, batch_size=3)
    r, info = fn(imgs, PROMPTS, [{}] * 4)
    assert r.shape == (4,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    ref = reference_clip(tiny_clip, imgs, PROMPTS)
    assert torch.allclose(r, ref.logits_per_image.diagonal(), atol=1e-5)
    # each image scored with its own caption and with every other caption: the same bilinear form
    for j in range(4):
        other, _ = fn(imgs, [PROMPTS[j]] * 4, None)
        assert torch.allclose(other, ref.logits_per_image[:, j], atol=1e-5)
    r2, _ = get_reward("pickscore", model=tiny_clip, processor=tiny_clip, batch_size=1)(imgs, PROMPTS, None)
    assert_batch_invariant(r, r2)  # independent of the batch it is scored in
    scaled, _ = get_reward("pickscore", model=tiny_clip, processor=tiny_clip, scale=26.0)(imgs, PROMPTS, None)
    assert torch.allclose(scaled * 26.0, r, atol=1e-5)
    with pytest.raises(ValueError, match="one prompt per image"):
        fn(imgs, PROMPTS[:2], None)


def test_clipscore_is_clamped_scaled_cosine(tiny_clip):
    imgs = images(seed=1)
    r, info = get_reward("clipscore", model=tiny_clip)(imgs, PROMPTS, None)
    ref = reference_clip(tiny_clip, imgs, PROMPTS)
    cos = (ref.image_embeds * ref.text_embeds).sum(-1)
    assert torch.allclose(info["clip_cosine"], cos, atol=1e-5)
    assert torch.allclose(r, 100.0 * cos.clamp_min(0), atol=1e-4)
    paper, _ = get_reward("clipscore", model=tiny_clip, w=2.5)(imgs, PROMPTS, None)
    assert torch.allclose(paper, 2.5 * cos.clamp_min(0), atol=1e-5)
    assert (r >= 0).all() and (r <= 100).all()


def _head(dim, seed=0):
    from pcpo.rewards.learned import AestheticHead

    torch.manual_seed(seed)
    return AestheticHead(dim).eval()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_aesthetic_head_loading_and_value(tiny_clip, tmp_path, fmt):
    from safetensors.torch import save_file

    imgs = images(seed=2)
    head = _head(8)
    path = tmp_path / f"head.{fmt}"
    sd = {k: v.contiguous() for k, v in head.state_dict().items()}
    save_file(sd, str(path)) if fmt == "safetensors" else torch.save(sd, path)
    r, info = get_reward("aesthetic", clip=tiny_clip, head=str(path))(imgs, PROMPTS, None)
    assert r.shape == (4,) and torch.isfinite(r).all()
    ref = reference_clip(tiny_clip, imgs, PROMPTS)
    emb = ref.image_embeds  # already L2-normalised by CLIPModel.forward
    with torch.no_grad():
        expected = head(emb).squeeze(-1)
    assert torch.allclose(r, expected, atol=1e-5)
    again, _ = get_reward("aesthetic", clip=tiny_clip, head=str(path), batch_size=1)(imgs, PROMPTS, None)
    assert_batch_invariant(r, again)


def test_aesthetic_known_head_gives_known_value(tiny_clip, tmp_path):
    head = _head(8)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.layers[7].bias.fill_(5.25)  # every image scores exactly 5.25
    torch.save(head.state_dict(), tmp_path / "const.pth")
    r, _ = get_reward("aesthetic", clip=tiny_clip, head=str(tmp_path / "const.pth"))(images(), PROMPTS, None)
    assert torch.equal(r, torch.full((4,), 5.25))
    wrong = _head(16)
    torch.save(wrong.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="16-dim"):
        get_reward("aesthetic", clip=tiny_clip, head=str(tmp_path / "wide.pth"))


def test_grey_images_are_scored_as_rgb(tiny_clip):
    fn = get_reward("clipscore", model=tiny_clip)
    grey = images(2)[:, :1]
    r_grey, _ = fn(grey, PROMPTS[:2], None)
    r_rgb, _ = fn(grey.expand(-1, 3, -1, -1), PROMPTS[:2], None)
    assert torch.equal(r_grey, r_rgb)


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """An open_clip architecture registered under a test name, and an HPS-style checkpoint of it."""
    open_clip = pytest.importorskip("open_clip")
    from tests.rehearsal.tiny_hub import OPEN_CLIP_TINY, write_hps_checkpoint

    root = tmp_path_factory.mktemp("tiny_open_clip")
    name = "pcpo-test-tiny-hps"
    (root / f"{name}.json").write_text(json.dumps(
        {**OPEN_CLIP_TINY, "text_cfg": {**OPEN_CLIP_TINY["text_cfg"], "context_length": 16}}))
    open_clip.add_model_config(root / f"{name}.json")
    write_hps_checkpoint(root / "hps.pt", json.loads((root / f"{name}.json").read_text()), seed=0)
    return name, str(root / "hps.pt")


def test_hpsv21_matches_open_clip_forward(tiny_open_clip):
    import open_clip
    from PIL import Image

    from pcpo.rewards.learned import to_uint8

    name, ckpt = tiny_open_clip
    imgs = images(seed=3)
    fn = get_reward("hpsv21", checkpoint=ckpt, model_name=name, batch_size=3)
    r, _ = fn(imgs, PROMPTS, None)
    assert r.shape == (4,) and torch.isfinite(r).all() and (r.abs() <= 1).all()
    # the hpsv2 package's computation: normalised features from the model's forward, diagonal of img @ txt.T
    model, _, pre = open_clip.create_model_and_transforms(name, pretrained=None)
    model.load_state_dict(torch.load(ckpt)["state_dict"])
    model.eval()
    pil = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in to_uint8(imgs)]
    with torch.no_grad():
        out = model(torch.stack([pre(p) for p in pil]), open_clip.get_tokenizer(name)(PROMPTS))
    img_f, txt_f = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
    assert torch.allclose(r, (img_f @ txt_f.T).diagonal(), atol=1e-5)
    r1, _ = get_reward("hpsv21", checkpoint=ckpt, model_name=name, batch_size=1)(imgs, PROMPTS, None)
    assert_batch_invariant(r, r1)


def test_combined_is_the_weighted_sum(tiny_clip):
    imgs = images(seed=4)
    fn = get_reward("combined", components={"clipscore": 0.5, "jpeg_incompressibility": 2.0},
                    options={"clipscore": {"model": tiny_clip, "w": 2.5}})
    r, info = fn(imgs, PROMPTS, [{}] * 4)
    a, _ = get_reward("clipscore", model=tiny_clip, w=2.5)(imgs, PROMPTS, None)
    b, _ = get_reward("jpeg_incompressibility")(imgs, PROMPTS, None)
    assert torch.allclose(r, 0.5 * a + 2.0 * b, atol=1e-5)
    assert set(info) == {"clipscore", "jpeg_incompressibility"}
    with pytest.raises(ValueError, match="components"):
        get_reward("combined", components={})
    with pytest.raises(ValueError, match="options.aesthetic"):
        get_reward("combined", components={"jpeg_incompressibility": 1.0}, options={"aesthetic": {}})
    with pytest.raises(KeyError, match="nosuch"):
        get_reward("combined", components={"nosuch": 1.0})


# ---------------------------------------------------------------------------
# missing weights
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,must_name", [
    ("aesthetic", {}, ["sac+logos+ava1-l14-linearMSE.pth", "PCPO_AESTHETIC_HEAD", "reward.options.head"]),
    ("hpsv21", {}, ["HPS_v2.1_compressed.pt", "xswu/HPSv2", "PCPO_HPS_CHECKPOINT", "reward.options.checkpoint"]),
    ("hpsv21", {"checkpoint": "/nonexistent/hps.pt"}, ["/nonexistent/hps.pt", "PCPO_HPS_CHECKPOINT"]),
    ("pickscore", {"model": "pcpo-test-org/no-such-pickscore"},
     ["pcpo-test-org/no-such-pickscore", "PCPO_PICKSCORE_MODEL", "reward.options.model"]),
    ("clipscore", {"model": "/nonexistent/clip"}, ["/nonexistent/clip", "PCPO_CLIPSCORE_MODEL"]),
])
def test_missing_weights_are_named(name, options, must_name):
    from pcpo.rewards.learned import RewardWeightsError

    with pytest.raises(RewardWeightsError) as ei:
        get_reward(name, **options)
    for s in must_name:
        assert s in str(ei.value), (s, str(ei.value))


def test_aesthetic_head_is_fetched_from_the_catalogue_by_default(tiny_clip, tmp_path, monkeypatch):
    """No head option or variable: the loader takes the data root's copy, fetching it (verified) first."""
    import hashlib

    import huggingface_hub.constants
    import yaml

    from tests.loopback import serve_files

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    head = _head(8, seed=5)
    www = tmp_path / "www" / "github.example.org" / "assets"
    www.mkdir(parents=True)
    torch.save(head.state_dict(), www / "sac+logos+ava1-l14-linearMSE.pth")
    digest = hashlib.sha256((www / "sac+logos+ava1-l14-linearMSE.pth").read_bytes()).hexdigest()
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump({"aesthetic-head": {
        "kind": "url", "url": "https://github.example.org/assets/sac+logos+ava1-l14-linearMSE.pth",
        "sha256": digest, "dest": "data/weights/sac+logos+ava1-l14-linearMSE.pth"}}))
    monkeypatch.setenv("PCPO_DATA_CATALOGUE", str(tmp_path / "sources.yaml"))
    with serve_files(tmp_path / "www") as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        fn = get_reward("aesthetic", clip=tiny_clip)
    assert (tmp_path / "data" / "weights" / "sac+logos+ava1-l14-linearMSE.pth").is_file()
    imgs = images(seed=4)
    expected, _ = get_reward("aesthetic", clip=tiny_clip, head=str(www / "sac+logos+ava1-l14-linearMSE.pth"))(
        imgs, PROMPTS, None)
    assert torch.equal(fn(imgs, PROMPTS, None)[0], expected)
    # offline, with no copy in the data root: one line naming the head and the fetch command
    monkeypatch.setenv("PCPO_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pcpo.rewards.learned import RewardWeightsError

    with pytest.raises(RewardWeightsError, match="sac.*pcpo data fetch aesthetic-head.*PCPO_AESTHETIC_HEAD"):
        get_reward("aesthetic", clip=tiny_clip)


def test_aesthetic_missing_clip_is_named(tmp_path):
    from pcpo.rewards.learned import RewardWeightsError

    torch.save(_head(8).state_dict(), tmp_path / "h.pth")
    with pytest.raises(RewardWeightsError, match="PCPO_AESTHETIC_CLIP"):
        get_reward("aesthetic", head=str(tmp_path / "h.pth"), clip="pcpo-test-org/no-such-clip")


# ---------------------------------------------------------------------------
# ImageReward on tiny BLIP modules
# ---------------------------------------------------------------------------

IR_WORDS = ["a", "red", "blue", "cat", "dog", "two", "birds"]


def _tiny_imagereward(tmp_path):
    """Tiny BLIP vision/text modules and head with random weights, saved as an ImageReward.pt in
    the original layout (BLIP's vit.py and med.py names), a med_config.json and a BERT tokenizer."""
    from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    from pcpo.rewards.learned import AestheticHead

    (tmp_path / "tok").mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *IR_WORDS]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=IMG, patch_size=16,
                                              layer_norm_eps=1e-6)).eval()
    med = {"vocab_size": len(vocab) + 2, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 32, "max_position_embeddings": 40, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
           "encoder_width": 16, "add_cross_attention": True}
    text = BlipTextModel(BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=24, encoder_hidden_size=16,
                                        intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=40, is_decoder=True), add_pooling_layer=False).eval()
    head = AestheticHead(24).eval()
    with torch.no_grad():
        for mod in (vision, text, head):
            for prm in mod.parameters():
                prm.copy_(0.3 * torch.randn_like(prm))
    # BLIP's own names (models/vit.py; med.py's BertModel keeps BERT's names, as BlipTextModel does)
    v = vision.state_dict()
    orig = {"blip.visual_encoder.cls_token": v["embeddings.class_embedding"],
            "blip.visual_encoder.pos_embed": v["embeddings.position_embedding"],
            "blip.visual_encoder.patch_embed.proj.weight": v["embeddings.patch_embedding.weight"],
            "blip.visual_encoder.patch_embed.proj.bias": v["embeddings.patch_embedding.bias"],
            "blip.visual_encoder.norm.weight": v["post_layernorm.weight"],
            "blip.visual_encoder.norm.bias": v["post_layernorm.bias"],
            "blip.vision_proj.weight": torch.randn(4, 16), "blip.text_proj.weight": torch.randn(4, 24)}
    for i in range(2):
        for blip_name, hf_name in (("norm1", "layer_norm1"), ("attn.qkv", "self_attn.qkv"),
                                   ("attn.proj", "self_attn.projection"), ("norm2", "layer_norm2"),
                                   ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for leaf in ("weight", "bias"):
                orig[f"blip.visual_encoder.blocks.{i}.{blip_name}.{leaf}"] = v[f"encoder.layers.{i}.{hf_name}.{leaf}"]
    orig.update({f"blip.text_encoder.{k}": t for k, t in text.state_dict().items()})
    orig.update({f"mlp.{k}": t for k, t in head.state_dict().items()})
    torch.save(orig, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text(json.dumps(med))
    opts = {"checkpoint": str(tmp_path / "ImageReward.pt"), "med_config": str(tmp_path / "med_config.json"),
            "tokenizer": str(tmp_path / "tok"), "device": "cpu", "vision_heads": 2}
    return vision, text, head, opts


def test_imagereward_equals_blip_forward_on_tiny_modules(tmp_path):
    from PIL import Image
    from torchvision import transforms as T
    from transformers import BertTokenizer

    from pcpo.rewards.learned import IMAGEREWARD_MEAN, IMAGEREWARD_STD

    vision, text, head, opts = _tiny_imagereward(tmp_path)
    x = images(4, size=40)
    prompts = ["a red cat", "a blue dog", "two birds", "a cat"]
    fn = get_reward("imagereward", **opts, batch_size=3)
    r, info = fn(x, prompts)
    assert r.shape == (4,) and torch.isfinite(r).all() and torch.equal(info["imagereward"], r)
    # the reference: ImageReward's preprocessing and score() steps on the original modules
    tf = T.Compose([T.Resize(IMG, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(IMG), T.ToTensor(),
                    T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    u8 = (x * 255).round().to(torch.uint8)
    tok = BertTokenizer.from_pretrained(opts["tokenizer"])
    ref = []
    with torch.no_grad():
        for i in range(4):
            px = tf(Image.fromarray(u8[i].permute(1, 2, 0).numpy())).unsqueeze(0)
            emb = vision(pixel_values=px).last_hidden_state
            t = tok(prompts[i], padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            h = text(input_ids=t["input_ids"], attention_mask=t["attention_mask"], encoder_hidden_states=emb,
                     encoder_attention_mask=torch.ones(emb.shape[:2], dtype=torch.long)).last_hidden_state
            ref.append(((head(h[:, 0]) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).item())
    assert torch.allclose(r, torch.tensor(ref), atol=1e-5), (r, ref)
    assert r.std() > 1e-3  # images and prompts matter: the check is not vacuous
    r1, _ = get_reward("imagereward", **opts, batch_size=1)(x, prompts)
    assert_batch_invariant(r, r1)
    r_other, _ = fn(x, ["two birds"] * 4)
    assert not torch.allclose(r, r_other)


def test_imagereward_errors_name_what_is_missing(tmp_path):
    from pcpo.rewards.learned import RewardWeightsError

    with pytest.raises(RewardWeightsError) as ei:
        get_reward("imagereward")
    assert "ImageReward.pt" in str(ei.value) and "PCPO_IMAGEREWARD_CHECKPOINT" in str(ei.value)
    _, _, head, opts = _tiny_imagereward(tmp_path)
    with pytest.raises(RewardWeightsError, match="PCPO_IMAGEREWARD_TOKENIZER"):
        get_reward("imagereward", **{**opts, "tokenizer": "pcpo-test-org/no-such-bert"})
    torch.save(head.state_dict(), tmp_path / "head_only.pt")
    with pytest.raises(ValueError, match="not an ImageReward state dict"):
        get_reward("imagereward", **{**opts, "checkpoint": str(tmp_path / "head_only.pt")})


def test_uint8_quantisation():
    from pcpo.rewards.learned import to_uint8

    x = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1]).reshape(1, 1, 1, 5)
    u = to_uint8(x)
    assert u.shape == (1, 3, 1, 5) and u.dtype == torch.uint8
    assert u[0, 0, 0].tolist() == [0, 128, 255, 255, 0]
    with pytest.raises(ValueError, match="B, C, H, W"):
        to_uint8(torch.zeros(2, 2, 4, 4))
