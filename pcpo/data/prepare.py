"""Prepare a reference image set: N images of an archive, chosen by a seed, centre-cropped and resized.

The folder ``<root>/<name>-<resolution>-n<N>/`` holds ``000000.png ...``, ``captions.jsonl`` (one
``{"file", "caption", "source"}`` per line, when a captions source is given) and ``manifest.json``
(``name, source, n_images, resolution, seed, files_sha256, created``), written last.  The images are
decoded, resized and written one window at a time (never all in memory); the folder appears under its
final name only when complete (it is built under a temporary name and renamed).

Captions sources: a COCO annotation file (``{"images": [{id, file_name}], "annotations": [{image_id,
caption}]}``; the caption with the lowest annotation id of each image) or a mapping ``{image stem:
{"prompt": ...}}`` (MJHQ-30K's ``meta_data.json``).  Images are matched to captions by file name (COCO)
or stem (mapping).
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from pcpo.data.catalogue import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
WINDOW = 64


def center_crop_resize(img, resolution: int):
    """The central square of ``img`` resized to ``resolution`` (PIL bicubic, with PIL's antialiasing)."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != resolution:
        img = img.resize((resolution, resolution), Image.BICUBIC)
    return img


def read_captions(path: str | os.PathLike | None) -> dict[str, str] | None:
    """``{file name or stem: caption}`` from a COCO captions file or a ``{stem: {prompt}}`` mapping."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"captions file {path} cannot be read as JSON ({e})") from e
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        names = {im["id"]: im["file_name"] for im in data["images"]}
        best: dict[str, tuple[int, str]] = {}
        for a in data["annotations"]:
            fname = names.get(a["image_id"])
            if fname is None:
                continue
            key = (int(a.get("id", 0)), str(a["caption"]).strip())
            if fname not in best or key < best[fname]:
                best[fname] = key
        return {k: v[1] for k, v in best.items()}
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            cap = v.get("prompt") or v.get("caption") if isinstance(v, dict) else v
            if isinstance(cap, str):
                out[str(k)] = cap.strip()
        return out
    raise DataError(f"captions file {path}: expected COCO annotations or a mapping of image id to prompt")


def _caption(captions: dict[str, str] | None, member: str) -> str | None:
    if captions is None:
        return None
    name = Path(member).name
    return captions.get(name) or captions.get(Path(name).stem)


def _members(archive: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as z:
            names = [i.filename for i in z.infolist()
                     if not i.is_dir() and i.filename.lower().endswith(IMAGE_SUFFIXES)
                     and not Path(i.filename).name.startswith(".") and "__MACOSX" not in i.filename]
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive} is not a zip archive ({e})") from e
    return sorted(names)


_local = threading.local()


def _zip(archive: Path) -> zipfile.ZipFile:
    """This thread's open handle on ``archive`` (reading a large zip's directory once per thread, not per window)."""
    z = getattr(_local, "zips", {}).get(str(archive))
    if z is None:
        _local.zips = getattr(_local, "zips", {})
        z = _local.zips[str(archive)] = zipfile.ZipFile(archive)
    return z


def _render(archive: Path, members: list[str], resolution: int) -> list[bytes]:
    """Decode, crop, resize and PNG-encode ``members`` (one window; PIL releases the GIL while it works)."""
    from PIL import Image

    out = []
    z = _zip(archive)
    for m in members:
        with z.open(m) as f:
            img = Image.open(io.BytesIO(f.read()))
            img.load()
        buf = io.BytesIO()
        # zlib level 1: lossless like any level, 5x less CPU than the default 6 for ~17% larger files
        center_crop_resize(img, resolution).save(buf, format="PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def files_sha256(lines: list[tuple[str, str]]) -> str:
    """sha256 over the sorted ``"name sha256"`` lines of the images (the manifest's ``files_sha256``)."""
    text = "".join(f"{n} {h}\n" for n, h in sorted(lines))
    return hashlib.sha256(text.encode()).hexdigest()


def prepare_image_folder(archive: str | os.PathLike, out: str | os.PathLike, *, name: str, source: str, n: int,
                         resolution: int, seed: int = 0, captions: str | os.PathLike | None = None,
                         workers: int | None = None, progress: bool = True) -> dict:
    """Build the prepared folder ``out`` from the images of the zip ``archive``; returns the manifest."""
    import numpy as np
    from tqdm.auto import tqdm

    archive, out = Path(archive), Path(out)
    members = _members(archive)
    if len(members) < n:
        raise DataError(f"{archive} holds {len(members)} images, fewer than the {n} the catalogue's prepare.n asks")
    caps = read_captions(captions)
    chosen = sorted(np.random.default_rng(int(seed)).choice(len(members), size=n, replace=False).tolist())
    picked = [members[i] for i in chosen]
    if caps is not None:
        missing = [m for m in picked if _caption(caps, m) is None]
        if missing:
            raise DataError(f"{len(missing)} chosen images of {archive} have no caption in {captions} "
                            f"(first: {missing[0]})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    workers = workers or min(8, os.cpu_count() or 1)
    hashes: list[tuple[str, str]] = []
    try:
        windows = [picked[i:i + WINDOW] for i in range(0, n, WINDOW)]
        with cf.ThreadPoolExecutor(workers) as pool, \
                open(tmp / "captions.jsonl", "w") as capf, \
                tqdm(total=n, unit="img", desc=f"prepare {name}", disable=not progress) as bar:
            pending: list[cf.Future] = []
            nxt = 0
            idx = 0
            while idx < len(windows):
                while nxt < len(windows) and len(pending) < 2 * workers:  # a bounded look-ahead
                    pending.append(pool.submit(_render, archive, windows[nxt], resolution))
                    nxt += 1
                pngs = pending.pop(0).result()
                for member, png in zip(windows[idx], pngs):
                    fname = f"{len(hashes):06d}.png"
                    (tmp / fname).write_bytes(png)
                    hashes.append((fname, hashlib.sha256(png).hexdigest()))
                    if caps is not None:
                        capf.write(json.dumps({"file": fname, "caption": _caption(caps, member),
                                               "source": member}) + "\n")
                    bar.update(1)
                idx += 1
        if caps is None:
            (tmp / "captions.jsonl").unlink()
        manifest = {"name": name, "source": source, "n_images": n, "resolution": int(resolution), "seed": int(seed),
                    "files_sha256": files_sha256(hashes),
                    "captions": "captions.jsonl" if caps is not None else None,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        from pcpo.utils import atomic_write_json

        atomic_write_json(tmp / "manifest.json", manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def check_image_folder(folder: str | os.PathLike, *, full: bool = False) -> dict | None:
    """The manifest of a complete prepared folder (``full``: re-hash every image), else None."""
    folder = Path(folder)
    mf = folder / "manifest.json"
    if not mf.is_file():
        return None
    manifest = json.loads(mf.read_text())
    files = sorted(folder.glob("*.png"))
    if len(files) != manifest.get("n_images"):
        return None
    if full:
        got = files_sha256([(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files])
        if got != manifest.get("files_sha256"):
            return None
    return manifest
