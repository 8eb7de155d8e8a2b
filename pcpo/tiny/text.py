"""The tiny world's text side: a word-level tokenizer and a small CLIP text encoder.

The tokenizer is a real ``tokenizers`` WordLevel model (lower-casing
normaliser, whitespace pre-tokenizer) over the closed prompt vocabulary of
:func:`pcpo.tiny.prompts.vocabulary`, wrapped as a
``transformers.PreTrainedTokenizerFast``.  Every prompt becomes
``[BOS] words... [EOS] [PAD]...`` of exactly ``max_length`` ids.

Special ids are fixed: ``[PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3``.  The
``CLIPTextConfig`` carries the same ids.  Note that ``CLIPTextModel`` pools
with ``argmax(input_ids)`` when ``eos_token_id == 2`` (a legacy rule for
OpenAI's checkpoints) and at the first ``eos_token_id`` otherwise; with
``eos_token_id = 3`` the second rule applies, which is the right one for this
vocabulary.  The pooled output is not used by the UNet (only the token states
are), but it is correct for anyone who does.

The encoder is causal (as CLIP is), so the states of the padding tokens are a
function of the prompt before them; no attention mask is used anywhere, in
pretraining and sampling alike.
"""
from __future__ import annotations

import torch

from pcpo.tiny.prompts import vocabulary

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
MAX_LENGTH = 12


def build_tokenizer(max_length: int = MAX_LENGTH):
    """A fresh ``PreTrainedTokenizerFast`` over the tiny prompt vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in vocabulary():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=max_length, padding_side="right", truncation_side="right",
    )


def tokenize(tokenizer, prompts: list[str], max_length: int | None = None) -> torch.Tensor:
    """Token ids (B, max_length) of a batch of prompts, padded and truncated."""
    max_length = max_length or tokenizer.model_max_length
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length,
                    truncation=True, return_tensors="pt")
    return enc["input_ids"]


def build_text_encoder(tokenizer, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                       intermediate_size: int | None = None, seed: int | None = None):
    """A randomly initialised ``CLIPTextModel`` matching ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    return CLIPTextModel(config)


def encode_text(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Token states (B, max_length, hidden) of the text encoder (grad as the caller sets)."""
    device = next(text_encoder.parameters()).device
    ids = tokenize(tokenizer, prompts).to(device)
    return text_encoder(input_ids=ids).last_hidden_state
