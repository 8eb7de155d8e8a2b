"""Preparing a reference image set from a COCO-like pair of zips: deterministic choice, centre crop and
resize, captions matched by file name, manifest with the files' checksum; all through `pcpo data fetch`."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.data.conftest import one_line_error, sha256, write_catalogue
from tests.loopback import serve_files

HOST = "images.example.org"
N_IMAGES, N_PICK, RES = 7, 4, 16
# three vertical bands: only the centre one survives a centre crop of a landscape image
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 20), (20, 220, 220), (220, 20, 220),
           (120, 120, 120)]


def _jpeg(i: int) -> bytes:
    w, h = 60 + 4 * i, 40
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = (0, 0, 0)
    side = (w - h) // 2
    a[:, side:side + h] = COLOURS[i]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def coco(data_env):
    www = data_env.tmp / "www" / HOST / "zips"
    www.mkdir(parents=True)
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(N_IMAGES)]
    with zipfile.ZipFile(www / "val2014.zip", "w") as z:
        for i, n in enumerate(names):
            z.writestr(f"val2014/{n}", _jpeg(i))
        z.writestr("val2014/", b"")  # a directory entry, skipped
    ann = {"images": [{"id": 100 + i, "file_name": n} for i, n in enumerate(names)],
           "annotations": [{"id": 2000 - i, "image_id": 100 + i, "caption": f"  picture {i} second  "}
                           for i in range(N_IMAGES)]
           + [{"id": 10 + i, "image_id": 100 + i, "caption": f"picture {i}"} for i in range(N_IMAGES)]}
    with zipfile.ZipFile(www / "annotations.zip", "w") as z:
        z.writestr("annotations/captions_val2014.json", json.dumps(ann))
        z.writestr("annotations/instances_val2014.json", "{}")
    images_zip, ann_zip = (www / "val2014.zip").read_bytes(), (www / "annotations.zip").read_bytes()
    cat = write_catalogue(data_env.tmp / "sources.yaml", {
        "coco-captions": {"kind": "url", "url": f"https://{HOST}/zips/annotations.zip", "sha256": sha256(ann_zip),
                          "extract": {"member": "annotations/captions_val2014.json"},
                          "dest": "data/coco/captions_val2014.json"},
        "coco-val": {"kind": "url", "url": f"https://{HOST}/zips/val2014.zip", "sha256": sha256(images_zip),
                     "dest": "data/raw/val2014.zip",
                     "prepare": {"kind": "image_folder", "n": N_PICK, "resolution": RES, "seed": 3,
                                 "captions_from": "coco-captions"}},
    })
    data_env.cat, data_env.names = cat, names
    return data_env


def test_prepared_folder_manifest_and_captions(coco, pcpo, monkeypatch):
    with serve_files(coco.tmp / "www") as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, out, err = pcpo("data", "fetch", "coco-val", "--catalogue", coco.cat, "--no-progress", "--workers", "2")
        assert rc == 0, err
    folder = coco.root / f"coco-val-{RES}-n{N_PICK}"
    assert str(folder) in out
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(N_PICK)]
    # the choice: N_PICK of the sorted members by numpy's generator with the seed, in archive order
    members = sorted(f"val2014/{n}" for n in coco.names)
    chosen = sorted(np.random.default_rng(3).choice(N_IMAGES, size=N_PICK, replace=False).tolist())
    caps = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    assert [c["source"] for c in caps] == [members[i] for i in chosen]
    assert [c["file"] for c in caps] == [p.name for p in pngs]
    for c, i in zip(caps, chosen):
        assert c["caption"] == f"picture {i}"  # the lowest annotation id, stripped
        img = np.asarray(Image.open(folder / c["file"]))
        assert img.shape == (RES, RES, 3)
        # centre crop: only the centre band's colour.  A black side band in the crop would differ by about
        # 200 levels at the border; JPEG chroma subsampling blurs the band's edge by a few levels only
        diff = np.abs(img.astype(int) - np.array(COLOURS[i]))
        assert diff.max() < 100 and diff.mean() < 6, (i, diff.max(), diff.mean())
    manifest = json.loads((folder / "manifest.json").read_text())
    lines = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in pngs)
    assert manifest["files_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert (manifest["name"], manifest["n_images"], manifest["resolution"]) == ("coco-val", N_PICK, RES)
    assert manifest["source"] == f"https://{HOST}/zips/val2014.zip"
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]
    # the captions member was extracted alone, verified through its archive
    assert json.loads((coco.root / "coco" / "captions_val2014.json").read_text())["images"][0]["id"] == 100
    stamp = json.loads((coco.root / ".fetched" / "coco-val.json").read_text())
    assert stamp["prepared"]["files_sha256"] == manifest["files_sha256"]
    rc, out, _ = pcpo("data", "list", "--catalogue", coco.cat, "--verify")
    assert rc == 0 and out.count("verified") == 2
    # same seed, same archive: the same folder, byte for byte
    from pcpo.data.prepare import prepare_image_folder

    again = prepare_image_folder(coco.root / "raw" / "val2014.zip", coco.tmp / "again", name="coco-val",
                                 source=manifest["source"], n=N_PICK, resolution=RES, seed=3,
                                 captions=coco.root / "coco" / "captions_val2014.json", workers=1, progress=False)
    assert again["files_sha256"] == manifest["files_sha256"]


def test_preparation_that_cannot_be_done_leaves_no_folder(coco, pcpo, monkeypatch):
    import yaml

    raw = yaml.safe_load(open(coco.cat))
    raw["coco-val"]["prepare"]["n"] = N_IMAGES + 1
    write_catalogue(coco.tmp / "sources.yaml", raw)
    with serve_files(coco.tmp / "www") as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, _, err = pcpo("data", "fetch", "coco-val", "--catalogue", coco.cat, "--no-progress")
    assert rc == 2 and f"fewer than the {N_IMAGES + 1}" in one_line_error(err)
    assert not list(coco.root.glob("coco-val-*")) and not (coco.root / ".fetched" / "coco-val.json").exists()


def test_mapping_captions_by_stem(tmp_path):
    """MJHQ-30K style: category folders of <id>.jpg and meta_data.json {id: {prompt, category}}."""
    from pcpo.data.prepare import prepare_image_folder

    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as z:
        for i in range(3):
            z.writestr(f"{'people' if i % 2 else 'animals'}/{i:04x}abc.jpg", _jpeg(i))
    (tmp_path / "meta.json").write_text(json.dumps({f"{i:04x}abc": {"category": "x", "prompt": f"p{i}"}
                                                    for i in range(3)}))
    m = prepare_image_folder(tmp_path / "imgs.zip", tmp_path / "out", name="mjhq", source="s", n=3, resolution=8,
                             seed=0, captions=tmp_path / "meta.json", workers=1, progress=False)
    caps = [json.loads(line) for line in (tmp_path / "out" / "captions.jsonl").read_text().splitlines()]
    assert m["n_images"] == 3 and sorted(c["caption"] for c in caps) == ["p0", "p1", "p2"]
    for c in caps:
        assert c["caption"] == "p" + str(int(c["source"].split("/")[1][:4], 16))
