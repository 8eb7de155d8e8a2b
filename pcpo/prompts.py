"""Prompt sources: each returns a list of (prompt, metadata) pairs.

Training prompts come from ``prompts:`` of the experiment config (:func:`get_prompts`).
Evaluation prompts come from ``evaluation.prompts:`` (:func:`evaluation_prompt_sets`): one
prompt set, or several named sets that each feed some metrics, e.g. the reward on a
benchmark's test prompts and FID on COCO captions::

    evaluation:
      prompts:
        reward: {source: file, path: data/prompts/pickscore_test.txt, metrics: [reward, diversity]}
        fid: {source: coco-captions, path: data/reference/coco2014-val-512-n30000, count: 30000,
              n_per_prompt: 1, metrics: [fid, kid, is, fd_dino]}

Sources: ``tiny`` (the tiny world's fixed evaluation prompts), ``file`` (one prompt per
line), ``coco-captions`` (a prepared reference folder's ``captions.jsonl``, one caption per
reference image; ``path`` is the folder or the file), ``list`` (inline ``prompts``).
``count: N`` keeps N prompts: the first N when ``seed`` is absent, else N drawn without
replacement by ``numpy.random.default_rng(seed)`` and kept in file order.  The selection
is a pure function of the file, ``count`` and ``seed``.
"""
from __future__ import annotations

import json
from pathlib import Path

from pcpo.config import ConfigError

EVAL_SOURCES = ("tiny", "file", "coco-captions", "list")
SET_KEYS = {"source", "path", "count", "seed", "n_per_prompt", "metrics", "prompts", "n_per_digit", "options"}


def _read_lines(path, field: str) -> list[str]:
    if not path or not Path(path).is_file():
        raise ConfigError(f"{field}: a text file with one prompt per line is required, got {path!r}"
                          + _fetch_hint(path))
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _fetch_hint(path) -> str:
    return "; fetch it with `pcpo data fetch --for CONFIG`" if path and str(path).startswith("data/") else ""


def get_prompts(source: str, options: dict | None = None, split: str = "train") -> list[tuple[str, dict]]:
    """Training prompts (``split="train"``), or the tiny world's evaluation prompts (``split="eval"``).

    A ``file`` source is one split only: ``split="eval"`` reads ``options.eval_path`` and
    fails without it, instead of evaluating on the training prompts.
    """
    options = dict(options or {})
    if source == "tiny":
        from pcpo.tiny import prompts as tp

        if split == "eval":
            return tp.eval_prompts(**options.get("eval", {}))
        return tp.training_prompts(**{k: v for k, v in options.items() if k != "eval"})
    if source == "file":
        if split == "eval":
            if not options.get("eval_path"):
                raise ConfigError("evaluation.prompts: the training prompt file is no evaluation split; name the "
                                  "held-out prompts (evaluation.prompts: {source: file, path: ...})")
            return [(ln, {}) for ln in _read_lines(options["eval_path"], "prompts.options.eval_path")]
        return [(ln, {}) for ln in _read_lines(options.get("path"), "prompts.options.path")]
    if source == "list":
        items = options.get("prompts")
        if not isinstance(items, list) or not items:
            raise ConfigError("prompts.options.prompts: a non-empty list of prompt strings is required")
        return [(str(p), {}) for p in items]
    raise ConfigError(f"prompts.source: unknown source {source!r}; use tiny, file or list")


def _select(items: list, count, seed, field: str) -> list:
    if count is None or count == "all":
        return items
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ConfigError(f"{field}.count: a positive integer is required, got {count!r}")
    if count > len(items):
        raise ConfigError(f"{field}.count: {count} prompts asked, the source has {len(items)}")
    if seed is None:
        return items[:count]
    import numpy as np

    keep = np.sort(np.random.default_rng(int(seed)).choice(len(items), size=count, replace=False))
    return [items[int(i)] for i in keep]


def _coco_captions(path, field: str) -> list[tuple[str, dict]]:
    p = Path(path) if path else None
    if p is not None and p.is_dir():
        p = p / "captions.jsonl"
    if p is None or not p.is_file():
        raise ConfigError(f"{field}.path: no captions.jsonl at {path!r} (a prepared reference folder with captions)"
                          + _fetch_hint(path))
    out = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out.append((str(rec["caption"]), {"reference_file": str(rec["file"])}))
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{p}:{n}: expected {{\"file\": ..., \"caption\": ...}}") from None
    if not out:
        raise ConfigError(f"{p}: no captions")
    return out


def prompt_set(spec: dict, field: str = "evaluation.prompts", n_per_digit: int | None = None) -> list[tuple[str, dict]]:
    """The prompts of one evaluation prompt set (see the module docstring)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{field}: a mapping with a source is required, got {spec!r}")
    unknown = sorted(set(spec) - SET_KEYS)
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}: unknown key; known: {', '.join(sorted(SET_KEYS))}")
    source = spec.get("source")
    if source == "tiny":
        from pcpo.tiny import prompts as tp

        k = n_per_digit if n_per_digit is not None else spec.get("n_per_digit", 5)
        items = tp.eval_prompts(n_per_digit=int(k))
    elif source == "file":
        items = [(ln, {}) for ln in _read_lines(spec.get("path"), f"{field}.path")]
    elif source == "coco-captions":
        items = _coco_captions(spec.get("path"), field)
    elif source == "list":
        got = spec.get("prompts")
        if not isinstance(got, list) or not got:
            raise ConfigError(f"{field}.prompts: a non-empty list of prompt strings is required")
        items = [(str(p), {}) for p in got]
    else:
        raise ConfigError(f"{field}.source: unknown source {source!r}; use {', '.join(EVAL_SOURCES)}")
    return _select(items, spec.get("count"), spec.get("seed"), field)


def evaluation_prompt_sets(evaluation: dict | None, train_source: str | None = None,
                           train_options: dict | None = None) -> dict[str, dict]:
    """``{set name: spec}`` of ``evaluation.prompts``; a single set (a mapping with ``source``) is named
    ``all``.  Without ``evaluation.prompts``, the tiny world keeps its fixed evaluation prompts; any
    other training source fails (its prompts are training prompts, not a held-out split)."""
    ev = evaluation or {}
    spec = ev.get("prompts")
    if spec is None:
        if train_source in (None, "tiny"):
            return {"all": {"source": "tiny", **(train_options or {}).get("eval", {})}}
        raise ConfigError("evaluation.prompts: name the held-out evaluation prompts (e.g. {source: file, path: "
                          "data/prompts/..._test.txt, count: N}); the training prompts are not evaluated")
    if not isinstance(spec, dict) or not spec:
        raise ConfigError("evaluation.prompts: a prompt set {source: ...} or named sets {NAME: {source: ...}}")
    if "source" in spec:
        return {"all": dict(spec)}
    sets = {}
    claimed: dict[str, str] = {}
    for name, s in spec.items():
        if not isinstance(s, dict) or "source" not in s:
            raise ConfigError(f"evaluation.prompts.{name}: a prompt set {{source: ...}} is required")
        for m in s.get("metrics") or []:
            if m in claimed:
                raise ConfigError(f"evaluation.prompts.{name}.metrics: {m!r} is already measured on set {claimed[m]!r}")
            claimed[m] = name
        sets[str(name)] = dict(s)
    return sets
