"""The catalogue of fetchable data: ``pcpo/data/sources.yaml`` (format: SOURCES_SCHEMA, summarised in
README "Data and weights").

Each entry names one thing ``pcpo data fetch NAME`` can obtain: a plain file (``url``), a file or a
snapshot of a Hugging Face repository (``hf_file``, ``hf_snapshot``) or a weights file that a library
loads through torch.hub's cache (``torch_hub_file``).  Loading validates every entry and fails in one
line naming the entry and the field.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CATALOGUE = Path(__file__).with_name("sources.yaml")
KINDS = ("url", "hf_file", "hf_snapshot", "torch_hub_file")
_SHA = re.compile(r"[0-9a-f]{64}")


class DataError(ValueError):
    """A fetch, check or preparation failed for a reason the user can act on; the message is one line."""

    user_facing = True


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    description: str = ""
    url: str | None = None
    sha256: str | None = None
    sha256_note: str | None = None
    size: int | None = None
    dest: str | None = None
    reference: str | None = None
    licence: str | None = None
    gated: bool = False
    repo: str | None = None
    repo_type: str = "model"
    revision: str | None = None
    filename: str | None = None
    allow_patterns: tuple[str, ...] | None = None
    hub_filename: str | None = None
    extract: dict[str, Any] | None = None
    prepare: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # --- where things land -------------------------------------------------------------------------
    def dest_path(self, root: str | os.PathLike) -> Path | None:
        """``dest`` under the data root.  Catalogue paths are written as the default layout
        (``data/prompts/x.txt``); the leading ``data/`` stands for the root."""
        return None if self.dest is None else under_root(self.dest, root)

    def prepared_path(self, root: str | os.PathLike) -> Path | None:
        """The prepared image folder ``<root>/<name>-<resolution>-n<N>`` (entries with ``prepare``)."""
        if not self.prepare:
            return None
        return Path(root) / f"{self.name}-{int(self.prepare['resolution'])}-n{int(self.prepare['n'])}"

    def source_label(self) -> str:
        """Where the entry comes from, for messages: the URL or ``hf://[datasets/]repo[/file]@rev``."""
        if self.kind in ("url", "torch_hub_file"):
            return str(self.url)
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        tail = f"/{self.filename}" if self.filename else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{prefix}{self.repo}{tail}{rev}"


def under_root(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """A catalogue/config path written for the default root ``data/`` rebased on ``root``."""
    p = Path(path)
    if p.is_absolute():
        return p
    parts = p.parts
    if parts and parts[0] == "data":
        p = Path(*parts[1:]) if len(parts) > 1 else Path(".")
    return Path(root) / p


def _fail(path, name: str, msg: str) -> DataError:
    return DataError(f"{path}: entry {name!r}: {msg}")


def _entry(path, name: str, raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise _fail(path, name, f"expected a mapping, got {type(raw).__name__}")
    d = dict(raw)
    kind = d.pop("kind", None)
    if kind not in KINDS:
        raise _fail(path, name, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    known = {f for f in Entry.__dataclass_fields__ if f not in ("name", "kind", "extra")}
    kw = {k: d.pop(k) for k in list(d) if k in known}
    sha = kw.get("sha256")
    if sha is not None:
        sha = str(sha).lower()
        if not _SHA.fullmatch(sha):
            raise _fail(path, name, f"sha256 must be 64 hex digits or null, got {kw['sha256']!r}")
        kw["sha256"] = sha
    elif not kw.get("sha256_note") and kind in ("url", "torch_hub_file", "hf_file"):
        raise _fail(path, name, "sha256 is null but sha256_note does not say why")
    if kind in ("url", "torch_hub_file") and not kw.get("url"):
        raise _fail(path, name, f"kind {kind} needs url")
    if kind == "torch_hub_file" and not kw.get("hub_filename"):
        raise _fail(path, name, "kind torch_hub_file needs hub_filename (the name under $TORCH_HOME/hub/checkpoints/)")
    if kind == "url" and not kw.get("dest"):
        raise _fail(path, name, "kind url needs dest (where the verified file lands)")
    if kind in ("hf_file", "hf_snapshot"):
        if not kw.get("repo"):
            raise _fail(path, name, f"kind {kind} needs repo")
        if kw.get("repo_type", "model") not in ("model", "dataset"):
            raise _fail(path, name, f"repo_type must be model or dataset, got {kw['repo_type']!r}")
    if kind == "hf_file" and not kw.get("filename"):
        raise _fail(path, name, "kind hf_file needs filename")
    if kw.get("allow_patterns") is not None:
        kw["allow_patterns"] = tuple(str(p) for p in kw["allow_patterns"])
    prep = kw.get("prepare")
    if prep is not None:
        if not isinstance(prep, dict) or prep.get("kind", "image_folder") != "image_folder":
            raise _fail(path, name, "prepare must be {kind: image_folder, n, resolution, seed, captions_from}")
        for k in ("n", "resolution"):
            if not isinstance(prep.get(k), int) or prep[k] <= 0:
                raise _fail(path, name, f"prepare.{k} must be a positive integer, got {prep.get(k)!r}")
    ext = kw.get("extract")
    if ext is not None and (not isinstance(ext, dict) or not ext.get("member")):
        raise _fail(path, name, "extract must be {member: PATH-IN-ARCHIVE}")
    if kw.get("size") is not None:
        kw["size"] = int(kw["size"])
    kw["gated"] = bool(kw.get("gated", False))
    return Entry(name=name, kind=kind, extra=d, **kw)


def load_catalogue(path: str | os.PathLike | None = None) -> dict[str, Entry]:
    """All entries of the catalogue at ``path`` (default: ``$PCPO_DATA_CATALOGUE`` or pcpo/data/sources.yaml)."""
    path = Path(path or os.environ.get("PCPO_DATA_CATALOGUE") or DEFAULT_CATALOGUE)
    if not path.is_file():
        raise DataError(f"data catalogue {path} does not exist (pass --catalogue or set PCPO_DATA_CATALOGUE)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"data catalogue {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise DataError(f"data catalogue {path}: expected a mapping of NAME -> entry")
    cat = {str(k): _entry(path, str(k), v) for k, v in raw.items()}
    for e in cat.values():
        src = (e.prepare or {}).get("captions_from")
        if src is not None and src not in cat:
            raise _fail(path, e.name, f"prepare.captions_from names {src!r}, which is not in the catalogue")
    return cat


def get_entry(cat: dict[str, Entry], name: str) -> Entry:
    if name not in cat:
        raise DataError(f"unknown data name {name!r}; `pcpo data list` shows the {len(cat)} known names")
    return cat[name]
