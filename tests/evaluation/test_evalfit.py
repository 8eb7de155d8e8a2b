"""Evaluation that fits and says what it measured: held-out prompt sets, streamed and cached
reference folders, FD-DINO, networks checked before any work, metric routing per prompt set."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import inception as inc
from evaluation import metrics as M
from pcpo.config import ConfigError
from pcpo.prompts import evaluation_prompt_sets, get_prompts, prompt_set


def _imgs(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(z, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _write_folder(folder, x, manifest=True, name="refset"):
    folder.mkdir(parents=True, exist_ok=True)
    u8 = M.to_uint8_rgb(x)
    lines = []
    for i, a in enumerate(u8.numpy()):
        p = folder / f"{i:06d}.png"
        Image.fromarray(a.transpose(1, 2, 0)).save(p)
        lines.append(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n")
    with open(folder / "captions.jsonl", "w") as f:
        for i in range(len(u8)):
            f.write(json.dumps({"file": f"{i:06d}.png", "caption": f"caption number {i}"}) + "\n")
    if manifest:
        key = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps({"name": name, "source": "test", "n_images": len(u8),
                                                          "resolution": x.shape[-1], "files_sha256": key}))
    return folder


class _CheapPool3:
    """A stand-in for the FID Inception where the test is about streaming, caching and routing, not
    the network (the real one is exercised in test_metrics/test_inception): a fixed random
    projection of an 8x8 average-pooled image, 64 features."""

    def __init__(self):
        self.w = torch.randn(3 * 8 * 8, 64, generator=torch.Generator().manual_seed(0))

    def __call__(self, u8):
        x = torch.nn.functional.adaptive_avg_pool2d(u8.float() / 255, 8).flatten(1)
        return (x @ self.w,)


@pytest.fixture
def cheap_inception(monkeypatch):
    net = _CheapPool3()
    monkeypatch.setattr(inc, "load_feature_extractor", lambda features=("2048",), device="cpu": net)
    return net


# ----------------------------------------------------------------------------- prompts


def test_file_prompts_count_and_seed_are_deterministic(tmp_path):
    f = tmp_path / "test.txt"
    f.write_text("\n".join(f"prompt {i}" for i in range(50)) + "\n# comment\n\n")
    assert [p for p, _ in prompt_set({"source": "file", "path": str(f), "count": 5})] == [f"prompt {i}" for i in range(5)]
    a = prompt_set({"source": "file", "path": str(f), "count": 10, "seed": 3})
    b = prompt_set({"source": "file", "path": str(f), "count": 10, "seed": 3})
    c = prompt_set({"source": "file", "path": str(f), "count": 10, "seed": 4})
    assert a == b and a != c and len(a) == 10
    idx = [int(p.split()[1]) for p, _ in a]
    assert idx == sorted(idx)  # file order kept
    expect = np.sort(np.random.default_rng(3).choice(50, size=10, replace=False)).tolist()
    assert idx == expect
    assert len(prompt_set({"source": "file", "path": str(f)})) == 50
    with pytest.raises(ConfigError, match=r"evaluation.prompts.count: 60 prompts asked, the source has 50"):
        prompt_set({"source": "file", "path": str(f), "count": 60})
    with pytest.raises(ConfigError, match="evaluation.prompts.path"):
        prompt_set({"source": "file", "path": str(tmp_path / "nope.txt")})


def test_training_prompt_file_is_not_an_evaluation_split(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="evaluation.prompts"):
        get_prompts("file", {"path": str(f)}, split="eval")
    with pytest.raises(ConfigError, match="evaluation.prompts"):
        evaluation_prompt_sets({}, "file", {"path": str(f)})
    assert evaluation_prompt_sets({}, "tiny", {}) == {"all": {"source": "tiny"}}


def test_coco_captions_and_named_sets(tmp_path):
    folder = _write_folder(tmp_path / "coco", _imgs(6, 0))
    caps = prompt_set({"source": "coco-captions", "path": str(folder), "count": 4}, "evaluation.prompts.fid")
    assert [p for p, _ in caps] == [f"caption number {i}" for i in range(4)]
    assert caps[0][1] == {"reference_file": "000000.png"}
    sets = evaluation_prompt_sets({"prompts": {
        "reward": {"source": "list", "prompts": ["x", "y"], "metrics": ["reward", "diversity"]},
        "fid": {"source": "coco-captions", "path": str(folder), "metrics": ["fid", "kid"]}}})
    assert list(sets) == ["reward", "fid"]
    with pytest.raises(ConfigError, match="already measured"):
        evaluation_prompt_sets({"prompts": {"a": {"source": "list", "prompts": ["x"], "metrics": ["fid"]},
                                            "b": {"source": "list", "prompts": ["y"], "metrics": ["fid"]}}})
    with pytest.raises(ConfigError, match="unknown key"):
        prompt_set({"source": "list", "prompts": ["x"], "split": "test"})


# ----------------------------------------------------------------------------- reference folders


def test_folder_reference_streams_and_caches_by_files_sha256(tmp_path, cache, monkeypatch, cheap_inception):
    x = _imgs(10, 1)
    folder = _write_folder(tmp_path / "ref", x)
    plain = _write_folder(tmp_path / "plain", x, manifest=False)
    man = json.loads((folder / "manifest.json").read_text())
    ident = M.folder_identity(folder)
    assert ident["key"] == man["files_sha256"] and ident["key_source"] == "manifest files_sha256"
    # a plain folder is hashed file by file with the manifest's definition: the same key
    pid = M.folder_identity(plain)
    assert pid["key_source"] == "hashed listing" and pid["key"] == man["files_sha256"]

    seen = []
    real_loader = M.load_uint8_rgb

    def counting(files):
        seen.append(len(files))
        return real_loader(files)
    monkeypatch.setattr(M, "load_uint8_rgb", counting)
    ref = M.folder_reference(folder, batch_size=4)
    assert seen == [4, 4, 2]  # never the whole folder at once
    direct = M.inception_features(x, batch_size=10)
    # same uint8 pixels through the same network: equal up to float32 batch rounding
    scale = float(direct.abs().max())
    assert float((ref["features"] - direct).abs().max()) <= 1e-4 * scale
    assert ref["count"] == 10 and ref["name"] == "refset" and ref["fingerprint"] == man["files_sha256"]
    assert man["files_sha256"][:16] in ref["path"]
    # cached: served without reading a single image
    seen.clear()
    again = M.folder_reference(folder, batch_size=4)
    assert seen == [] and torch.equal(again["features"], ref["features"])
    # the FID from the folder equals the FID from the tensors
    fake = _imgs(8, 2)
    ff = M.inception_features(fake, batch_size=8)
    assert M.fid_from_features(ff, ref["features"]) == pytest.approx(M.fid_from_features(ff, direct), rel=1e-4)
    # changed content -> other key -> recomputed
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(plain / "000003.png")
    assert M.folder_identity(plain)["key"] != man["files_sha256"]
    # a manifest that disagrees with the folder is refused
    (folder / "000009.png").unlink()
    with pytest.raises(ValueError, match="n_images 10 but 9 images"):
        M.folder_identity(folder)


# ----------------------------------------------------------------------------- FD-DINO


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                       image_size=224)
    d = tmp_path_factory.mktemp("dino") / "tiny-dinov2"
    Dinov2Model(cfg).eval().save_pretrained(d)
    return str(d)


def _scipy_frechet(a, b):
    """Independent float64 reference: ||mu1-mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy's sqrtm."""
    from scipy import linalg

    a, b = a.astype(np.float64), b.astype(np.float64)
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    prod = s1 @ s2
    root = linalg.sqrtm(prod)
    resid = np.linalg.norm(root @ root - prod) / np.linalg.norm(prod)
    fd = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)
    # conditioning of tr sqrt(S1 S2): an eigenvalue perturbed by d moves its root by d / (2 sqrt(lambda));
    # a backward-stable float64 solver perturbs each by about dim * eps * lambda_max
    lam = np.clip(np.abs(np.linalg.eigvals(prod)), 1e-300, None)
    d = a.shape[1] * np.finfo(np.float64).eps * lam.max()
    cond = float(np.sum(d / np.sqrt(lam)))
    return fd, resid, float(np.trace(s1) + np.trace(s2)), cond


def test_fd_dino_features_and_frechet_against_scipy(tiny_dino):
    import torchvision.transforms as T

    from evaluation.dino import DinoV2Features

    net = DinoV2Features(tiny_dino)
    assert net.dim == 32 and net.sha256 == inc.file_sha256(net.weights) and "DINOv2" in net.network
    fake, real = M.to_uint8_rgb(_imgs(40, 3, size=40)), M.to_uint8_rgb(_imgs(48, 4, size=40))
    ff, fr = net(fake), net(real)
    assert ff.shape == (40, 32) and torch.isfinite(ff).all()
    # preprocessing as dgm-eval writes it: torchvision Resize((224,224), BICUBIC) on the PIL image,
    # ToTensor, ImageNet Normalize; CLS token after the final layer norm
    tf = T.Compose([T.Resize((224, 224), T.InterpolationMode.BICUBIC), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    px = torch.stack([tf(Image.fromarray(a.transpose(1, 2, 0))) for a in fake[:4].numpy()])
    with torch.inference_mode():
        ref = net.model(pixel_values=px).last_hidden_state[:, 0]
    assert torch.allclose(ff[:4], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    ours = M.frechet_distance(ff, fr)
    want, resid, scale, cond = _scipy_frechet(ff.numpy(), fr.numpy())
    # tolerance from what is compared: scipy's sqrtm residual, the conditioning of the trace root
    # (both methods' eigenvalue errors), float64 rounding of the traces
    tol = 10 * resid * scale + 2 * cond + 64 * np.finfo(np.float64).eps * scale
    assert abs(ours - want) <= tol, (ours, want, tol)
    assert ours > 0 and M.frechet_distance(ff, ff) == pytest.approx(0.0, abs=tol)


def test_fd_dino_missing_network_fails_in_one_line(tmp_path, monkeypatch):
    from evaluation.dino import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("PCPO_DINOV2", raising=False)
    for model in ("facebook/dinov2-large", str(tmp_path)):
        with pytest.raises(M.MissingNetwork) as e:
            resolve(model)
        assert "\n" not in str(e.value) and f"pcpo data fetch {M.FETCH_DINOV2}" in str(e.value)


# ----------------------------------------------------------------------------- evaluate_folder


def _sample_folder(root, sets):
    """A folder as pcpo sample writes it: sets = [(name, n_prompts, n_per_prompt, metrics, seed)]."""
    (root / "images").mkdir(parents=True)
    recs, info, k, g0 = [], {}, 0, 0
    for name, n_prompts, npp, metrics, seed in sets:
        x = M.to_uint8_rgb(_imgs(n_prompts * npp, seed))
        for j, a in enumerate(x.numpy()):
            f = f"images/{k:05d}.png"
            Image.fromarray(a.transpose(1, 2, 0)).save(root / f)
            recs.append({"file": f, "prompt": f"{name} prompt {j // npp}", "group": g0 + j // npp, "set": name,
                         "metadata": {"prompt_index": j // npp, "sample_index": j % npp}})
            k += 1
        info[name] = {"source": "list", "n_prompts": n_prompts, "n_per_prompt": npp, "n_images": n_prompts * npp,
                      "metrics": metrics}
        g0 += n_prompts
    (root / "manifest.json").write_text(json.dumps({"seed": 1, "prompt_sets": info, "images": recs}))
    return root


def test_evaluate_routes_metrics_to_prompt_sets_and_records_counts(tmp_path, cache, cheap_inception):
    from evaluation.evaluate import evaluate_folder

    samples = _sample_folder(tmp_path / "s", [("reward", 3, 2, ["reward"], 5), ("fid", 7, 1, ["fid", "kid"], 6)])
    ref = _write_folder(tmp_path / "ref", _imgs(9, 7), name="ref9")
    cfg = {"evaluation": {"reference": {"source": "folder", "path": str(ref)}}}
    res = {bs: evaluate_folder(samples, cfg, rewards=["jpeg_compressibility"],
                               metrics=["reward", "fid", "kid"], batch_size=bs)
           for bs in (2, 64)}
    m = res[64]["metrics"]
    assert m["reward/jpeg_compressibility"]["n"] == 6 and m["reward/jpeg_compressibility"]["prompt_set"] == "reward"
    assert m["fid"]["n"] == 7 and m["fid"]["prompt_set"] == "fid"
    assert m["fid"]["reference"] == "ref9" and m["fid"]["reference_n"] == 9 and m["kid"]["n"] == 7
    # FID on exactly the fid set's images against the folder, from an independent direct computation
    fake = torch.stack([torch.from_numpy(np.array(Image.open(samples / f"images/{k:05d}.png"))).permute(2, 0, 1)
                        for k in range(6, 13)])
    want = M.fid_from_features(M.inception_features(fake), M.inception_features(M.load_uint8_rgb(M.folder_images(ref))))
    assert m["fid"]["value"] == pytest.approx(want, rel=1e-4)
    # streaming in chunks of 2 gives the same numbers (up to float32 batch rounding)
    for k in m:
        assert res[2]["metrics"][k]["value"] == pytest.approx(m[k]["value"], rel=1e-4, abs=1e-9), k
    assert res[64]["device"] == "cpu"


def test_missing_inception_classifier_fails_before_any_work(tmp_path, cache, monkeypatch):
    from evaluation import evaluate as E

    if inc.has_real_logits():
        pytest.skip("torch-fidelity's Inception classifier is installed here")
    samples = _sample_folder(tmp_path / "s", [("all", 2, 2, None, 1)])
    ref = _write_folder(tmp_path / "ref", _imgs(4, 2))
    cfg = {"evaluation": {"reference": {"source": "folder", "path": str(ref)}}}
    for fn in ("inception_features", "folder_reference", "diversity"):
        monkeypatch.setattr(M, fn, lambda *a, _fn=fn, **k: pytest.fail(f"{_fn} ran before the network check"))
    with pytest.raises(M.MissingNetwork) as e:
        E.evaluate_folder(samples, cfg, metrics=["fid", "kid", "diversity_inception", "is"])
    assert "\n" not in str(e.value) and f"pcpo data fetch {M.FETCH_INCEPTION}" in str(e.value)


@pytest.mark.slow
def test_evaluate_cli_fd_dino_and_aggregate_columns(tmp_path, cache, tiny_dino):
    """pcpo evaluate --device cpu with fd_dino on a local DINOv2, then aggregate shows the metric and its counts."""
    import subprocess

    import pandas as pd

    from evaluation.aggregate import aggregate
    from tests.helpers import ROOT, pcpo_cmd

    res = tmp_path / "results" / "x"
    samples = _sample_folder(tmp_path / "s", [("all", 3, 2, None, 3)])
    ref = _write_folder(tmp_path / "ref", _imgs(8, 4), name="ref8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"evaluation": {"reference": {"source": "folder", "path": str(ref)},
                                              "dino_model": tiny_dino}}))
    out = res / "metrics" / "m" / "base.json"
    r = subprocess.run(pcpo_cmd("evaluate", "--config", str(cfg), "--samples", str(samples), "--out", str(out),
                                "--metric", "fd_dino", "--device", "cpu"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())["metrics"]
    assert m["fd_dino"]["value"] > 0 and m["fd_dino"]["n"] == 6 and m["fd_dino"]["reference"] == "ref8"
    assert m["fd_dino"]["sha256"] and "DINOv2" in m["fd_dino"]["network"]
    aggregate(res, {"matrix": [{"model": "m", "rewards": ["r"]}]})
    table = pd.read_csv(res / "tables" / "all_metrics.csv")
    assert table.loc[0, "fd_dino"] == pytest.approx(m["fd_dino"]["value"])
    assert table.loc[0, "fd_dino_n"] == 6 and table.loc[0, "fd_dino_ref"] == "ref8 (n=8)"
    nets = pd.read_csv(res / "tables" / "networks.csv")
    assert list(nets["metric"]) == ["fd_dino"] and list(nets["n"]) == [6] and "DINOv2" in nets.loc[0, "network"]
    # a DINOv2 that is not there: one line, nothing written
    cfg.write_text(json.dumps({"evaluation": {"reference": {"source": "folder", "path": str(ref)},
                                              "dino_model": str(tmp_path / "no-dino")}}))
    out2 = tmp_path / "none.json"
    r = subprocess.run(pcpo_cmd("evaluate", "--config", str(cfg), "--samples", str(samples), "--out", str(out2),
                                "--metric", "fd_dino"), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not out2.exists()
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "pcpo data fetch dinov2-large" in errors[0]


@pytest.mark.parametrize("name", ["dancegrpo_flux_hpsv21", "dancegrpo_sd14_hpsv21", "ddpo_sd15_aesthetic_bs256",
                                  "ddpo_sd15_aesthetic_bs512", "diffusionnft_sd35m_pickscore",
                                  "flowgrpo_sd35m_pickscore"])
def test_paper_configs_evaluate_held_out_prompts_and_fid_on_coco_captions(name):
    import yaml

    from tests.helpers import ROOT

    cfg = yaml.safe_load((ROOT / "config" / "paper" / f"{name}.yaml").read_text())
    ev = cfg["evaluation"]
    sets = evaluation_prompt_sets(ev, cfg["prompts"]["source"], cfg["prompts"]["options"])
    claimed = {m: n for n, s in sets.items() for m in s["metrics"]}
    assert set(ev["metrics"]) == set(claimed), "every metric is measured on a named prompt set"
    assert {"fd_dino", "diversity", "is"} <= set(ev["metrics"])
    fid = sets[claimed["fid"]]
    # FID on COCO captions against the COCO images they describe, one image each, the count stated
    assert fid["source"] == "coco-captions" and fid["path"] == ev["reference"]["path"]
    assert fid["n_per_prompt"] == 1 and fid["count"] == 30000 and ev["reference"]["path"].endswith(f"-n{fid['count']}")
    assert {claimed[m] for m in ("fid", "kid", "is", "fd_dino")} == {claimed["fid"]}
    rew = sets[claimed["reward"]]
    assert rew["path"] != cfg["prompts"]["options"]["path"] or "simple_animals" in rew["path"]
    assert (rew.get("n_per_prompt") or ev["n_per_prompt"]) >= 2  # within-prompt diversity needs pairs
