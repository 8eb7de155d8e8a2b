"""Prompt sources: each returns a list of (prompt, metadata) pairs."""
from __future__ import annotations

from pathlib import Path

from pcpo.config import ConfigError


def get_prompts(source: str, options: dict | None = None, split: str = "train") -> list[tuple[str, dict]]:
    options = dict(options or {})
    if source == "tiny":
        from pcpo.tiny import prompts as tp

        if split == "eval":
            return tp.eval_prompts(**options.get("eval", {}))
        return tp.training_prompts(**{k: v for k, v in options.items() if k != "eval"})
    if source == "file":
        path = options.get("path")
        if not path or not Path(path).is_file():
            raise ConfigError(f"prompts.options.path: a text file with one prompt per line is required, got {path!r}")
        lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
        return [(ln, {}) for ln in lines if ln and not ln.startswith("#")]
    if source == "list":
        items = options.get("prompts")
        if not isinstance(items, list) or not items:
            raise ConfigError("prompts.options.prompts: a non-empty list of prompt strings is required")
        return [(str(p), {}) for p in items]
    raise ConfigError(f"prompts.source: unknown source {source!r}; use tiny, file or list")
