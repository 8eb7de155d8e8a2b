"""DDPO's prompt-image alignment reward: LLaVA captions the image, BERTScore compares the caption
with the prompt (registered as ``llava_bertscore``, DDPO's name for it).

Ported from kvablack/ddpo-pytorch@1958463 ``ddpo_pytorch/rewards.py`` ``llava_bertscore()`` (the
client) and kvablack/LLaVA-server@d83c1e8 (the server it posts to: ``app.py``,
``llava_server/llava.py``, ``llava_server/bertscore.py``).  Each setting and where it comes from:

==========================  ===========================================================================
setting                     reference
==========================  ===========================================================================
image -> uint8              ``(images * 255).round().clamp(0, 255).to(torch.uint8)`` (rewards.py:138)
JPEG round trip, q 80       ``img.save(buffer, format="JPEG", quality=80)`` (rewards.py:155-158); the
                            server decodes it with PIL (app.py:35)
pixel preprocessing         the vision tower's ``CLIPImageProcessor`` (llava.py:28-30, 77): resize the
                            short side, centre crop, CLIP mean/std.  Here the LLaVA checkpoint's own
                            processor (``AutoProcessor``) does the same for its tower.
question                    ``"Answer concisely: what is going on in this image?"`` (rewards.py:163)
conversation                LLaVA v0 ``simple_conv_multimodal`` (llava.py:19, 81, 104; LLaVA@0818b7a
                            llava/conversation.py:244-256): system text, a "Hi!" exchange, ``###``
                            separators, ``Human: <image> {question}###``.  ``template: ddpo`` writes
                            exactly that text; ``template: chat`` (the default for checkpoints that
                            ship a chat template, e.g. llava-hf/llava-1.5-*) wraps the same question in
                            the checkpoint's own template, the one it was trained with.
decoding                    greedy (``argmax``, llava.py:123), at most 64 new tokens (llava.py:17);
                            the text is cut at the first ``###``/``##``/``#`` and after ``Assistant:``,
                            then stripped (llava.py:110-114, 136-144)
reference sentence          ``f"The image contains {prompt}"`` (rewards.py:166)
BERTScore                   ``bert_score.BERTScorer("microsoft/deberta-xlarge-mnli",
                            use_fast_tokenizer=True)`` (llava_server/bertscore.py:7), bert-score 0.3.13
                            (LLaVA-server pyproject.toml:15): layer 40 (bert_score's ``model2layers``),
                            no idf, no baseline rescaling, ``lang`` unset; candidates = captions,
                            references = the sentences above (app.py:51-54)
reward                      BERTScore **recall** (rewards.py:176-177); precision and F1 are logged
                            (rewards.py:181-184)
batching                    the client splits a batch into ``ceil(n / 16)`` near-equal chunks with
                            ``np.array_split`` (rewards.py:127, 141-142); each chunk is one request,
                            captioned and BERTScored together.  ``batch_size`` sets the 16.
==========================  ===========================================================================

Model.  The reference serves whatever LLaVA sits in ``../llava-weights`` (gunicorn.conf.py:5) through
the original LLaVA package pinned at commit 0818b7a (April 2023), whose README offers only
LLaVA-13B-v0 (delta weights on LLaMA-13B; "LLaVA-7B: coming soon").  That checkpoint has no
transformers-format (``LlavaForConditionalGeneration``) release, so the default here is
``llava-hf/llava-1.5-13b-hf``: the same size and the same CLIP ViT-L/14 family of vision tower, but a
later model (LLaVA-1.5: Vicuna-1.5, an MLP projector, 336 px), i.e. *not* the model the reference
serves.  ``llava`` takes any transformers-format LLaVA (e.g. ``llava-hf/llava-1.5-7b-hf``).
Generation runs in float16 on CUDA as the reference (llava.py:26), float32 on the CPU.

Deliberate differences: the reference tokenises the question separately from the image prompt, so a
second BOS token sits in the middle of its sequence (llava.py:105-107); here the whole text is one
tokenised string.  Empty captions score 0, which is what bert_score does for them
(``greedy_cos_idf`` zeroes P and R of an empty candidate) but cannot compute under transformers 5.

Weights are fetched from the Hugging Face hub when absent (``hf download REPO`` pre-fetches them);
with ``HF_HUB_OFFLINE=1`` (or ``local_files_only: true``) only the local cache is read and a missing
model fails in one line naming the repository.  Options: ``llava`` (hub id or folder; env
``PCPO_LLAVA_MODEL``), ``processor`` (defaults to ``llava``), ``bertscore_model`` (hub id or folder;
env ``PCPO_BERTSCORE_MODEL``), ``num_layers`` (required for a model bert_score does not list),
``template`` (``auto``/``chat``/``ddpo``), ``max_new_tokens`` (64), ``jpeg_quality`` (80),
``batch_size`` (16), ``bertscore_batch_size`` (64, bert_score's default), ``device``, ``dtype``
(``auto``: float16 on CUDA, else float32), ``local_files_only``.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from pcpo.rewards import register_reward
from pcpo.rewards.learned import RewardUnavailableError, RewardWeightsError, _check_prompts, _device, to_uint8

LLAVA_MODEL = "llava-hf/llava-1.5-13b-hf"
BERTSCORE_MODEL = "microsoft/deberta-xlarge-mnli"
ENV = {"llava": "PCPO_LLAVA_MODEL", "bertscore_model": "PCPO_BERTSCORE_MODEL"}

QUESTION = "Answer concisely: what is going on in this image?"
ANSWER = "The image contains {prompt}"
MAX_NEW_TOKENS = 64
JPEG_QUALITY = 80
BATCH_SIZE = 16

# LLaVA@0818b7a llava/conversation.py:244-256 (simple_conv_multimodal) rendered by get_prompt() (:25-35),
# plus "Human: " as llava_server/llava.py:19 appends it
DDPO_SYSTEM = ("You are LLaVA, a large language and vision assistant trained by UW Madison WAIV Lab."
               "You are able to understand the visual content that the user provides, and assist the user with "
               "a variety of tasks using natural language."
               "Follow the instructions carefully and explain your answers in detail.")
DDPO_PREFIX = DDPO_SYSTEM + "###Human: Hi!###Assistant: Hi there!  How can I help you today?\n###Human: "


def ddpo_prompt(question: str = QUESTION, image_token: str = "<image>") -> str:
    """The text the reference server feeds LLaVA: the v0 conversation, the image, a space, the question
    and ``###`` (llava_server/llava.py:81, 104)."""
    return DDPO_PREFIX + image_token + " " + question + "###"


def clean_caption(text: str) -> str:
    """llava_server/llava.py:136-144: cut at the first ``###``/``##``/``#``, keep what follows
    ``Assistant:``, strip."""
    for pattern in ("###", "##", "#"):
        if pattern in text:
            text = text.split(pattern)[0]
    if "Assistant:" in text:
        text = text.split("Assistant:")[1]
    return text.strip()


def jpeg_roundtrip(u8: torch.Tensor, quality: int = JPEG_QUALITY) -> list:
    """(B, 3, H, W) uint8 -> PIL images after a JPEG encode/decode at ``quality`` (rewards.py:155-158,
    app.py:35)."""
    from PIL import Image

    out = []
    for x in u8:
        buf = io.BytesIO()
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=int(quality))
        out.append(Image.open(io.BytesIO(buf.getvalue()), formats=["jpeg"]).convert("RGB"))
    return out


def chunk_slices(n: int, batch_size: int) -> list[slice]:
    """``np.array_split(x, np.ceil(n / batch_size))`` as slices (rewards.py:141-142)."""
    if n == 0:
        return []
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(n), int(np.ceil(n / batch_size)))])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _is_path(name: str) -> bool:
    return Path(name).exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1


def _unavailable(what: str, name: str, option: str, env: str, offline: bool, err: Exception) -> RewardWeightsError:
    detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    if _is_path(name):
        how = f"{name!r} is not a loadable folder; write the model there or pass another as reward.options.{option}"
    else:
        where = "is not in the Hugging Face cache and HF_HUB_OFFLINE is set" if offline else "could not be fetched"
        how = (f"{name!r} {where}: run `hf download {name}`, or pass a local folder as reward.options.{option} "
               f"or set {env}")
    return RewardWeightsError(f"reward llava_bertscore: the {what} {how} [{detail}]")


def _pinned(name: str) -> str | None:
    """The revision the data catalogue pins for hub id ``name`` (what `pcpo data fetch` put in the cache),
    None for a folder or a repository the catalogue does not pin (then the hub's main)."""
    if _is_path(name):
        return None
    from pcpo.data import hub_revision

    return hub_revision(name)


def _from_pretrained(cls, name: str, what: str, option: str, env: str, offline: bool, **kw):
    from pcpo.models.tiny import quiet_hf

    rev = _pinned(name)
    if rev is not None:
        kw["revision"] = rev
    try:
        with quiet_hf():
            return cls.from_pretrained(name, local_files_only=offline, **kw)
    except (OSError, ValueError) as e:
        raise _unavailable(what, name, option, env, offline, e) from e


def load_bertscorer(name: str = BERTSCORE_MODEL, num_layers: int | None = None, device=None, batch_size: int = 64,
                    local_files_only: bool | None = None):
    """``bert_score.BERTScorer`` as the reference builds it (``use_fast_tokenizer=True``, no idf, no
    rescaling, ``lang`` unset); ``num_layers`` defaults to bert_score's layer for ``name``."""
    try:
        from bert_score import BERTScorer
        from bert_score.utils import model2layers
    except ImportError as e:
        raise RewardUnavailableError("reward llava_bertscore: needs the bert-score package "
                                     "(pip install bert-score==0.3.13)") from e
    offline = _offline(local_files_only)
    layers = num_layers if num_layers is not None else model2layers.get(name)
    if layers is None:
        raise ValueError(f"reward.options.num_layers: bert_score has no default layer for {name!r}; give the "
                         "hidden layer whose states BERTScore matches")
    model_type = name
    rev = _pinned(name)
    if (offline or rev is not None) and not Path(name).is_dir():
        # bert_score loads with from_pretrained(name) (the hub's main) and no local_files_only: hand it the
        # cached folder of the pinned revision; online and not cached yet, fetch that revision first
        try:
            from huggingface_hub import snapshot_download

            try:
                model_type = snapshot_download(name, revision=rev, local_files_only=True)
            except Exception:  # noqa: BLE001 - not cached
                if offline:
                    raise
                from pcpo.data.download import hf_endpoint

                # what BERTScorer's from_pretrained reads (config, tokenizer, weights), not TF/Flax copies
                model_type = snapshot_download(name, revision=rev, endpoint=hf_endpoint(), allow_patterns=[
                    "*.json", "*.txt", "*.model", "pytorch_model.bin", "model.safetensors"])
        except Exception as e:  # noqa: BLE001 - every cache miss means the same here
            raise _unavailable("BERTScore model", name, "bertscore_model", ENV["bertscore_model"], offline, e) from e
    from pcpo.models.tiny import quiet_hf

    try:
        with quiet_hf():
            return BERTScorer(model_type=model_type, num_layers=int(layers), use_fast_tokenizer=True,
                              device=str(_device(device)), batch_size=int(batch_size))
    except (OSError, ValueError) as e:
        raise _unavailable("BERTScore model", name, "bertscore_model", ENV["bertscore_model"], offline, e) from e


def bertscore_prf(scorer, candidates: list[str], references: list[str]) -> tuple[torch.Tensor, ...]:
    """(P, R, F) of each candidate against its reference, as ``scorer.score`` computes them; an empty
    candidate scores 0 (bert_score's own rule, which it cannot reach under transformers 5)."""
    n = len(candidates)
    p, r, f = (torch.zeros(n, dtype=torch.float32) for _ in range(3))
    keep = [i for i, c in enumerate(candidates) if c.strip()]
    if keep:
        kp, kr, kf = scorer.score([candidates[i] for i in keep], [references[i] for i in keep])
        idx = torch.tensor(keep)
        p[idx], r[idx], f[idx] = kp.float().cpu(), kr.float().cpu(), kf.float().cpu()
    return p, r, f


@register_reward("llava_bertscore")
def llava_bertscore(llava: str | None = None, processor: str | None = None, bertscore_model: str | None = None,
                    num_layers: int | None = None, template: str = "auto", max_new_tokens: int = MAX_NEW_TOKENS,
                    jpeg_quality: int = JPEG_QUALITY, batch_size: int = BATCH_SIZE, bertscore_batch_size: int = 64,
                    device=None, dtype: str | None = "auto", local_files_only: bool | None = None):
    """BERTScore recall of the LLaVA caption against ``"The image contains {prompt}"`` (DDPO)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from pcpo.rewards.learned import _dtype

    if template not in ("auto", "chat", "ddpo"):
        raise ValueError(f"reward.options.template: one of auto, chat, ddpo, got {template!r}")
    offline = _offline(local_files_only)
    dev = _device(device)
    dt = (torch.float16 if dev.type == "cuda" else torch.float32) if dtype in (None, "auto") else _dtype(dtype)
    llava_name = str(llava or os.environ.get(ENV["llava"]) or LLAVA_MODEL)
    proc_name = str(processor or llava_name)
    on_gpu = {"device_map": str(dev)} if dev.type == "cuda" else {}  # stream the shards to the GPU, not host RAM
    model = _from_pretrained(LlavaForConditionalGeneration, llava_name, "LLaVA model", "llava", ENV["llava"],
                             offline, dtype=dt, **on_gpu)
    model = model.to(dev).eval().requires_grad_(False)
    proc = _from_pretrained(AutoProcessor, proc_name, "LLaVA processor", "processor", ENV["llava"], offline)
    proc.tokenizer.padding_side = "left"  # rows are the same text, so no padding is ever needed
    if template == "auto":
        template = "chat" if getattr(proc, "chat_template", None) else "ddpo"
    if template == "chat":
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        text = proc.apply_chat_template(conv, add_generation_prompt=True)
    else:
        text = ddpo_prompt(QUESTION, getattr(proc, "image_token", "<image>"))
    scorer = load_bertscorer(str(bertscore_model or os.environ.get(ENV["bertscore_model"]) or BERTSCORE_MODEL),
                             num_layers, dev, bertscore_batch_size, local_files_only)
    tok = proc.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen = dict(do_sample=False, num_beams=1, max_new_tokens=int(max_new_tokens), pad_token_id=pad_id)
    bs = int(batch_size)

    @torch.no_grad()
    def caption(pil: list) -> list[str]:
        inputs = proc(images=pil, text=[text] * len(pil), return_tensors="pt", padding=True)
        inputs = {k: (v.to(dev, dt) if k == "pixel_values" else v.to(dev)) for k, v in inputs.items()}
        out = model.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [clean_caption(t) for t in proc.batch_decode(new, skip_special_tokens=True)]

    def fn(images, prompts, metadata=None):
        u8 = to_uint8(images)
        prompts = _check_prompts(prompts, u8.shape[0], "llava_bertscore")
        caps: list[str] = []
        prf = [[], [], []]
        for sl in chunk_slices(u8.shape[0], bs):
            c = caption(jpeg_roundtrip(u8[sl], jpeg_quality))
            for acc, v in zip(prf, bertscore_prf(scorer, c, [ANSWER.format(prompt=p) for p in prompts[sl]])):
                acc.append(v)
            caps += c
        p, r, f = (torch.cat(v) if v else torch.zeros(0) for v in prf)
        return r, {"bertscore_recall": r, "bertscore_precision": p, "bertscore_f1": f, "captions": caps}

    fn.captioner = caption  # for inspection and tests
    fn.scorer = scorer
    fn.prompt_text = text
    return fn


__all__ = ["ANSWER", "BERTSCORE_MODEL", "LLAVA_MODEL", "QUESTION", "bertscore_prf", "chunk_slices", "clean_caption",
           "ddpo_prompt", "jpeg_roundtrip", "llava_bertscore", "load_bertscorer"]
