"""pcpo sample (fixed prompts x seeds, IRG) and pcpo evaluate (metrics that name their networks)."""
import json
import os
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


def test_sampling_memory_does_not_grow_with_prompt_count(tiny_models):
    """Streamed sampling: at most one decoded batch is alive at a time and text encoding sees one batch,
    for 4 or 24 prompts alike; each image's noise is its own, so batch size and prompt count do not
    change an image."""
    import weakref

    import torch

    from pcpo.models import load_model
    from pcpo.sample_cli import iter_samples
    from pcpo.tiny.prompts import eval_prompts

    adapter = load_model("tiny-eps", tiny_models["eps"])
    stats = {"live": [], "encode": []}
    refs = []
    decode, encode = adapter.decode, adapter.encode_prompts

    def counting_decode(x):
        alive = sum(r() is not None for r in refs)
        stats["live"].append(alive)
        out = decode(x)
        refs.append(weakref.ref(out))
        return out

    def counting_encode(texts):
        stats["encode"].append(len(texts))
        return encode(texts)

    adapter.decode, adapter.encode_prompts = counting_decode, counting_encode
    prompts = eval_prompts(n_per_digit=3)  # 30 prompts
    kw = dict(n_per_prompt=2, seed=7, sampler="ddim", steps=3, eta=1.0, noise_level=0.0, guidance_scale=2.0,
              progress=False)
    runs = {}
    for n_prompts, bs in ((4, 4), (24, 4), (4, 3)):
        stats["live"].clear(), stats["encode"].clear()
        imgs = []
        for batch, texts, metas in iter_samples(adapter, prompts[:n_prompts], batch_size=bs, **kw):
            imgs.append((batch.clamp(0, 1) * 255).round().to(torch.uint8))  # what pcpo sample writes, then drops
            del batch
        runs[(n_prompts, bs)] = torch.cat(imgs)
        n_batches = -(-n_prompts * 2 // bs)
        # one encode per batch (two with CFG when the null prompt goes through the encoder), never all prompts
        assert len(stats["encode"]) in (n_batches, 2 * n_batches) and max(stats["encode"]) <= bs
        # the previous batch's decoded images are gone before the next decode: memory is one batch
        assert max(stats["live"]) == 0, stats["live"]
    assert torch.equal(runs[(4, 4)], runs[(4, 3)])  # batch size does not change an image
    assert torch.equal(runs[(24, 4)][:8], runs[(4, 4)])  # more prompts do not change the first ones
    assert not torch.equal(runs[(24, 4)][:8], runs[(24, 4)][8:16])


def test_sample_reads_held_out_prompt_sets(trained, tmp_path):
    """evaluation.prompts: a named set per metric, each with its count; the manifest records the sets."""
    test = tmp_path / "test.txt"
    test.write_text("\n".join(f"the digit {d}" for d in range(10)) + "\n")
    cfg = yaml.safe_load(trained["cfg"].read_text())
    cfg["evaluation"] = {"prompts": {
        "reward": {"source": "file", "path": str(test), "count": 3, "seed": 0, "metrics": ["reward"]},
        "fid": {"source": "list", "prompts": ["the digit 1", "the digit 2"], "n_per_prompt": 1, "metrics": ["fid"]}}}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg, sort_keys=False))  # the sets are sampled in the file's order
    out = tmp_path / "sets"
    r = subprocess.run(pcpo_cmd("sample", "--config", str(cfgfile), "--out", str(out), "--n-per-prompt", "2",
                                "--batch-size", "3", "--no-progress"), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert [rec["set"] for rec in man["images"]] == ["reward"] * 6 + ["fid"] * 2
    assert man["prompt_sets"]["reward"]["n_images"] == 6 and man["prompt_sets"]["fid"]["n_per_prompt"] == 1
    want = [f"the digit {i}" for i in np.sort(np.random.default_rng(0).choice(10, size=3, replace=False))]
    assert [rec["prompt"] for rec in man["images"][:6:2]] == want
    assert len({rec["group"] for rec in man["images"]}) == 5
    # a training prompt file without evaluation.prompts: refused in one line, before any model loads
    cfg.pop("evaluation")
    cfg["prompts"] = {"source": "file", "options": {"path": str(test)}}
    cfgfile.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(pcpo_cmd("sample", "--config", str(cfgfile), "--out", str(tmp_path / "no"), "--no-progress"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "evaluation.prompts" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "no").exists()


def test_evaluate_names_the_network_of_every_metric(trained, tmp_path):
    _, _ = sample(trained, "ev")
    out = tmp_path / "m.json"
    cfg = yaml.safe_load(trained["cfg"].read_text())
    cfg["evaluation"] = {"reference": {"source": "tiny-heldout"}}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(pcpo_cmd("evaluate", "--config", str(cfgfile), "--samples", str(trained["tmp"] / "ev"),
                                "--out", str(out), "--metric", "reward", "--metric", "fid", "--metric", "kid",
                                "--metric", "diversity_inception", "--reward", "jpeg_compressibility"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["metrics"]) == {"reward/jpeg_compressibility", "fid", "kid", "diversity_inception"}
    for name, m in res["metrics"].items():
        assert m.get("network"), name
        assert np.isfinite(m["value"]), name
        assert m["n"] == 6, name  # every metric says how many images it measured
    assert res["metrics"]["diversity_inception"]["network"] == "inception_feature_distance"
    # every image's reward, by manifest position (the report labels sample grids with them): an independent
    # recomputation of the mean and of one image's value
    per = res["metrics"]["reward/jpeg_compressibility"]["per_image"]
    assert sorted(per["index"]) == list(range(6)) and len(per["value"]) == 6
    assert np.isclose(np.mean(per["value"]), res["metrics"]["reward/jpeg_compressibility"]["value"])
    from evaluation.evaluate import load_images, read_manifest
    from pcpo.rewards import get_reward

    recs = read_manifest(trained["tmp"] / "ev")["images"]
    k = per["index"][-1]
    one, _ = get_reward("jpeg_compressibility")(load_images(trained["tmp"] / "ev", [recs[k]]), [recs[k]["prompt"]],
                                                [recs[k]["metadata"]])
    assert np.isclose(float(np.asarray(one).reshape(-1)[0]), per["value"][-1], rtol=1e-5)
    assert res["metrics"]["fid"]["reference"].startswith("tiny-heldout") and res["metrics"]["fid"]["reference_n"] > 0


def test_evaluate_lpips_diversity_without_alexnet_fails_first(trained, tmp_path):
    """diversity is LPIPS or nothing: without the AlexNet weights, one line naming the fetch, before the
    reward and FID are computed (no output written)."""
    sample(trained, "lp")
    cfg = yaml.safe_load(trained["cfg"].read_text())
    cfg["evaluation"] = {"reference": {"source": "tiny-heldout"}}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    r = subprocess.run(pcpo_cmd("evaluate", "--config", str(cfgfile), "--samples", str(trained["tmp"] / "lp"),
                                "--out", str(tmp_path / "x.json"), "--metric", "fid", "--metric", "diversity",
                                "--reward", "jpeg_compressibility"),
                       capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "x.json").exists()
    assert "pcpo data fetch lpips-alexnet" in r.stderr and "fid+kid" not in r.stderr


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
