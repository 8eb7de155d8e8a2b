"""pcpo sample (fixed prompts x seeds, IRG) and pcpo evaluate (metrics that name their networks)."""
import json
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import ROOT, pcpo_cmd

# every test here trains or samples with the tiny models (a trainer, a CLI subprocess or a rollout):
# seconds to minutes each on 2 cores, so they run in the full suite, not in the fast tier
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models):
    """A 1-epoch fine-tune of the tiny random eps model, and its config."""
    tmp = tmp_path_factory.mktemp("sample")
    cfg = {
        "experiment": "t", "model": {"kind": "tiny-eps", "path": tiny_models["eps"]},
        "reward": {"name": "jpeg_incompressibility"}, "prompts": {"source": "tiny"},
        "sampling": {"steps": 4, "guidance_scale": 2.0},
        "train": {"epochs": 1, "prompts_per_epoch": 2, "group_size": 2, "train_batch_size": 4, "lr": 0.05,
                  "checkpoint_every": 1},
        "lora": {"enabled": True, "rank": 2, "alpha": 2},
    }
    cfgfile = tmp / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    run = tmp / "run"
    subprocess.run(pcpo_cmd("train", "--config", str(cfgfile), "--algorithm", "dancegrpo", "--out", str(run),
                            "--no-progress"), check=True, capture_output=True, cwd=ROOT)
    return {"cfg": cfgfile, "ckpt": run / "checkpoints" / "epoch_000000", "tmp": tmp}


def sample(trained, name, *extra):
    out = trained["tmp"] / name
    r = subprocess.run(pcpo_cmd("sample", "--config", str(trained["cfg"]), "--out", str(out), "--n-per-prompt", "2",
                                "--prompts-per-digit", "1", "--max-prompts", "3", "--no-progress", *extra),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    imgs = np.stack([np.asarray(Image.open(out / rec["file"])) for rec in man["images"]])
    return imgs, man


def test_irg_endpoints_reproduce_base_and_finetuned_exactly(trained):
    base, man = sample(trained, "base")
    tuned, _ = sample(trained, "tuned", "--checkpoint", str(trained["ckpt"]))
    irg0, _ = sample(trained, "irg0", "--checkpoint", str(trained["ckpt"]), "--irg-scale", "0")
    irg1, _ = sample(trained, "irg1", "--checkpoint", str(trained["ckpt"]), "--irg-scale", "1")
    irg2, m2 = sample(trained, "irg2", "--checkpoint", str(trained["ckpt"]), "--irg-scale", "2")
    assert len(man["images"]) == 6 and man["seed"] == 1234
    assert {"prompt", "metadata", "file", "group"} <= set(man["images"][0])
    assert not np.array_equal(base, tuned)  # the fine-tune changed the samples
    assert np.array_equal(irg0, base)
    assert np.array_equal(irg1, tuned)
    assert not np.array_equal(irg2, tuned) and m2["irg"] == [f"{trained['ckpt']}:2.0"]


def test_irg_composition_of_two_checkpoints(trained):
    ck = str(trained["ckpt"])
    half, _ = sample(trained, "comp", "--irg", f"{ck}:0.5", "--irg", f"{ck}:0.5")
    tuned, _ = sample(trained, "tuned2", "--checkpoint", ck)
    # two halves of the same model: the fine-tuned prediction up to rounding
    assert np.abs(half.astype(int) - tuned.astype(int)).max() <= 2


def test_same_seed_same_images_and_deterministic_sampler(trained):
    a, _ = sample(trained, "d1", "--deterministic")
    b, man = sample(trained, "d2", "--deterministic")
    assert np.array_equal(a, b)
    assert man["eta"] == 0.0 and man["deterministic"] is True


def test_evaluate_names_the_network_of_every_metric(trained, tmp_path):
    _, _ = sample(trained, "ev")
    out = tmp_path / "m.json"
    cfg = yaml.safe_load(trained["cfg"].read_text())
    cfg["evaluation"] = {"reference": {"source": "tiny-heldout"}}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(pcpo_cmd("evaluate", "--config", str(cfgfile), "--samples", str(trained["tmp"] / "ev"),
                                "--out", str(out), "--metric", "reward", "--metric", "fid", "--metric", "kid",
                                "--metric", "diversity", "--reward", "jpeg_compressibility"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["metrics"]) == {"reward/jpeg_compressibility", "fid", "kid", "diversity"}
    for name, m in res["metrics"].items():
        assert m.get("network"), name
        assert np.isfinite(m["value"]), name
    assert "lpips" not in res["metrics"]["diversity"]["network"].lower() or \
        res["metrics"]["diversity"].get("name", "").startswith("lpips")


def test_evaluate_rejects_unknown_metric(trained, tmp_path):
    sample(trained, "unk")
    r = subprocess.run(pcpo_cmd("evaluate", "--samples", str(trained["tmp"] / "unk"), "--out", str(tmp_path / "x.json"),
                                "--metric", "nosuch"), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--metric" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_coverage_needs_a_classifier(trained, tmp_path):
    sample(trained, "cov")
    cfg = yaml.safe_load(trained["cfg"].read_text())
    cfg["evaluation"] = {"reference": {"source": "tiny-heldout"}}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(pcpo_cmd("evaluate", "--config", str(cfgfile), "--samples", str(trained["tmp"] / "cov"),
                                "--out", str(tmp_path / "x.json"), "--metric", "coverage"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "evaluation.reference.classifier" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.json").exists()
