"""Data and weights: the catalogue (sources.yaml), verified downloads, image-set preparation.

``pcpo data fetch NAME|--for CONFIG`` and ``pcpo data list`` (pcpo/data/cli.py); the Snakemake rule in
workflow/rules/data.smk.  See README "Data and weights".
"""
from __future__ import annotations

from pcpo.data.catalogue import DEFAULT_CATALOGUE, DataError, Entry, get_entry, load_catalogue, under_root
from pcpo.data.fetch import data_root, fetch, fetch_entry, read_stamp, stamp_path, status, torch_hub_checkpoint
from pcpo.data.needs import Needs, needs_for_config, needs_for_file

__all__ = ["DEFAULT_CATALOGUE", "DataError", "Entry", "Needs", "data_root", "fetch", "fetch_entry", "get_entry",
           "hub_revision", "load_catalogue", "local_file", "needs_for_config", "needs_for_file", "read_stamp",
           "stamp_path", "status", "torch_hub_checkpoint", "under_root"]


def _catalogue_or_none():
    try:
        return load_catalogue()
    except DataError:
        return None


def hub_revision(repo: str) -> str | None:
    """The revision the catalogue pins for the hub repository ``repo`` (its hf_snapshot entry), else None."""
    cat = _catalogue_or_none() or {}
    for e in sorted(cat.values(), key=lambda e: e.name):
        if e.kind == "hf_snapshot" and e.repo == repo and e.revision and e.revision != "main":
            return e.revision
    return None


def local_file(basename: str, *, fetch_missing: bool = True, root=None):
    """The data-root path of the catalogue file named ``basename`` (an entry's dest, url or filename), fetched
    now when it is missing and ``fetch_missing``; ``(None, None)`` when no entry has that file, else
    ``(path or None, entry)``."""
    from pathlib import PurePosixPath

    cat = _catalogue_or_none() or {}
    for e in sorted(cat.values(), key=lambda e: e.name):
        names = {PurePosixPath(str(s).split("?")[0]).name for s in (e.dest, e.filename, e.url) if s}
        if basename not in names or e.prepare:
            continue
        stamp = read_stamp(data_root(root), e.name)
        dest = e.dest_path(data_root(root))
        if stamp is None and not (dest is not None and dest.is_file()) and fetch_missing:
            stamp = fetch_entry(e, cat, data_root(root))
        if stamp is not None:
            return stamp["path"], e
        return (str(dest) if dest is not None and dest.is_file() else None), e
    return None, None
