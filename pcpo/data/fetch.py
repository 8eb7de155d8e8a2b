"""``fetch(names)``: obtain catalogue entries, verify them and record a stamp for each.

A stamp ``<root>/.fetched/<name>.json`` is written (atomically) only after the entry's files are in
place and verified; it records where they are, their sha256 and the revision.  Snakemake jobs take the
stamps as inputs.  An entry whose stamp exists and whose files are still there is not fetched again
(``force`` re-fetches, ``check(..., full=True)`` re-hashes).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

from pcpo.data.catalogue import DataError, Entry, get_entry, load_catalogue
from pcpo.data.download import (download_url, hf_command, hf_endpoint, hf_error, sha256_file, verify_snapshot)

log = logging.getLogger(__name__)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$PCPO_DATA``, else ``data`` (relative to the working directory)."""
    return Path(root or os.environ.get("PCPO_DATA") or "data")


def stamp_path(root: str | os.PathLike, name: str) -> Path:
    return Path(root) / ".fetched" / f"{name}.json"


def read_stamp(root, name: str) -> dict | None:
    import json

    p = stamp_path(root, name)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def fetch_command(entry: Entry) -> str:
    return f"pcpo data fetch {entry.name}"


def torch_hub_checkpoint(hub_filename: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` looks for ``hub_filename`` (honours ``TORCH_HOME``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / hub_filename


def _present(stamp: dict | None) -> bool:
    if not stamp:
        return False
    p = Path(stamp.get("path", ""))
    if stamp.get("is_dir"):
        ok = p.is_dir()
    else:
        ok = p.is_file() and (stamp.get("size") is None or p.stat().st_size == stamp["size"])
    prep = stamp.get("prepared")
    if ok and prep:
        from pcpo.data.prepare import check_image_folder

        ok = check_image_folder(prep["path"]) is not None
    return ok


def _stamp_matches(e: Entry, stamp: dict) -> bool:
    """The stamp was written for this version of the entry (same pinned sha256 / revision / preparation)."""
    if e.kind in ("url", "torch_hub_file") and e.sha256 is not None:
        if (stamp.get("archive_sha256") or stamp.get("sha256")) != e.sha256:
            return False
    if e.kind == "hf_file" and e.sha256 is not None and stamp.get("sha256") != e.sha256:
        return False
    if e.kind.startswith("hf_") and stamp.get("revision") != e.revision:
        return False
    if e.prepare:
        prep = stamp.get("prepared") or {}
        if (prep.get("n_images"), prep.get("resolution")) != (int(e.prepare["n"]), int(e.prepare["resolution"])):
            return False
    return True


def _copy_atomic(src: Path, dest: Path) -> None:
    from pcpo.utils import atomic_path

    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def _extract_member(archive: Path, member: str, dest: Path, what: str) -> None:
    from pcpo.utils import atomic_path

    try:
        with zipfile.ZipFile(archive) as z, z.open(member) as src, atomic_path(dest) as tmp:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
    except KeyError as e:
        raise DataError(f"{what}: the archive {archive} has no member {member!r} (catalogue field extract.member)") from e
    except zipfile.BadZipFile as e:
        raise DataError(f"{what}: {archive} is not a zip archive ({e})") from e


# ---------------------------------------------------------------------------
# one entry per kind
# ---------------------------------------------------------------------------

def _fetch_url(e: Entry, root: Path, progress: bool) -> dict:
    cmd = fetch_command(e)
    if e.kind == "torch_hub_file":
        target = torch_hub_checkpoint(e.hub_filename)
    elif e.extract:
        target = root / ".downloads" / Path(e.url.split("?")[0]).name
    else:
        target = e.dest_path(root)
    sha = download_url(e.url, target, sha256=e.sha256, size=e.size, what=f"{e.name} ({target.name})", command=cmd,
                       progress=progress)
    stamp = {"path": str(target), "sha256": sha, "size": target.stat().st_size}
    if e.extract:
        dest = e.dest_path(root) or target.with_name(Path(e.extract["member"]).name)
        _extract_member(target, e.extract["member"], dest, e.name)
        stamp.update(archive=str(target), archive_sha256=sha, member=e.extract["member"], path=str(dest),
                     sha256=sha256_file(dest), size=dest.stat().st_size)
    return stamp


def _hf_call(e: Entry, fn, **kw):
    try:
        return fn(**kw)
    except Exception as err:  # noqa: BLE001 - mapped to one line below, else re-raised
        mapped = hf_error(err, repo=e.repo, repo_type=e.repo_type, filename=e.filename, revision=e.revision,
                          command=fetch_command(e), alt=hf_command(e.repo, e.repo_type, e.filename, e.revision),
                          gated=e.gated)
        if mapped is None:
            raise
        raise mapped from err


def _fetch_hf_file(e: Entry, root: Path, progress: bool) -> dict:
    from huggingface_hub import hf_hub_download

    path = Path(_hf_call(e, hf_hub_download, repo_id=e.repo, filename=e.filename, repo_type=e.repo_type,
                         revision=e.revision, endpoint=hf_endpoint()))
    blob = Path(os.path.realpath(path))
    expect = e.sha256 or (blob.name if len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name)
                          else None)
    got = sha256_file(path)
    if expect is not None and got != expect:
        blob.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {e.filename} of {e.source_label()}: expected sha256 {expect}, got "
                        f"{got}; the cached file was deleted, run `{fetch_command(e)}` again")
    if e.sha256 is None:
        log.warning("%s: no pinned sha256 in the catalogue; recorded %s", e.name, got)
    stamp = {"path": str(path), "sha256": got, "size": path.stat().st_size, "revision": e.revision}
    dest = e.dest_path(root)
    if dest is not None:
        _copy_atomic(path, dest)
        stamp.update(path=str(dest), cache_path=str(path))
    return stamp


def _fetch_hf_snapshot(e: Entry, root: Path, progress: bool) -> dict:
    import hashlib

    from huggingface_hub import snapshot_download

    dest = e.dest_path(root)
    kw = dict(repo_id=e.repo, repo_type=e.repo_type, revision=e.revision, endpoint=hf_endpoint(),
              allow_patterns=list(e.allow_patterns) if e.allow_patterns else None)
    if dest is not None:
        kw["local_dir"] = str(dest)
    folder = Path(_hf_call(e, snapshot_download, **kw))
    if dest is None:
        files = verify_snapshot(folder)
    else:  # a local_dir copy has no content-addressed blobs: compare with the hub's LFS sha256 listing
        from huggingface_hub import HfApi

        tree = _hf_call(e, lambda: list(HfApi(endpoint=hf_endpoint()).list_repo_tree(
            e.repo, recursive=True, revision=e.revision, repo_type=e.repo_type)))
        files = {}
        for f in tree:
            p = folder / getattr(f, "path", "")
            lfs = getattr(f, "lfs", None)
            if p.is_file() and lfs is not None:
                got = sha256_file(p)
                if got != lfs.sha256:
                    p.unlink()
                    raise DataError(f"checksum mismatch for {p}: expected sha256 {lfs.sha256}, got {got} "
                                    f"(source {e.source_label()}); the file was deleted, run `{fetch_command(e)}`")
                files[f.path] = got
    if not files:
        raise DataError(f"{e.source_label()}: the snapshot has no files (check the catalogue's allow_patterns)")
    digest = hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    return {"path": str(folder), "is_dir": True, "sha256": digest, "files": files, "revision": e.revision,
            "commit": folder.name if dest is None else None}


FETCHERS = {"url": _fetch_url, "torch_hub_file": _fetch_url, "hf_file": _fetch_hf_file,
            "hf_snapshot": _fetch_hf_snapshot}


def fetch_entry(e: Entry, cat: dict[str, Entry], root: str | os.PathLike, *, progress: bool = True,
                force: bool = False, workers: int | None = None, _seen: tuple = ()) -> dict:
    """Fetch (and prepare) one entry unless its stamp says it is present; returns the stamp."""
    from pcpo.utils import atomic_write_json

    root = Path(root)
    if e.name in _seen:
        raise DataError(f"catalogue entry {e.name!r}: prepare.captions_from forms a cycle")
    old = read_stamp(root, e.name)
    if not force and _present(old) and _stamp_matches(e, old):
        log.info("%s: present and verified (%s)", e.name, old["path"])
        return old
    log.info("%s: fetching from %s", e.name, e.source_label())
    stamp = {"name": e.name, "kind": e.kind, "source": e.source_label()}
    stamp.update(FETCHERS[e.kind](e, root, progress))
    if e.prepare:
        prep = e.prepare
        captions = None
        if prep.get("captions_from"):
            cap = fetch_entry(get_entry(cat, prep["captions_from"]), cat, root, progress=progress, force=False,
                              _seen=_seen + (e.name,))
            captions = cap["path"]
        from pcpo.data.prepare import check_image_folder, prepare_image_folder

        out = e.prepared_path(root)
        manifest = None if force else check_image_folder(out)
        if manifest is not None and (manifest.get("source"), manifest.get("seed")) == (e.source_label(),
                                                                                      int(prep.get("seed", 0))):
            log.info("%s: %s is already prepared (%d images)", e.name, out, manifest["n_images"])
        else:
            manifest = prepare_image_folder(stamp["path"], out, name=e.name, source=e.source_label(),
                                            n=int(prep["n"]), resolution=int(prep["resolution"]),
                                            seed=int(prep.get("seed", 0)), captions=captions, workers=workers,
                                            progress=progress)
        stamp["prepared"] = {"path": str(out), "n_images": manifest["n_images"],
                             "resolution": manifest["resolution"], "files_sha256": manifest["files_sha256"]}
    stamp["fetched"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(stamp_path(root, e.name), stamp)
    log.info("%s: verified (sha256 %s) at %s", e.name, stamp["sha256"], stamp.get("prepared", stamp)["path"])
    return stamp


def fetch(names: list[str], *, catalogue: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
          progress: bool = True, force: bool = False, workers: int | None = None) -> list[dict]:
    cat = load_catalogue(catalogue)
    entries = [get_entry(cat, n) for n in names]  # every name checked before anything is downloaded
    return [fetch_entry(e, cat, data_root(root), progress=progress, force=force, workers=workers) for e in entries]


def status(entry: Entry, root: str | os.PathLike, *, full: bool = False) -> str:
    """``missing``, ``present`` (stamp and files there) or, with ``full``, ``verified`` / ``CORRUPT``."""
    stamp = read_stamp(root, entry.name)
    if not _present(stamp):
        return "missing"
    if not full:
        return "present"
    p = Path(stamp["path"])
    if stamp.get("is_dir"):
        try:
            verify_snapshot(p) if stamp.get("commit") else None
        except DataError:
            return "CORRUPT"
    elif sha256_file(p) != stamp["sha256"]:
        return "CORRUPT"
    if stamp.get("prepared"):
        from pcpo.data.prepare import check_image_folder

        if check_image_folder(stamp["prepared"]["path"], full=True) is None:
            return "CORRUPT"
    return "verified"
