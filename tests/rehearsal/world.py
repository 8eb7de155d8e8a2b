"""The rehearsal's stand-in internet: a loopback hub, a loopback file server and a catalogue for them.

:func:`build_world` writes, under one folder,

* ``hub/<org>/<name>/``: the tiny same-class repositories of :mod:`tests.rehearsal.tiny_hub` under the
  real ids, and ``hub/datasets/<org>/<name>/`` for dataset repositories (MJHQ-30K, and the HPS v2
  benchmark's per-style prompt JSONs of zhwang/HPDv2);
* ``files/<host>/<path>``: one fixture per plain-URL catalogue entry, at the URL's path (what
  ``PCPO_DATA_ENDPOINT`` rewrites ``https://HOST/PATH`` to): a few prompts, a COCO-like image zip and
  caption zip, the aesthetic head, the fixed-architecture Inception and AlexNet weights;
* ``catalogue.yaml``: the project's catalogue (pcpo/data/sources.yaml) with each entry's checksums, size
  and hub revision replaced by the fixture's, and the prepared image sets cut to a few images. Every
  other field (names, URLs, repos, destinations, members, resolutions, captions) is the real one.

:func:`serve_world` starts the two servers and yields the environment a run needs
(``HF_ENDPOINT``, ``PCPO_DATA_ENDPOINT``, ``PCPO_DATA_CATALOGUE``, ``HF_HOME``, ``TORCH_HOME``, ...).
Entries the paper configs do not need and that cannot be made small (the DINOv2 ViT-L/14 torch.hub
file, VGG16) get no fixture; fetching one fails with the data code's own error.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

from tests.rehearsal import tiny_hub as th

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "pcpo" / "data" / "sources.yaml"
N_IMAGES = 8  # images of each reference set (COCO, MJHQ) and of each prepared folder

PROMPTS = ["a red cat on a sofa", "a blue dog in the snow", "two birds on a branch", "a green apple",
           "a cat wearing a hat", "a dog riding a bicycle", "an owl at night", "a horse on a beach"]
HELD_OUT = ["a yellow boat on a lake", "a small house in a forest", "a train at a station", "a cup of tea"]
ANIMALS = ["cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _image_bytes(i: int, fmt: str, size=(64, 48)) -> bytes:
    """A small deterministic picture (a colour gradient with a block), encoded as ``fmt``."""
    import numpy as np
    from PIL import Image

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // w + 40 * i) % 256, (y * 255 // h + 70 * i) % 256,
                    np.full_like(x, (30 * i) % 256)], -1).astype("uint8")
    rgb[h // 4: h // 2, w // 4: w // 2] = (255 - 20 * i) % 256
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2014, 1, 1, 0, 0, 0))  # fixed: same bytes every build
            z.writestr(info, data)


COCO_IDS = [42 + 1000 * i for i in range(N_IMAGES)]


def _coco_images(path: Path) -> None:
    _zip(path, {f"val2014/COCO_val2014_{i:012d}.jpg": _image_bytes(k, "JPEG") for k, i in enumerate(COCO_IDS)})


def _coco_captions(path: Path, member: str) -> None:
    doc = {"info": {"description": "rehearsal stand-in for COCO 2014 captions"},
           "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "width": 64, "height": 48}
                      for i in COCO_IDS],
           "annotations": [{"id": 10 * k + j, "image_id": i, "caption": f"{PROMPTS[k]} ({j})"}
                           for k, i in enumerate(COCO_IDS) for j in range(2)]}
    _zip(path, {member: json.dumps(doc).encode()})


def _mjhq(folder: Path) -> None:
    cats = ["animals", "people"]
    names = {f"{k:040x}": cats[k % 2] for k in range(N_IMAGES)}
    _zip(folder / "mjhq30k_imgs.zip", {f"{c}/{n}.jpg": _image_bytes(k, "JPEG") for k, (n, c) in
                                       enumerate(names.items())})
    (folder / "meta_data.json").write_text(json.dumps(
        {n: {"category": c, "prompt": PROMPTS[k]} for k, (n, c) in enumerate(names.items())}))


def _hps_benchmark(folder: Path) -> None:
    """zhwang/HPDv2's benchmark/<style>.json: a JSON list of held-out prompts per style (the real files
    hold 800 each), as pcpo/prompts.py reads them for a ``source: hps-benchmark`` set."""
    from pcpo.prompts import HPS_STYLES

    (folder / "benchmark").mkdir(parents=True, exist_ok=True)
    for k, style in enumerate(HPS_STYLES):
        prompts = [f"{p}, {style}" for p in HELD_OUT[k % 2:] + HELD_OUT[:k % 2]]
        (folder / "benchmark" / f"{style}.json").write_text(json.dumps(prompts, indent=1))


def _file_fixture(entry: dict, dest: Path, name: str) -> bool:
    """Write the fixture of a url / torch_hub_file entry at ``dest``; False when there is none."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fname = PurePosixPath(urlsplit(entry["url"]).path).name
    if fname.endswith(".txt"):
        words = ANIMALS if "animal" in fname or "animal" in name else HELD_OUT if "test" in name else PROMPTS
        dest.write_text("\n".join(words) + "\n")
    elif fname == "sac+logos+ava1-l14-linearMSE.pth":
        th.write_aesthetic_head(dest, dim=8)  # the tiny CLIP ViT-L/14 stand-in projects to 8 dimensions
    elif fname == th.INCEPTION_FILE:
        th.write_inception_weights(dest)
    elif fname == th.ALEXNET_FILE:
        th.write_alexnet_weights(dest)
    elif name.startswith("coco") and fname.endswith(".zip") and entry.get("extract"):
        _coco_captions(dest, entry["extract"]["member"])
    elif name.startswith("coco") and fname.endswith(".zip"):
        _coco_images(dest)
    else:
        return False
    return True


def build_world(root: str | os.PathLike) -> dict:
    """Write hub, files and catalogue under ``root``; returns their paths and what was left out."""
    from tests.loopback import repo_commit

    root = Path(root)
    hub, files = root / "hub", root / "files"
    th.build_hub(hub)
    _mjhq(hub / "datasets" / "playgroundai" / "MJHQ-30K")
    _hps_benchmark(hub / "datasets" / "zhwang" / "HPDv2")
    cat = yaml.safe_load(CATALOGUE.read_text())
    skipped = []
    done: dict[str, Path] = {}
    for name, e in cat.items():
        kind = e["kind"]
        if kind in ("url", "torch_hub_file"):
            parts = urlsplit(e["url"])
            dest = files / parts.netloc / parts.path.lstrip("/")
            if str(dest) not in done and not _file_fixture(e, dest, name):
                skipped.append(name)
                continue
            done[str(dest)] = dest
            e["sha256"], e["size"] = _sha256(dest), dest.stat().st_size
            e.pop("sha256_note", None)
        else:
            folder = hub / ("datasets/" if e.get("repo_type") == "dataset" else "") / e["repo"]
            if not folder.is_dir() or (e.get("filename") and not (folder / e["filename"]).is_file()):
                skipped.append(name)
                continue
            e["revision"] = repo_commit(folder)
            if kind == "hf_file":
                f = folder / e["filename"]
                e["sha256"], e["size"] = _sha256(f), f.stat().st_size
                e.pop("sha256_note", None)
        if e.get("prepare"):
            e["prepare"] = {**e["prepare"], "n": min(int(e["prepare"]["n"]), N_IMAGES)}
    catalogue = root / "catalogue.yaml"
    catalogue.write_text("# the project's catalogue with the rehearsal fixtures' checksums and revisions "
                         "(tests/rehearsal/world.py)\n" + yaml.safe_dump(cat, sort_keys=False))
    return {"hub": hub, "files": files, "catalogue": catalogue, "skipped": skipped}


@contextlib.contextmanager
def serve_world(world: dict, home: str | os.PathLike, timeout: float = 3600):
    """Serve ``world`` on 127.0.0.1; yields the environment variables of a rehearsal run (caches under
    ``home``), the hub and file servers' URLs (with their request logs) as ``env, hub_url, files_url``."""
    from tests.loopback import serve_files, serve_hub

    home = Path(home)
    with serve_hub(world["hub"], timeout=timeout) as hub_url, serve_files(world["files"], timeout=timeout) as files_url:
        env = {
            "HF_ENDPOINT": str(hub_url),
            "PCPO_DATA_ENDPOINT": str(files_url),
            "PCPO_DATA_CATALOGUE": str(world["catalogue"]),
            "HF_HOME": str(home / "hf"),
            "TORCH_HOME": str(home / "torch"),
            "PCPO_CACHE": str(home / "pcpo-cache"),
            "XDG_CACHE_HOME": str(home / "xdg"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # The stand-in Inception file cannot carry the real file's sha256 (whose prefix
            # evaluation/inception.py checks before trusting its classifier); PCPO_INCEPTION_WEIGHTS is
            # the documented way to name a torch-fidelity-format file. It points where the data job
            # puts the verified file.
            "PCPO_INCEPTION_WEIGHTS": str(home / "torch" / "hub" / "checkpoints" / th.INCEPTION_FILE),
        }
        yield env, hub_url, files_url
