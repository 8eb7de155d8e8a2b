"""DDPO's prompt-alignment reward (pcpo.rewards.bertscore, ``llava_bertscore``) on tiny models built
here: a randomly initialised transformers LLaVA (tiny CLIP vision tower + tiny Llama) saved with its
processor, and a tiny DeBERTa (the reference BERTScore model's architecture and byte-level BPE
tokenizer) for bert_score.  Nothing is downloaded.

Checks: the reward runs end to end (finite, one value per image, recall is the reward); the
BERTScore number equals a by-hand float64 greedy cosine matching of the same model's hidden states
(Zhang et al. 2020, eq. 1-3, with bert_score's handling of [CLS]/[SEP]); captions and scores do not
depend on the batch size; the reference's text handling (prompt text, caption cleaning, chunking);
a missing model fails in one line naming the repository and ``hf download``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pcpo.rewards import get_reward, reward_names
from pcpo.rewards import bertscore as B
from tests.rehearsal import tiny_hub as th

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a cat riding a bike", "a dog playing chess", "an ant washing the dishes", "a cat playing chess",
           "a dog riding a bike"]
IMG = th.LLAVA_IMG


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for v in ("PCPO_LLAVA_MODEL", "PCPO_BERTSCORE_MODEL", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(v, raising=False)


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory):
    """A DeBERTa folder (config, weights, GPT-2-style vocab.json/merges.txt) like microsoft/deberta-xlarge-mnli."""
    return th.build_deberta(tmp_path_factory.mktemp("tiny_deberta"), num_layers=3)


def _write_llava(root, chat: bool, seed: int = 0):
    return th.build_llava(root, chat=chat, seed=seed)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return _write_llava(tmp_path_factory.mktemp("tiny_llava"), chat=True)


@pytest.fixture(scope="module")
def reward(tiny_llava, tiny_deberta):
    return get_reward("llava_bertscore", llava=str(tiny_llava), bertscore_model=str(tiny_deberta), num_layers=2,
                      max_new_tokens=12, device="cpu")


def images(n, seed=0):
    return torch.rand(n, 3, IMG + 8, IMG + 16, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- BERTScore
def _hand_bertscore(folder, layers, cand: str, ref: str):
    """Greedy cosine matching (Zhang et al. 2020, eq. 1-3) in float64 on hidden state ``layers``:
    R = mean over reference tokens of the best cosine with any candidate token, P the reverse, F their
    harmonic mean; [CLS]/[SEP] are matched against but carry no weight of their own (bert_score)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).double().eval()

    def states(s):
        ids = tok(s, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model(ids, output_hidden_states=True).hidden_states[layers][0]
        h = h / h.norm(dim=-1, keepdim=True)
        special = torch.isin(ids[0], torch.tensor([tok.cls_token_id, tok.sep_token_id]))
        return h, (~special).double()

    hc, wc = states(cand)
    hr, wr = states(ref)
    sim = hc @ hr.T
    p = (sim.max(dim=1).values * wc).sum() / wc.sum()
    r = (sim.max(dim=0).values * wr).sum() / wr.sum()
    return float(p), float(r), float(2 * p * r / (p + r)), sim


def test_bertscore_equals_greedy_matching_by_hand(tiny_deberta):
    scorer = B.load_bertscorer(str(tiny_deberta), num_layers=2, device="cpu")
    assert len(scorer._model.encoder.layer) == 2
    cand, ref = "a cat riding the bike", B.ANSWER.format(prompt="a dog playing chess")
    p, r, f = (float(x[0]) for x in B.bertscore_prf(scorer, [cand], [ref]))
    hp, hr, hf, sim = _hand_bertscore(str(tiny_deberta), 2, cand, ref)
    # float32 against float64: each cosine is a d-term dot product of unit vectors (d = hidden size), whose
    # float32 rounding error is at most about d * eps; the score is a weighted mean of such cosines
    tol = scorer._model.config.hidden_size * torch.finfo(torch.float32).eps
    assert abs(p - hp) < tol and abs(r - hr) < tol and abs(f - hf) < tol, (p, hp, r, hr, f, hf)
    # the comparison is not vacuous: P, R and F differ from each other and from 1
    assert abs(p - r) > 100 * tol and max(p, r) < 1 - 100 * tol
    # another layer gives another number (num_layers is honoured)
    r3 = float(B.bertscore_prf(B.load_bertscorer(str(tiny_deberta), num_layers=3, device="cpu"), [cand], [ref])[1][0])
    assert abs(r3 - _hand_bertscore(str(tiny_deberta), 3, cand, ref)[1]) < tol and abs(r3 - r) > 100 * tol


def test_empty_caption_scores_zero(tiny_deberta):
    scorer = B.load_bertscorer(str(tiny_deberta), num_layers=2, device="cpu")
    p, r, f = B.bertscore_prf(scorer, ["", "a cat", "  "], ["The image contains a cat"] * 3)
    assert p[0] == r[0] == f[0] == 0 and p[2] == r[2] == 0 and r[1] > 0


def test_default_bertscore_settings_are_the_references():
    from bert_score.utils import model2layers

    assert B.BERTSCORE_MODEL == "microsoft/deberta-xlarge-mnli" and model2layers[B.BERTSCORE_MODEL] == 40
    import inspect

    src = inspect.getsource(B.load_bertscorer)
    assert "use_fast_tokenizer=True" in src and "idf" not in src.split('"""')[2] and "rescale" not in src.split('"""')[2]


# ---------------------------------------------------------------------------------------------- text handling
def test_reference_text_handling():
    assert B.QUESTION == "Answer concisely: what is going on in this image?"
    assert B.ANSWER.format(prompt="a cat riding a bike") == "The image contains a cat riding a bike"
    text = B.ddpo_prompt()
    assert text.startswith("You are LLaVA, a large language and vision assistant trained by UW Madison WAIV Lab.You")
    assert text.endswith("###Human: <image> Answer concisely: what is going on in this image?###")
    assert "###Assistant: Hi there!  How can I help you today?\n###" in text
    assert B.clean_caption("Assistant: a cat rides a bike.\n###Human: what") == "a cat rides a bike."
    assert B.clean_caption(" two dogs ## x") == "two dogs"
    assert B.clean_caption("###") == ""
    # np.array_split(x, ceil(n / 16)): near-equal chunks, not 16 + remainder
    assert [s.stop - s.start for s in B.chunk_slices(20, 16)] == [10, 10]
    assert [s.stop - s.start for s in B.chunk_slices(33, 16)] == [11, 11, 11]
    assert [s.stop - s.start for s in B.chunk_slices(16, 16)] == [16]


def test_jpeg_roundtrip_is_quality_80():
    import io

    from PIL import Image

    u8 = (images(1) * 255).round().to(torch.uint8)
    got = torch.from_numpy(np.array(B.jpeg_roundtrip(u8)[0])).permute(2, 0, 1)
    buf = io.BytesIO()
    Image.fromarray(u8[0].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=80)
    want = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(got, want) and not torch.equal(got, u8[0])


# ---------------------------------------------------------------------------------------------- end to end
def test_registered():
    assert "llava_bertscore" in reward_names()


def test_reward_end_to_end(reward, tiny_deberta):
    imgs = images(len(PROMPTS))
    r, info = reward(imgs, PROMPTS, [{}] * len(PROMPTS))
    assert r.shape == (len(PROMPTS),) and r.dtype == torch.float32 and torch.isfinite(r).all()
    assert torch.equal(r, info["bertscore_recall"])
    caps = info["captions"]
    assert len(caps) == len(PROMPTS) and sum(bool(c) for c in caps) >= 3, caps
    # the reward is the recall of each caption against "The image contains {prompt}"
    scorer = B.load_bertscorer(str(tiny_deberta), num_layers=2, device="cpu")
    p, rr, f = B.bertscore_prf(scorer, caps, [B.ANSWER.format(prompt=q) for q in PROMPTS])
    tol = scorer._model.config.hidden_size * torch.finfo(torch.float32).eps  # d-term cosines in float32
    assert torch.allclose(r, rr, atol=tol, rtol=0) and torch.allclose(info["bertscore_precision"], p, atol=tol, rtol=0)
    assert torch.allclose(info["bertscore_f1"], f, atol=tol, rtol=0)
    assert reward.prompt_text.startswith("USER: <image>\n" + B.QUESTION)
    # deterministic, and the prompt matters
    r2, info2 = reward(imgs, PROMPTS, None)
    assert torch.equal(r, r2) and info2["captions"] == caps
    r3, _ = reward(imgs, list(reversed(PROMPTS)), None)
    assert not torch.equal(r, r3)


def test_captions_follow_the_model_and_the_image(reward):
    caps_a = reward.captioner(B.jpeg_roundtrip((images(3, seed=1) * 255).round().to(torch.uint8)))
    caps_b = reward.captioner(B.jpeg_roundtrip((images(3, seed=2) * 255).round().to(torch.uint8)))
    assert caps_a != caps_b and len(set(caps_a)) > 1  # the vision tower reaches the language model


def test_batch_size_does_not_change_the_reward(tiny_llava, tiny_deberta, reward):
    imgs = images(len(PROMPTS), seed=3)
    r_all, i_all = reward(imgs, PROMPTS, None)  # one chunk of 5
    one = get_reward("llava_bertscore", llava=str(tiny_llava), bertscore_model=str(tiny_deberta), num_layers=2,
                     max_new_tokens=12, device="cpu", batch_size=2)  # ceil(5 / 2) = 3 chunks: 2, 2, 1
    r_two, i_two = one(imgs, PROMPTS, None)
    assert i_two["captions"] == i_all["captions"]
    # the same sentences scored in different batches: bert_score pads, the attention mask hides the padding;
    # what remains is float32 rounding of d-term cosines (d = the hidden size)
    tol = reward.scorer._model.config.hidden_size * torch.finfo(torch.float32).eps
    assert torch.allclose(r_all, r_two, atol=tol, rtol=0), (r_all, r_two)


def test_ddpo_template_for_a_processor_without_chat_template(tmp_path, tiny_deberta):
    root = _write_llava(tmp_path / "llava_v0", chat=False)
    fn = get_reward("llava_bertscore", llava=str(root), bertscore_model=str(tiny_deberta), num_layers=2,
                    max_new_tokens=8, device="cpu")
    assert fn.prompt_text == B.ddpo_prompt()
    r, info = fn(images(2), PROMPTS[:2], None)
    assert r.shape == (2,) and torch.isfinite(r).all()
    with pytest.raises(ValueError, match="reward.options.template"):
        get_reward("llava_bertscore", llava=str(root), template="v2")


# ---------------------------------------------------------------------------------------------- missing models
def test_offline_missing_models_fail_in_one_line(monkeypatch, tmp_path, tiny_llava, tiny_deberta):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    from pcpo.rewards.learned import RewardWeightsError

    with pytest.raises(RewardWeightsError) as e:
        get_reward("llava_bertscore", llava="pcpo-test-org/no-such-llava", device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "`hf download pcpo-test-org/no-such-llava`" in msg and "HF_HUB_OFFLINE" in msg
    assert "reward.options.llava" in msg
    with pytest.raises(RewardWeightsError) as e:
        get_reward("llava_bertscore", llava=str(tiny_llava), bertscore_model="pcpo-test-org/no-such-bert",
                   num_layers=2, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "`hf download pcpo-test-org/no-such-bert`" in msg and "bertscore_model" in msg
    # the reference model's name resolves to bert_score's layer before the cache is consulted
    with pytest.raises(RewardWeightsError, match="hf download microsoft/deberta-xlarge-mnli"):
        B.load_bertscorer(device="cpu")
    with pytest.raises(ValueError, match="reward.options.num_layers"):
        B.load_bertscorer(str(tiny_deberta), device="cpu")
