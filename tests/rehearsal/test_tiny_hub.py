"""The tiny hub stand-ins load with the project's own, unchanged loaders, from their folders.

Each repository of tests/rehearsal/tiny_hub.py is written once (module fixture) in its hub
layout and read back the way a paper run reads the real one: the model adapters through
``pcpo.models.load_model``, diffusers' ``DiffusionPipeline`` from the repository's
model_index.json, the learned rewards through ``pcpo.rewards.get_reward``, DINOv2 through
transformers' Auto classes, open_clip through its ``local-dir:`` schema (the same files its
``hf-hub:`` schema downloads), Inception through torch-fidelity and AlexNet through LPIPS.
"""
from __future__ import annotations

import hashlib

import pytest
import torch

from tests.rehearsal import tiny_hub as th

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red cat", "a blue dog"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_hub")
    return th.build_hub(root)


def _tree_digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_builders_are_deterministic_and_small(hub, tmp_path):
    again = th.build_hub(tmp_path, [th.SD35M_REPO, th.CLIP_H14_REPO])
    for repo, folder in again.items():
        assert _tree_digest(folder) == _tree_digest(hub[repo]), repo
    for repo, folder in hub.items():
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 8e6, (repo, size)


@pytest.mark.parametrize("repo,kind", [(th.SD15_REPO, "sd1"), (th.SD14_REPO, "sd1"), (th.FLUX_REPO, "flux"),
                                       (th.SD35M_REPO, "sd3")])
def test_pipelines_load_with_the_adapters_and_diffusers(hub, repo, kind):
    from diffusers import DiffusionPipeline

    from pcpo.models import load_model
    from pcpo.models.tiny import quiet_hf
    from pcpo.rollout import make_grid, rollout

    folder = str(hub[repo])
    m = load_model(kind, folder, resolution=th.RES, max_sequence_length=th.T5_LEN) if kind != "sd1" else \
        load_model(kind, folder, resolution=th.RES)
    grid = make_grid(m.schedule(), "ddim" if kind == "sd1" else "flow-grpo", steps=2, eta=1.0, noise_level=0.7)
    traj = rollout(m, PROMPTS, grid, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert traj.images.shape == (2, 3, th.RES, th.RES) and torch.isfinite(traj.images).all()
    with quiet_hf():
        pipe = DiffusionPipeline.from_pretrained(folder)  # the repository's model_index.json is complete
    assert type(pipe).__name__ == {"sd1": "StableDiffusionPipeline", "flux": "FluxPipeline",
                                   "sd3": "StableDiffusion3Pipeline"}[kind]


def _images(n=2, seed=0):
    return torch.rand(n, 3, 40, 48, generator=torch.Generator().manual_seed(seed))


def test_reward_models_load_with_the_reward_loaders(hub, tmp_path):
    from pcpo.rewards import get_reward

    head = th.write_aesthetic_head(tmp_path / "sac+logos+ava1-l14-linearMSE.pth", dim=8)
    r, _ = get_reward("aesthetic", clip=str(hub[th.CLIP_L14_REPO]), head=str(head))(_images(), PROMPTS, None)
    assert r.shape == (2,) and torch.isfinite(r).all()
    r, _ = get_reward("pickscore", model=str(hub[th.PICKSCORE_REPO]), processor=str(hub[th.CLIP_H14_REPO]),
                      scale=26.0)(_images(), PROMPTS, None)
    assert r.shape == (2,) and torch.isfinite(r).all()
    hps = get_reward("hpsv21", checkpoint=str(hub[th.HPS_REPO] / "HPS_v2.1_compressed.pt"),
                     model_name=f"local-dir:{hub[th.CLIP_H14_REPO]}")
    r, _ = hps(_images(), PROMPTS, None)
    assert r.shape == (2,) and torch.isfinite(r).all() and (r.abs() <= 1).all()


def test_hps_checkpoint_replaces_the_open_clip_weights(hub):
    """HPSv2.1 = the ViT-H-14 architecture from the LAION repository + the HPS state dict over it."""
    import open_clip

    model = open_clip.create_model(f"local-dir:{hub[th.CLIP_H14_REPO]}")
    hps = torch.load(hub[th.HPS_REPO] / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    assert set(hps) == set(model.state_dict())
    assert not torch.equal(hps["visual.conv1.weight"], model.state_dict()["visual.conv1.weight"])


def test_dinov2_loads_with_transformers(hub):
    from transformers import AutoImageProcessor, AutoModel

    proc = AutoImageProcessor.from_pretrained(hub[th.DINOV2_REPO])
    model = AutoModel.from_pretrained(hub[th.DINOV2_REPO]).eval()
    assert type(model).__name__ == "Dinov2Model"
    px = proc(images=list((_images() * 255).to(torch.uint8)), return_tensors="pt")["pixel_values"]
    assert px.shape == (2, 3, 224, 224)
    with torch.no_grad():
        out = model(pixel_values=px).pooler_output
    assert out.shape == (2, 16) and torch.isfinite(out).all()


def test_fixed_architecture_weight_files(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    import torchvision

    inc = th.write_inception_weights(tmp_path / th.INCEPTION_FILE)
    fe = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=str(inc))
    x = (_images(2) * 255).to(torch.uint8)
    with torch.no_grad():
        pool, logits = fe(x)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pool).all() and torch.isfinite(logits).all() and logits.std() > 0
    alex = th.write_alexnet_weights(tmp_path / th.ALEXNET_FILE)
    net = torchvision.models.alexnet(weights=None)
    net.load_state_dict(torch.load(alex, weights_only=True), strict=True)  # every key, every shape
    with torch.no_grad():
        f = net.features(torch.nn.functional.interpolate(_images(2), size=64))
    assert torch.isfinite(f).all() and f.abs().sum() > 0


_FETCH = """
from pcpo.data import fetch_entry, load_catalogue
cat = load_catalogue()
for e in cat.values():
    fetch_entry(e, cat, {root!r}, progress=False)
"""
_SCORE = """
import torch
from pcpo.rewards import get_reward
r, info = get_reward("llava_bertscore", max_new_tokens=8, device="cpu")(torch.rand(2, 3, 40, 48), {prompts!r}, None)
assert r.shape == (2,) and torch.isfinite(r).all(), r
print("scored", r.tolist())
"""


@pytest.mark.slow
def test_llava_bertscore_reads_the_pinned_revision_from_the_hub_cache(hub, tmp_path):
    """`pcpo data fetch` of the two catalogue entries (at their pinned commit) from a loopback hub, then
    the reward with its default hub ids and HF_HUB_OFFLINE=1: it must find both in the cache at that
    commit (the fetch by commit writes no refs/main, so a load of 'main' would fail here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from tests.loopback import repo_commit, serve_hub

    root = Path(hub[th.LLAVA_REPO]).parents[1]
    real = yaml.safe_load((Path(__file__).resolve().parents[2] / "pcpo" / "data" / "sources.yaml").read_text())
    cat = {n: {**real[n], "revision": repo_commit(root / real[n]["repo"])}
           for n in ("llava-1.5-13b", "bertscore-deberta-xlarge-mnli")}
    assert [e["repo"] for e in cat.values()] == [th.LLAVA_REPO, th.DEBERTA_REPO]
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(cat))
    env = {**os.environ, "PCPO_DATA_CATALOGUE": str(tmp_path / "sources.yaml"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for k in ("PCPO_LLAVA_MODEL", "PCPO_BERTSCORE_MODEL", "HF_HUB_OFFLINE", "PCPO_DATA"):
        env.pop(k, None)
    with serve_hub(root) as url:
        out = subprocess.run([sys.executable, "-c", _FETCH.format(root=str(tmp_path / "data"))],
                             env={**env, "HF_ENDPOINT": url}, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    refs = list((tmp_path / "hf" / "hub").glob("models--*/refs/*"))
    assert not any(r.name == "main" for r in refs), refs
    out = subprocess.run([sys.executable, "-c", _SCORE.format(prompts=PROMPTS)],
                         env={**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "scored" in out.stdout, out.stderr[-3000:]
