"""Text prompts of the tiny world.

A prompt names one digit, either as a word ("seven") or as a numeral ("7"),
through one of a few templates, optionally with attribute adjectives measured
on the real image (see :mod:`pcpo.tiny.data`): "a bold slanted handwritten
digit seven".  The closed vocabulary of all templates is what the tiny
tokenizer is built from (:func:`vocabulary`).
"""
from __future__ import annotations

import re

import torch

from pcpo.tiny.data import SLANT_WORDS, THICKNESS_WORDS

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: ``{adj}`` is empty or a space-terminated run of adjectives; ``{w}`` is the
#: digit as a word, ``{n}`` as a numeral.
TEMPLATES = (
    "a {adj}handwritten digit {w}",
    "a {adj}drawing of the number {n}",
    "the {adj}number {w}",
    "a {adj}handwritten {w}",
    "{adj}digit {n}",
)

_WORD_TO_DIGIT = {w: i for i, w in enumerate(DIGIT_WORDS)}
_WORD_TO_DIGIT.update({str(i): i for i in range(10)})
_TOKEN = re.compile(r"[a-z]+|[0-9]")


def format_prompt(digit: int, template: int = 0, adjectives: tuple[str, ...] | list[str] = ()) -> str:
    """The prompt of ``digit`` with template number ``template`` and adjectives."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit!r}")
    adj = "".join(f"{a} " for a in adjectives if a)
    text = TEMPLATES[template % len(TEMPLATES)].format(adj=adj, w=DIGIT_WORDS[digit], n=str(digit))
    if text.startswith("a ") and text[2] in "aeiou":
        text = "an " + text[2:]
    return text


def vocabulary() -> list[str]:
    """Every word any prompt can contain, in a fixed order."""
    words: list[str] = []
    for t in TEMPLATES:
        for tok in t.replace("{adj}", " ").replace("{w}", " ").replace("{n}", " ").split():
            if tok not in words:
                words.append(tok)
    words += list(DIGIT_WORDS) + [str(i) for i in range(10)]
    words += list(THICKNESS_WORDS) + list(SLANT_WORDS) + ["an"]
    return words


def parse_digit(prompt: str) -> int | None:
    """The digit a prompt names (word or numeral; the first one wins), or None."""
    for tok in _TOKEN.findall(prompt.lower()):
        if tok in _WORD_TO_DIGIT:
            return _WORD_TO_DIGIT[tok]
    return None


def training_prompts(attributes: bool = False, digits: tuple[int, ...] | None = None) -> list[tuple[str, dict]]:
    """The RL training prompt set: every digit in every template.

    With ``attributes=True`` each (digit, template) pair also appears with
    every thickness and every slant adjective (and both together).  Metadata
    holds ``digit``, ``template`` and the ``thickness``/``slant`` words (""
    when absent).
    """
    digits = tuple(range(10)) if digits is None else tuple(digits)
    combos: list[tuple[str, str]] = [("", "")]
    if attributes:
        combos += [(t, "") for t in THICKNESS_WORDS] + [("", s) for s in SLANT_WORDS]
        combos += [(t, s) for t in THICKNESS_WORDS for s in SLANT_WORDS]
    out = []
    for k in digits:
        for ti in range(len(TEMPLATES)):
            for thick, slant in combos:
                out.append((format_prompt(k, ti, (thick, slant)),
                            {"digit": k, "template": ti, "thickness": thick, "slant": slant}))
    return out


def eval_prompts(n_per_digit: int = 5) -> list[tuple[str, dict]]:
    """A fixed, deterministic evaluation set: ``n_per_digit`` prompts per digit
    (cycling through the templates, no attributes), ordered digit-major."""
    out = []
    for k in range(10):
        for j in range(n_per_digit):
            ti = j % len(TEMPLATES)
            out.append((format_prompt(k, ti), {"digit": k, "template": ti, "thickness": "", "slant": ""}))
    return out


def captions(digits, thickness_words, slant_words, generator: torch.Generator,
             attribute_prob: float = 0.5, dropout: float = 0.1) -> list[str]:
    """Random pretraining captions for a batch of real images.

    Per image: with probability ``dropout`` the empty prompt (for
    classifier-free guidance); otherwise a uniformly drawn template, and each
    of the image's attribute words is kept with probability
    ``attribute_prob``.  All randomness comes from ``generator``.
    """
    n = len(digits)
    u = torch.rand(n, 3, generator=generator)
    templates = torch.randint(len(TEMPLATES), (n,), generator=generator)
    out = []
    for i in range(n):
        if u[i, 0].item() < dropout:
            out.append("")
            continue
        adjectives = []
        if thickness_words[i] and u[i, 1].item() < attribute_prob:
            adjectives.append(thickness_words[i])
        if slant_words[i] and u[i, 2].item() < attribute_prob:
            adjectives.append(slant_words[i])
        out.append(format_prompt(int(digits[i]), int(templates[i]), adjectives))
    return out
