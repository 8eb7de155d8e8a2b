"""A finished results tree of the default experiment without running it: the tables of the
reference run (results/reference/tiny/tables, real numbers), and for every evaluated folder
of those tables a small sample folder (manifest + PNGs) and an evaluation JSON with per-image
rewards whose mean is the table's value, plus each run's config.json with its credit weights.
Building it takes about a second; the report then has every kind of figure to draw."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from tests.helpers import ROOT

N_PER_PROMPT, PROMPTS_PER_DIGIT = 4, 2
N_IMAGES = 10 * PROMPTS_PER_DIGIT * N_PER_PROMPT


def _sample_folder(d: Path, rng: np.random.Generator) -> list[dict]:
    (d / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for k in range(10 * PROMPTS_PER_DIGIT):
        digit = k // PROMPTS_PER_DIGIT
        for j in range(N_PER_PROMPT):
            name = f"{k:04d}_{j}.png"
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(d / "images" / name)
            recs.append({"file": f"images/{name}", "prompt": f"a handwritten {digit}",
                         "metadata": {"digit": digit, "prompt_index": k, "sample_index": j}, "group": k})
    (d / "manifest.json").write_text(json.dumps({"images": recs, "seed": 1234, "n_per_prompt": N_PER_PROMPT}))
    return recs


def build_tree(root: Path) -> tuple[Path, dict]:
    """``root/results/tiny`` and the config (config/tiny.yaml with ``results: root/results``)."""
    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    cfg["results"] = str(root / "results")
    res = root / "results" / "tiny"
    shutil.copytree(ROOT / "results/reference/tiny/tables", res / "tables")
    pts = pd.read_csv(res / "tables" / "all_metrics.csv")
    # the image count of each metric, as the aggregate of today writes it (<metric>_n)
    for col in ["fid", "kid", "is", "diversity", "reward/digit_alignment", "reward/digit_boldness",
                "reward/jpeg_compressibility"]:
        if col in pts:
            pts[f"{col}_n"] = N_IMAGES
    pts.to_csv(res / "tables" / "all_metrics.csv", index=False)
    rng = np.random.default_rng(0)
    for r in pts.itertuples():
        row = r._asdict()
        rel = (Path(r.model) / "base" if r.epoch < 0 else
               Path(r.model) / r.reward / r.algorithm / f"seed{int(r.seed)}" / f"epoch{int(r.epoch)}")
        if not (res / "samples" / rel / "manifest.json").is_file():
            _sample_folder(res / "samples" / rel, rng)
        metrics = {}
        for i, name in enumerate(cfg["evaluation"]["rewards"]):
            v = pts.loc[r.Index, f"reward/{name}"]
            per = v + rng.normal(0, 0.02, N_IMAGES)
            per += v - per.mean()  # the mean is the table's value
            metrics[f"reward/{name}"] = {"value": float(v), "n": N_IMAGES,
                                         "per_image": {"index": list(range(N_IMAGES)), "value": per.tolist()}}
        out = res / "metrics" / rel.with_suffix(".json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"metrics": metrics, "n_images": N_IMAGES}))
        del row
    curves = pd.read_csv(res / "tables" / "training.csv")
    for (model, reward, alg, seed), g in curves.groupby(["model", "reward", "algorithm", "seed"]):
        d = res / "runs" / model / reward / alg / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        g.drop(columns=["model", "reward", "algorithm", "seed"]).to_csv(d / "metrics.csv", index=False)
        t = np.linspace(1, 0, 16, endpoint=False)
        native = (1 - t + 0.1).tolist()
        (d / "config.json").write_text(json.dumps({"algorithm": alg, "credit": {
            "native": native, "train_weight": [1.0] * 16 if alg.startswith("pcpo-") else native,
            "timesteps": (1000 * t).tolist()}}))
    return res, cfg
