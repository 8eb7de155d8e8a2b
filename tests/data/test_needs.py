"""`--for CONFIG`: the catalogue names each experiment file needs, and the whole flow for the Flow-GRPO
SD3.5-M config against the loopback servers (verified files online, one line offline)."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.data.conftest import go_offline, one_line_error, sha256, write_catalogue
from tests.helpers import ROOT
from tests.loopback import serve_files, serve_hub

PAPER = sorted((ROOT / "config" / "paper").glob("*.yaml"))
FLOWGRPO = ROOT / "config" / "paper" / "flowgrpo_sd35m_pickscore.yaml"
FIX = "0" * 64  # any well-formed sha256: needs_for_config never downloads


def full_catalogue(sha=lambda name: FIX) -> dict:
    """Entries for everything the paper configs use, plus decoys that none of them needs."""
    def url(name, u, dest=None, **kw):
        e = {"kind": "url", "url": u, "sha256": sha(name), **kw}
        if dest:
            e["dest"] = dest
        return e

    def snap(repo, **kw):
        return {"kind": "hf_snapshot", "repo": repo, "revision": "main", **kw}

    def hub_file(name, u, hub_filename):
        return {"kind": "torch_hub_file", "url": u, "sha256": sha(name), "hub_filename": hub_filename}

    return {
        "pickscore-train-prompts": url("pickscore-train-prompts", "https://raw.example.org/flow_grpo/pickscore/train.txt",
                                       "data/prompts/pickscore_train.txt"),
        "pickscore-test-prompts": url("pickscore-test-prompts", "https://raw.example.org/flow_grpo/pickscore/test.txt",
                                      "data/prompts/pickscore_test.txt"),
        "hpdv2-train-prompts": url("hpdv2-train-prompts", "https://raw.example.org/dancegrpo/hpdv2/train.txt",
                                   "data/prompts/hpdv2_train.txt"),
        "sd35m": snap("stabilityai/stable-diffusion-3.5-medium", gated=True),
        "flux1-dev": snap("black-forest-labs/FLUX.1-dev", gated=True),
        "sd14": snap("CompVis/stable-diffusion-v1-4"),
        "sd15": snap("stable-diffusion-v1-5/stable-diffusion-v1-5"),
        "pickscore-model": snap("yuvalkirstain/PickScore_v1"),
        "clip-h-processor": snap("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", allow_patterns=["*.json", "*.txt"]),
        "clip-vit-large-patch14": snap("openai/clip-vit-large-patch14"),
        "hpsv21": {"kind": "hf_file", "repo": "xswu/HPSv2", "filename": "HPS_v2.1_compressed.pt", "revision": "main",
                   "sha256": sha("hpsv21")},
        "aesthetic-head": url("aesthetic-head", "https://github.example.org/aesthetic/sac+logos+ava1-l14-linearMSE.pth",
                              "data/weights/sac+logos+ava1-l14-linearMSE.pth"),
        "coco-captions-val2014": url("coco-captions-val2014", "https://images.example.org/annotations.zip",
                                     "data/coco/captions_val2014.json",
                                     extract={"member": "annotations/captions_val2014.json"}),
        "coco2014-val": url("coco2014-val", "https://images.example.org/zips/val2014.zip", "data/raw/val2014.zip",
                            prepare={"kind": "image_folder", "n": 3, "resolution": 512, "seed": 0,
                                     "captions_from": "coco-captions-val2014"}),
        "inception-v3-fidelity": hub_file("inception-v3-fidelity",
                                          "https://github.example.org/weights-inception-2015-12-05-6726825d.pth",
                                          "weights-inception-2015-12-05-6726825d.pth"),
        "alexnet-lpips": hub_file("alexnet-lpips", "https://download.example.org/models/alexnet-owt-7be5be79.pth",
                                  "alexnet-owt-7be5be79.pth"),
        # decoys
        "dinov2-vitl14": hub_file("dinov2-vitl14", "https://dl.example.org/dinov2_vitl14_pretrain.pth",
                                  "dinov2_vitl14_pretrain.pth"),
        "imagereward": {"kind": "hf_file", "repo": "THUDM/ImageReward", "filename": "ImageReward.pt",
                        "revision": "main", "sha256": FIX},
        "mjhq30k": {"kind": "hf_file", "repo": "playgroundai/MJHQ-30K", "repo_type": "dataset",
                    "filename": "mjhq30k_imgs.zip", "revision": "main", "sha256": FIX,
                    "prepare": {"kind": "image_folder", "n": 3, "resolution": 512, "seed": 0}},
    }


def _needs(config_path, tmp_path, cat_dict=None):
    from pcpo.data import load_catalogue, needs_for_file

    cat = load_catalogue(write_catalogue(tmp_path / "sources.yaml", cat_dict or full_catalogue()))
    return needs_for_file(config_path, cat, tmp_path / "data")


def test_flowgrpo_sd35m_needs_exactly_these(tmp_path):
    n = _needs(FLOWGRPO, tmp_path)
    assert n.unresolved == []
    assert n.names == sorted(["pickscore-train-prompts", "sd35m", "pickscore-model", "clip-h-processor",
                              "coco2014-val", "coco-captions-val2014", "inception-v3-fidelity", "alexnet-lpips"])
    assert sorted(n.roles["train"]) == ["clip-h-processor", "pickscore-model", "pickscore-train-prompts", "sd35m"]
    assert sorted(n.roles["sample"]) == ["pickscore-train-prompts", "sd35m"]
    assert sorted(n.roles["evaluate"]) == ["alexnet-lpips", "clip-h-processor", "coco-captions-val2014",
                                           "coco2014-val", "inception-v3-fidelity", "pickscore-model"]


@pytest.mark.parametrize("config", PAPER, ids=[p.stem for p in PAPER])
def test_every_paper_config_resolves_to_its_models_rewards_and_data(config, tmp_path):
    raw = yaml.safe_load(config.read_text())
    n = _needs(config, tmp_path)
    assert n.unresolved == [], n.unresolved
    cat = full_catalogue()
    repos = {cat[x].get("repo") for x in n.names}
    assert raw["model"]["path"] in repos  # the model is fetched by its own hub id
    assert {"inception-v3-fidelity", "alexnet-lpips", "coco2014-val"} <= set(n.names)
    expected_reward = {"pickscore": "pickscore-model", "hpsv21": "hpsv21", "aesthetic": "aesthetic-head"}
    assert expected_reward[raw["reward"]["name"]] in n.roles["train"]
    prompt_path = raw["prompts"]["options"]["path"]
    if prompt_path.startswith("data/"):
        assert any(cat[x].get("dest") == prompt_path for x in n.roles["train"])
    assert not {"dinov2-vitl14", "imagereward", "mjhq30k"} & set(n.names)


@pytest.mark.parametrize("name", ["tiny", "smoke", "collapse"])
def test_the_tiny_world_needs_nothing(name, tmp_path):
    n = _needs(ROOT / "config" / f"{name}.yaml", tmp_path)
    assert n.names == [] and n.unresolved == []


def test_what_no_entry_provides_is_named_and_local_paths_are_not_needs(tmp_path, pcpo):
    cat = full_catalogue()
    del cat["pickscore-model"], cat["alexnet-lpips"]
    n = _needs(FLOWGRPO, tmp_path, cat)
    assert any("PickScore_v1" in u for u in n.unresolved) and any("alexnet" in u for u in n.unresolved)
    path = write_catalogue(tmp_path / "partial.yaml", cat)
    rc, _, err = pcpo("data", "fetch", "--for", FLOWGRPO, "--catalogue", path, "--dry-run")
    line = one_line_error(err)
    assert rc == 2 and "yuvalkirstain/PickScore_v1" in line and "alexnet-owt-7be5be79.pth" in line
    # a reward option pointing at a local folder replaces the hub repository
    local = tmp_path / "my-pickscore"
    local.mkdir()
    raw = yaml.safe_load(FLOWGRPO.read_text())
    raw["reward"]["options"]["model"] = str(local)
    raw["reward_options"]["pickscore"]["model"] = str(local)
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(raw))
    n = _needs(tmp_path / "x.yaml", tmp_path)
    assert "pickscore-model" not in n.names and "clip-h-processor" in n.names


def test_reward_weights_table_matches_the_loaders():
    from pcpo.data.needs import REWARD_WEIGHTS
    from pcpo.rewards import learned as L

    assert REWARD_WEIGHTS["pickscore"] == [("model", L.PICKSCORE_MODEL, None), ("processor", L.PICKSCORE_PROCESSOR, None)]
    assert REWARD_WEIGHTS["aesthetic"] == [("clip", L.AESTHETIC_CLIP, None), ("head", None, L.AESTHETIC_HEAD_FILE)]
    assert REWARD_WEIGHTS["hpsv21"] == [("checkpoint", L.HPS_REPO, L.HPS_FILE)]
    assert REWARD_WEIGHTS["imagereward"] == [("checkpoint", L.IMAGEREWARD_REPO, L.IMAGEREWARD_FILE),
                                             ("med_config", L.IMAGEREWARD_REPO, L.IMAGEREWARD_MED),
                                             ("tokenizer", L.IMAGEREWARD_TOKENIZER, None)]
    assert REWARD_WEIGHTS["clipscore"] == [("model", L.CLIPSCORE_MODEL, None)]


def test_paper_configs_use_current_hub_ids():
    for p in PAPER:
        assert "runwayml/" not in p.read_text(), p


# ---------------------------------------------------------------------------
# the whole flow against the loopback servers
# ---------------------------------------------------------------------------

def _jpeg(colour) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 20), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _stand_ins(tmp: Path) -> tuple[Path, Path, dict]:
    """Tiny stand-ins for every file the Flow-GRPO config needs, laid out for the two servers."""
    www, hub = tmp / "www", tmp / "hub"
    files = {
        "raw.example.org/flow_grpo/pickscore/train.txt": b"a cat\na dog\n",
        "github.example.org/weights-inception-2015-12-05-6726825d.pth": b"inception" * 100,
        "download.example.org/models/alexnet-owt-7be5be79.pth": b"alexnet" * 100,
    }
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(4)]
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for i, n in enumerate(names):
            z.writestr(f"val2014/{n}", _jpeg((60 * i, 100, 30)))
    files["images.example.org/zips/val2014.zip"] = zbuf.getvalue()
    abuf = io.BytesIO()
    with zipfile.ZipFile(abuf, "w") as z:
        z.writestr("annotations/captions_val2014.json", json.dumps({
            "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"id": i, "image_id": i, "caption": f"c{i}"} for i in range(4)]}))
    files["images.example.org/annotations.zip"] = abuf.getvalue()
    for rel, data in files.items():
        (www / rel).parent.mkdir(parents=True, exist_ok=True)
        (www / rel).write_bytes(data)
    for repo in ("stabilityai/stable-diffusion-3.5-medium", "yuvalkirstain/PickScore_v1",
                 "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        (hub / repo).mkdir(parents=True)
        (hub / repo / "config.json").write_text(json.dumps({"repo": repo}))
        (hub / repo / "model.safetensors").write_bytes(repo.encode() * 50)
    by_url = {f"https://{rel}": sha256(data) for rel, data in files.items()}
    cat = full_catalogue()
    for name, e in cat.items():
        if e.get("url") in by_url:
            e["sha256"] = by_url[e["url"]]
    cat["coco2014-val"]["prepare"]["resolution"] = 512
    return www, hub, cat


def test_fetch_for_flowgrpo_leaves_verified_files_and_offline_is_one_line(data_env, pcpo, monkeypatch):
    www, hub, cat = _stand_ins(data_env.tmp)
    catalogue = write_catalogue(data_env.tmp / "sources.yaml", cat)
    with serve_files(www) as files, serve_hub(hub) as endpoint:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", files)
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        rc, out, err = pcpo("data", "fetch", "--for", FLOWGRPO, "--catalogue", catalogue, "--no-progress")
        assert rc == 0, err
    expected = ["alexnet-lpips", "clip-h-processor", "coco-captions-val2014", "coco2014-val", "inception-v3-fidelity",
                "pickscore-model", "pickscore-train-prompts", "sd35m"]
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == expected
    assert sorted(p.stem for p in (data_env.root / ".fetched").glob("*.json")) == expected
    assert (data_env.root / "prompts" / "pickscore_train.txt").read_bytes() == b"a cat\na dog\n"
    assert (data_env.tmp / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()
    assert len(list((data_env.root / "coco2014-val-512-n3").glob("*.png"))) == 3
    # the PickScore processor snapshot honours allow_patterns: no weights
    st = json.loads((data_env.root / ".fetched" / "clip-h-processor.json").read_text())
    assert sorted(st["files"]) == ["config.json"]
    rc, out, _ = pcpo("data", "list", "--for", FLOWGRPO, "--catalogue", catalogue, "--verify")
    assert rc == 0 and out.count(" verified ") == len(expected)
    # offline, with nothing fetched yet: one line
    monkeypatch.setenv("PCPO_DATA", str(data_env.tmp / "empty"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    go_offline(monkeypatch)
    rc, _, err = pcpo("data", "fetch", "--for", FLOWGRPO, "--catalogue", catalogue, "--no-progress")
    line = one_line_error(err)
    assert rc == 2 and "HF_HUB_OFFLINE" in line and "pcpo data fetch" in line
