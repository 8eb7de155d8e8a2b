"""Summarise an over-optimisation run (``config/collapse.yaml``) as Markdown tables.

    python benchmarks/collapse_summary.py [results/collapse]

Reads ``tables/training.csv`` and ``tables/all_metrics.csv`` that the workflow's
aggregate step wrote and prints, per run: the training reward and the
training-batch digit alignment (mean of the first 3 epochs -> mean of the last 3),
and the held-out evaluation of the final checkpoint beside the base model's
(reward, alignment, FID, KID, IS, diversity, class coverage); then the same per
algorithm, averaged over seeds, with the count of seeds whose trained reward rose;
then every evaluated checkpoint per algorithm.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

K = 3  # epochs averaged at each end of a training curve
EVAL_COLS = [("reward/digit_boldness", "bold", 3), ("reward/digit_alignment", "align", 2), ("fid", "FID", 0),
             ("kid", "KID", 3), ("is", "IS", 2), ("diversity", "div", 3), ("coverage", "cover", 2)]


def _ends(g: pd.DataFrame, col: str) -> tuple[float, float]:
    g = g.sort_values("epoch")
    return float(g[col].head(K).mean()), float(g[col].tail(K).mean())


def summarise(results: Path) -> str:
    tr = pd.read_csv(results / "tables" / "training.csv")
    ev = pd.read_csv(results / "tables" / "all_metrics.csv")
    cols = [c for c, _, _ in EVAL_COLS if c in ev]
    heads = [h for c, h, _ in EVAL_COLS if c in ev]
    digits = {c: d for c, _, d in EVAL_COLS}
    rows = []
    for (model, reward, alg, seed), g in tr.groupby(["model", "reward", "algorithm", "seed"]):
        r0, r1 = _ends(g, "reward_mean")
        a0, a1 = _ends(g, "reward_info_alignment") if "reward_info_alignment" in g else (float("nan"),) * 2
        e = ev[(ev.model == model) & (ev.reward == reward) & (ev.algorithm == alg) & (ev.seed == seed)]
        last = e.sort_values("epoch").tail(1)
        rows.append({"model": model, "algorithm": alg, "seed": int(seed), "r0": r0, "r1": r1, "a0": a0, "a1": a1,
                     "epochs": int(g["epoch"].max()) + 1,
                     **{c: (float(last[c].iloc[0]) if len(last) else float("nan")) for c in cols}})
    runs = pd.DataFrame(rows)
    out = ["Per run (training: mean of the first 3 epochs -> last 3; evaluation: final checkpoint, "
           "held-out prompts):", "",
           "| model | algorithm | seed | epochs | train reward | train alignment | " + " | ".join(heads) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(heads)]
    for model in sorted(runs.model.unique()):
        base = ev[(ev.model == model) & (ev.algorithm == "base")].head(1)
        if len(base):
            out.append(f"| {model} | base | – | – | – | – | "
                       + " | ".join(f"{float(base[c].iloc[0]):.{digits[c]}f}" for c in cols) + " |")
        for _, r in runs[runs.model == model].sort_values(["algorithm", "seed"]).iterrows():
            vals = " | ".join(f"{r[c]:.{digits[c]}f}" for c in cols)
            out.append(f"| {model} | {r.algorithm} | {r.seed} | {r.epochs} | {r.r0:.3f} → {r.r1:.3f} | "
                       f"{r.a0:.2f} → {r.a1:.2f} | {vals} |")
    out += ["", "Per algorithm (mean over seeds; `rose`: seeds whose last-3 training reward exceeds the first 3):", "",
            "| model | algorithm | seeds | rose | train reward | train alignment | " + " | ".join(heads) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(heads)]
    for (model, alg), g in runs.groupby(["model", "algorithm"]):
        rose = int((g.r1 > g.r0).sum())
        vals = " | ".join(f"{g[c].mean():.{digits[c]}f}" for c in cols)
        out.append(f"| {model} | {alg} | {len(g)} | {rose}/{len(g)} | {g.r0.mean():.3f} → {g.r1.mean():.3f} | "
                   f"{g.a0.mean():.2f} → {g.a1.mean():.2f} | {vals} |")
    out += ["", "Per algorithm and evaluated checkpoint (mean over seeds; epoch -1 is the base model):", "",
            "| model | algorithm | epoch | " + " | ".join(heads) + " |", "|---|---|---|" + "---|" * len(heads)]
    for (model, alg), g in ev.groupby(["model", "algorithm"]):
        if alg == "base":
            continue
        base = ev[(ev.model == model) & (ev.algorithm == "base")].head(1)
        for epoch, h in ([(-1, base)] if len(base) else []) + list(g.groupby("epoch")):
            vals = " | ".join(f"{h[c].mean():.{digits[c]}f}" for c in cols)
            out.append(f"| {model} | {alg} | {int(epoch)} | {vals} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1] if len(sys.argv) > 1 else "results/collapse")))
