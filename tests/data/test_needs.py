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

    def hps(style):
        return {"kind": "hf_file", "repo": "zhwang/HPDv2", "repo_type": "dataset", "revision": "main",
                "filename": f"benchmark/{style}.json", "sha256": sha(f"hps-benchmark-{style}"),
                "dest": f"data/prompts/hps_benchmark/{style}.json"}

    # the names, repos, files and destinations are pcpo/data/sources.yaml's (needs_for_config matches on them)
    return {
        "pickscore-train-prompts": url("pickscore-train-prompts", "https://raw.example.org/flow_grpo/pickscore/train.txt",
                                       "data/prompts/pickscore_train.txt"),
        "pickscore-test-prompts": url("pickscore-test-prompts", "https://raw.example.org/flow_grpo/pickscore/test.txt",
                                      "data/prompts/pickscore_test.txt"),
        "hpdv2-train-prompts": url("hpdv2-train-prompts", "https://raw.example.org/dancegrpo/hpdv2/train.txt",
                                   "data/prompts/hpdv2_train.txt"),
        **{f"hps-benchmark-{s}": hps(s) for s in ("anime", "concept-art", "paintings", "photo")},
        "sd35-medium": snap("stabilityai/stable-diffusion-3.5-medium", gated=True),
        "flux1-dev": snap("black-forest-labs/FLUX.1-dev", gated=True),
        "sd14": snap("CompVis/stable-diffusion-v1-4"),
        "sd15": snap("stable-diffusion-v1-5/stable-diffusion-v1-5"),
        "pickscore-model": snap("yuvalkirstain/PickScore_v1"),
        "pickscore-processor": snap("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", allow_patterns=["*.json", "*.txt"]),
        "aesthetic-clip": snap("openai/clip-vit-large-patch14"),
        "hpsv21-checkpoint": {"kind": "hf_file", "repo": "xswu/HPSv2", "filename": "HPS_v2.1_compressed.pt",
                              "revision": "main", "sha256": sha("hpsv21-checkpoint")},
        "laion-aesthetic-head": url("laion-aesthetic-head",
                                    "https://github.example.org/aesthetic/sac+logos+ava1-l14-linearMSE.pth",
                                    "data/weights/aesthetic/sac+logos+ava1-l14-linearMSE.pth"),
        "llava-1.5-13b": snap("llava-hf/llava-1.5-13b-hf"),
        "bertscore-deberta-xlarge-mnli": snap("microsoft/deberta-xlarge-mnli"),
        "coco2014-val-captions": url("coco2014-val-captions", "https://images.example.org/annotations.zip",
                                     "data/raw/coco2014/captions_val2014.json",
                                     extract={"member": "annotations/captions_val2014.json"}),
        # prepared as data/coco2014-val-images-512-n30000, the folder every paper config's reference names
        "coco2014-val-images": url("coco2014-val-images", "https://images.example.org/zips/val2014.zip",
                                   "data/raw/coco2014/val2014.zip",
                                   prepare={"kind": "image_folder", "n": 30000, "resolution": 512, "seed": 0,
                                            "captions_from": "coco2014-val-captions"}),
        "inception-fid": hub_file("inception-fid",
                                  "https://github.example.org/weights-inception-2015-12-05-6726825d.pth",
                                  "weights-inception-2015-12-05-6726825d.pth"),
        "lpips-alexnet": hub_file("lpips-alexnet", "https://download.example.org/models/alexnet-owt-7be5be79.pth",
                                  "alexnet-owt-7be5be79.pth"),
        # FD-DINO's network: transformers' facebook/dinov2-large from the hub (evaluation/dino.py)
        "dinov2-large-hf": snap("facebook/dinov2-large", allow_patterns=["*.json", "model.safetensors"]),
        # decoys: the torch.hub DINOv2 file (not what FD-DINO loads), rewards and references no paper config uses
        "dinov2-vitl14": hub_file("dinov2-vitl14", "https://dl.example.org/dinov2_vitl14_pretrain.pth",
                                  "dinov2_vitl14_pretrain.pth"),
        "lpips-vgg16": hub_file("lpips-vgg16", "https://download.example.org/models/vgg16-397923af.pth",
                                "vgg16-397923af.pth"),
        "imagereward": {"kind": "hf_file", "repo": "THUDM/ImageReward", "filename": "ImageReward.pt",
                        "revision": "main", "sha256": FIX},
        "mjhq30k-images": {"kind": "hf_file", "repo": "playgroundai/MJHQ-30K", "repo_type": "dataset",
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
    assert n.names == sorted(["pickscore-train-prompts", "pickscore-test-prompts", "sd35-medium", "pickscore-model",
                              "pickscore-processor", "coco2014-val-images", "coco2014-val-captions", "inception-fid",
                              "lpips-alexnet", "dinov2-large-hf"])
    assert sorted(n.roles["train"]) == ["pickscore-model", "pickscore-processor", "pickscore-train-prompts",
                                        "sd35-medium"]
    # the held-out reward prompts (evaluation.prompts.reward: pickscore test.txt) are sampled
    assert sorted(n.roles["sample"]) == ["pickscore-test-prompts", "sd35-medium"]
    assert sorted(n.roles["evaluate"]) == ["coco2014-val-captions", "coco2014-val-images", "dinov2-large-hf",
                                           "inception-fid", "lpips-alexnet", "pickscore-model", "pickscore-processor"]


@pytest.mark.parametrize("config", PAPER, ids=[p.stem for p in PAPER])
def test_every_paper_config_resolves_to_its_models_rewards_and_data(config, tmp_path):
    raw = yaml.safe_load(config.read_text())
    n = _needs(config, tmp_path)
    assert n.unresolved == [], n.unresolved
    cat = full_catalogue()
    repos = {cat[x].get("repo") for x in n.names}
    assert raw["model"]["path"] in repos  # the model is fetched by its own hub id
    assert {"inception-fid", "lpips-alexnet", "coco2014-val-images", "coco2014-val-captions"} <= set(n.roles["evaluate"])
    if "fd_dino" in raw["evaluation"]["metrics"]:
        assert "dinov2-large-hf" in n.roles["evaluate"]
    expected_reward = {"pickscore": {"pickscore-model", "pickscore-processor"}, "hpsv21": {"hpsv21-checkpoint"},
                       "aesthetic": {"aesthetic-clip", "laion-aesthetic-head"},
                       "llava_bertscore": {"llava-1.5-13b", "bertscore-deberta-xlarge-mnli"}}
    assert expected_reward[raw["reward"]["name"]] <= set(n.roles["train"])
    for ev in (raw["evaluation"].get("prompts") or {}).values():  # held-out prompt sets are sampled
        if ev.get("source") == "hps-benchmark":
            assert {f"hps-benchmark-{s}" for s in ev.get("styles", ["anime", "concept-art", "paintings", "photo"])} \
                <= set(n.roles["sample"])
    prompt_path = raw["prompts"]["options"]["path"]
    if prompt_path.startswith("data/"):
        assert any(cat[x].get("dest") == prompt_path for x in n.roles["train"])
    assert not {"dinov2-vitl14", "lpips-vgg16", "imagereward", "mjhq30k-images"} & set(n.names)


@pytest.mark.parametrize("name", ["tiny", "smoke", "collapse"])
def test_the_tiny_world_needs_nothing(name, tmp_path):
    n = _needs(ROOT / "config" / f"{name}.yaml", tmp_path)
    assert n.names == [] and n.unresolved == []


def test_what_no_entry_provides_is_named_and_local_paths_are_not_needs(tmp_path, pcpo):
    cat = full_catalogue()
    del cat["pickscore-model"], cat["lpips-alexnet"]
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
    assert "pickscore-model" not in n.names and "pickscore-processor" in n.names


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
    from pcpo.rewards import bertscore as B

    assert REWARD_WEIGHTS["llava_bertscore"] == [("llava", B.LLAVA_MODEL, None),
                                                 ("bertscore_model", B.BERTSCORE_MODEL, None)]


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
        "raw.example.org/flow_grpo/pickscore/test.txt": b"a bird\na fish\n",
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
                 "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "facebook/dinov2-large"):
        (hub / repo).mkdir(parents=True)
        (hub / repo / "config.json").write_text(json.dumps({"repo": repo}))
        (hub / repo / "model.safetensors").write_bytes(repo.encode() * 50)
    by_url = {f"https://{rel}": sha256(data) for rel, data in files.items()}
    cat = full_catalogue()
    for name, e in cat.items():
        if e.get("url") in by_url:
            e["sha256"] = by_url[e["url"]]
    cat["coco2014-val-images"]["prepare"]["n"] = 3
    return www, hub, cat


def _flowgrpo_at_n3(tmp: Path) -> Path:
    """The Flow-GRPO config with its COCO reference (and the COCO captions it samples for FID) at the 3
    images the stand-in catalogue prepares instead of 30000; every other value is the paper config's."""
    text = FLOWGRPO.read_text()
    assert text.count("coco2014-val-images-512-n30000") >= 2
    p = tmp / "flowgrpo_sd35m_pickscore.yaml"
    p.write_text(text.replace("coco2014-val-images-512-n30000", "coco2014-val-images-512-n3"))
    return p


def test_fetch_for_flowgrpo_leaves_verified_files_and_offline_is_one_line(data_env, pcpo, monkeypatch):
    www, hub, cat = _stand_ins(data_env.tmp)
    catalogue = write_catalogue(data_env.tmp / "sources.yaml", cat)
    FLOWGRPO = _flowgrpo_at_n3(data_env.tmp)  # noqa: N806 - the paper config, cut to the stand-in's images
    with serve_files(www) as files, serve_hub(hub) as endpoint:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", files)
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        rc, out, err = pcpo("data", "fetch", "--for", FLOWGRPO, "--catalogue", catalogue, "--no-progress")
        assert rc == 0, err
    expected = ["coco2014-val-captions", "coco2014-val-images", "dinov2-large-hf", "inception-fid", "lpips-alexnet",
                "pickscore-model", "pickscore-processor", "pickscore-test-prompts", "pickscore-train-prompts",
                "sd35-medium"]
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == expected
    assert sorted(p.stem for p in (data_env.root / ".fetched").glob("*.json")) == expected
    assert (data_env.root / "prompts" / "pickscore_train.txt").read_bytes() == b"a cat\na dog\n"
    assert (data_env.tmp / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()
    assert len(list((data_env.root / "coco2014-val-images-512-n3").glob("*.png"))) == 3
    # the PickScore processor snapshot honours allow_patterns: no weights
    st = json.loads((data_env.root / ".fetched" / "pickscore-processor.json").read_text())
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
