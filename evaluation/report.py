"""The report: tables (CSV, Markdown, LaTeX), plots and image grids.

Reads the tidy tables written by :mod:`evaluation.aggregate` and the sample
folders; writes ``results/<experiment>/report/`` with an ``index.md`` that
links every artefact.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.collapse import (
    GROUP_KEYS, auto_levels, bootstrap_ci, epochs_to_target_table, matched_reward_table,
)
from evaluation import figures as F
from evaluation.headline import FOREST, significance_page, write_headline
from evaluation.significance import SignificanceSettings, default_pairs, significance_settings, significance_table
from pcpo.utils import atomic_path, atomic_write_text

# distribution and diversity metrics; each metric's image count (``<metric>_n``) and reference set
# (``<metric>_ref``) come along in the tables
QUALITY = ["fid", "kid", "is", "fd_dino", "diversity", "diversity_inception", "coverage"]


# ------------------------------------------------------------------ tables

def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞"
        return f"{v:.4g}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&").replace("#", "\\#")


def _tex_cell(v) -> str:
    return _tex_escape(_fmt(v)).replace("∞", "$\\infty$").replace("–", "--")


def to_latex(df: pd.DataFrame, caption: str) -> str:
    cols = list(df.columns)
    out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex_escape(caption)}}}",
           "\\begin{tabular}{" + "l" * len(cols) + "}", "\\toprule",
           " & ".join(_tex_escape(c) for c in cols) + " \\\\", "\\midrule"]
    for _, r in df.iterrows():
        out.append(" & ".join(_tex_cell(r[c]) for c in cols) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def write_table(df: pd.DataFrame, out: Path, name: str, caption: str) -> list[Path]:
    paths = [out / f"{name}.csv", out / f"{name}.md", out / f"{name}.tex"]
    with atomic_path(paths[0]) as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_text(paths[1], f"**{caption}**\n\n" + to_markdown(df))
    atomic_write_text(paths[2], to_latex(df, caption))
    return paths


def final_reward_table(curves: pd.DataFrame, points: pd.DataFrame, last_k: int = 3) -> pd.DataFrame:
    rows = []
    for keys, g in curves.groupby(GROUP_KEYS):
        per_seed_first, per_seed_last, clip, inactive = [], [], [], []
        for _, s in g.groupby("seed"):
            s = s.sort_values("epoch")
            per_seed_first.append(float(s["reward_mean"].head(min(last_k, len(s))).mean()))
            per_seed_last.append(float(s["reward_mean"].tail(min(last_k, len(s))).mean()))
            clip.append(float(s["clipfrac"].mean()))
            if "clipfrac_inactive" in s:
                inactive.append(float(s["clipfrac_inactive"].mean()))
        first, _, _ = bootstrap_ci(per_seed_first)
        last, lo, hi = bootstrap_ci(per_seed_last)
        c, clo, chi = bootstrap_ci(clip)
        row = dict(zip(GROUP_KEYS, keys))
        row.update({"seeds": len(per_seed_last), "train_reward_first3": first, "train_reward_last3": last,
                    "last3_ci_low": lo, "last3_ci_high": hi, "gain": last - first,
                    "clipfrac_mean": c, "clipfrac_ci_low": clo, "clipfrac_ci_high": chi})
        if inactive:
            row["clipfrac_inactive_mean"] = bootstrap_ci(inactive)[0]
        if not points.empty:
            p = points[(points["model"] == keys[0]) & (points["reward"] == keys[1]) & (points["algorithm"] == keys[2])]
            if len(p):
                lastp = p[p["epoch"] == p["epoch"].max()]
                for col in ["eval_reward"] + [q for q in QUALITY if q in lastp]:
                    row[f"final_{col}"] = float(lastp[col].mean())
                    for extra in ("n", "ref"):  # what the number was measured on
                        if f"{col}_{extra}" in lastp and lastp[f"{col}_{extra}"].notna().any():
                            v = lastp[f"{col}_{extra}"].dropna().iloc[0]
                            row[f"final_{col}_{extra}"] = int(v) if extra == "n" else str(v)
        rows.append(row)
    return pd.DataFrame(rows)


def significance_caption(settings: SignificanceSettings) -> str:
    return (f"Differences b - a between each algorithm and its pcpo- variant (and the configured pairs): "
            f"{100 * settings.level:g}% percentile-bootstrap CI, two-sided permutation test over seeds "
            f"(paired sign-flip when both have the same seeds), and the paper's linear mixed model "
            f"(value ~ algorithm + C(epoch), random intercept per seed, REML, t with between-within df) over "
            f"seeds x evaluated checkpoints; verdict at alpha={settings.alpha:g} by the test "
            f"report.significance.test names ({settings.test}; auto: the permutation test where the seeds can "
            f"reach alpha, else the mixed model), seeds for {100 * settings.power:g}% power (t-test approximation)")


def write_significance(sig: pd.DataFrame, out: Path, settings: SignificanceSettings) -> list[Path]:
    """``significance.csv`` (every column), ``.md`` and ``.tex`` (the table without the
    verdicts, then the verdicts as a list) and ``.html`` (both, for the HTML report)."""
    caption = significance_caption(settings)
    table = sig.drop(columns=["verdict"], errors="ignore")
    verdicts = list(sig["verdict"]) if "verdict" in sig else []
    paths = [out / f"significance.{ext}" for ext in ("csv", "md", "tex", "html")]
    with atomic_path(paths[0]) as tmp:
        sig.to_csv(tmp, index=False)
    md = f"**{caption}**\n\n" + to_markdown(table) + "\n" + "".join(f"* {v}\n" for v in verdicts)
    atomic_write_text(paths[1], md)
    tex = to_latex(table, caption)
    if verdicts:
        items = (_tex_cell(v).replace("~", "$\\sim$").replace(">", "$>$") for v in verdicts)
        tex += "\\begin{itemize}\n" + "".join(f"\\item{{}} {v}\n" for v in items) + "\\end{itemize}\n"
    atomic_write_text(paths[2], tex)
    atomic_write_text(paths[3], significance_page(sig, settings, caption, out / FOREST))  # evaluation/headline.py
    return paths


# ------------------------------------------------------------------ plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    _plt().close(fig)
    return path


def _panels(df: pd.DataFrame):
    keys = sorted({(m, r) for m, r in zip(df["model"], df["reward"])})
    plt = _plt()
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5.2 * max(1, len(keys)), 3.8), squeeze=False,
                             layout="constrained")
    return fig, axes[0], keys


def plot_curves(curves: pd.DataFrame, col: str, ylabel: str, path: Path, title: str) -> Path | None:
    if curves.empty or col not in curves:
        return None
    fig, axes, keys = _panels(curves)
    for ax, (model, reward) in zip(axes, keys):
        sub = curves[(curves["model"] == model) & (curves["reward"] == reward)]
        for alg, g in sub.groupby("algorithm"):
            piv = g.pivot_table(index="epoch", columns="seed", values=col)
            mean, lo, hi = piv.mean(axis=1), piv.min(axis=1), piv.max(axis=1)
            line, = ax.plot(piv.index, mean, label=f"{alg} (n={piv.shape[1]})", lw=1.8,
                            ls="-" if alg.startswith("pcpo-") else "--")
            ax.fill_between(piv.index, lo, hi, color=line.get_color(), alpha=0.18)
        ax.set_title(f"{model} · {reward}")
        ax.set_xlabel("epoch")
        F.bounded_axis(ax, col, ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + " (line: mean over seeds; band: min–max)", fontsize=10)
    return _save(fig, path)


def plot_mismatch(curves: pd.DataFrame, clip_range: float, path: Path) -> Path | None:
    """The rollout's disagreement with the training forward (max |log rho| before the
    epoch's first update) against the clip range: above xi, rounding decides the clip."""
    col = "rollout_mismatch_max"
    if curves.empty or col not in curves or curves[col].isna().all():
        return None
    fig, axes, keys = _panels(curves)
    for ax, (model, reward) in zip(axes, keys):
        sub = curves[(curves["model"] == model) & (curves["reward"] == reward)]
        for alg, g in sub.groupby("algorithm"):
            piv = g.pivot_table(index="epoch", columns="seed", values=col)
            ax.plot(piv.index, piv.max(axis=1).clip(lower=1e-12), label=alg, lw=1.6,
                    ls="-" if alg.startswith("pcpo-") else "--")
        ax.axhline(clip_range, color="k", lw=1, ls=":", label=f"clip range ξ = {clip_range:g}")
        ax.set_yscale("log")
        ax.set_title(f"{model} · {reward}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("max |log ρ|, rollout vs training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Rollout/training disagreement before each epoch's first update (max over seeds; "
                 "floored at 1e-12)", fontsize=10)
    return _save(fig, path)


def plot_collapse(points: pd.DataFrame, metric: str, path: Path, label: str) -> Path | None:
    if points.empty or metric not in points or points[metric].isna().all():
        return None
    fig, axes, keys = _panels(points)
    for ax, (model, reward) in zip(axes, keys):
        sub = points[(points["model"] == model) & (points["reward"] == reward)]
        base = sub[sub["algorithm"] == "base"]
        for alg, g in sub[sub["algorithm"] != "base"].groupby("algorithm"):
            agg = g.groupby("epoch")[["eval_reward", metric]].mean().sort_index()
            if len(base):
                agg = pd.concat([base.groupby("epoch")[["eval_reward", metric]].mean(), agg])
            ax.plot(agg["eval_reward"], agg[metric], "o-" if alg.startswith("pcpo-") else "s--", ms=4, label=alg)
            ax.scatter(g["eval_reward"], g[metric], s=8, alpha=0.35)
        if len(base):
            ax.scatter(base["eval_reward"].mean(), base[metric].mean(), marker="*", s=140, c="k", label="base", zorder=5)
        ax.set_title(f"{model} · {reward}")
        ax.set_xlabel(f"evaluated reward ({reward}, {_images(sub, 'eval_reward', reward)})")
        F.bounded_axis(ax, metric, f"{label}\n({_images(sub, metric)})")
        ax.ticklabel_format(useOffset=False)  # an offset label would sit on the axis label
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Collapse curve: {label} against reward (checkpoints in order; points: seeds)", fontsize=10)
    return _save(fig, path)


def _images(points: pd.DataFrame, metric: str, reward: str | None = None) -> str:
    """'80 images' (per evaluated checkpoint), from the ``<metric>_n`` column of the tables."""
    col = f"reward/{reward}_n" if metric == "eval_reward" and reward else f"{metric}_n"
    ns = sorted({int(v) for v in points[col].dropna()}) if col in points else []
    if not ns:
        return "images per checkpoint not recorded"
    return f"{ns[0]} images" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} images"


def plot_epochs_to_target(ett: pd.DataFrame, path: Path) -> Path | None:
    if ett.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(ett)), 3.8))
    labels = [f"{r.model}·{r.algorithm}" for r in ett.itertuples()]
    x = np.arange(len(ett))
    err = np.vstack([ett["epochs_mean"] - ett["ci_low"], ett["ci_high"] - ett["epochs_mean"]])
    colors = ["tab:orange" if a.startswith("pcpo-") else "tab:blue" for a in ett["algorithm"]]
    ax.bar(x, ett["epochs_mean"], yerr=err, capsize=4, color=colors)
    for xi, r in zip(x, ett.itertuples()):
        if r.censored:
            ax.text(xi, r.epochs_mean, f"{r.censored} censored", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("epochs to target (95% bootstrap CI)")
    ax.set_title("Epochs to reach the target training reward", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _credits(results: Path) -> dict:
    """``{(model, algorithm): credit}`` from the first run's config.json of each."""
    seen = {}
    for f in sorted((results / "runs").glob("*/*/*/seed*/config.json")):
        d = json.loads(f.read_text())
        seen.setdefault((f.parts[-5], d["algorithm"]), d["credit"])
    return seen


def _effective(c: dict) -> np.ndarray:
    """Native weight times an objective's own per-step factor, on the steps it trains."""
    w = np.asarray(c["native"], dtype=float) * np.asarray(c["objective_weight"], dtype=float)
    keep = np.zeros(len(w), dtype=bool)
    keep[c.get("objective_pool", list(range(len(w))))] = True
    return np.where(keep, w, np.nan)


def credit_table(results: Path) -> pd.DataFrame:
    """Per model and step: the native weight, PCPO's trained weight, and the effective
    weight of every objective that reweights its steps (TempFlow-GRPO), side by side."""
    rows = []
    for (model, alg), c in sorted(_credits(results).items()):
        steps = range(len(c["native"]))
        if alg.startswith("pcpo-") and not alg.startswith("pcpo-base-"):
            kind, w = "pcpo", c["train_weight"]
        elif "objective_weight" in c:
            kind, w = "objective", _effective(c).tolist()
        else:
            kind, w = "native", c["native"]
        for i in steps:
            rows.append({"model": model, "algorithm": alg, "credit": kind, "step": i,
                         "timestep": float(c["timesteps"][i]), "weight": float(w[i]),
                         "share": float(w[i] / np.nansum(w)) if np.isfinite(w[i]) else math.nan})
    return pd.DataFrame(rows)


def plot_curves_vs_forwards(curves: pd.DataFrame, col: str, ylabel: str, path: Path, title: str) -> Path | None:
    """``col`` against the run's cumulative network forwards and backwards (``nfe_total``)."""
    if curves.empty or col not in curves or "nfe_total" not in curves or curves["nfe_total"].isna().all():
        return None
    fig, axes, keys = _panels(curves)
    for ax, (model, reward) in zip(axes, keys):
        sub = curves[(curves["model"] == model) & (curves["reward"] == reward)]
        for alg, g in sub.groupby("algorithm"):
            g = g.sort_values(["seed", "epoch"]).assign(cum=lambda d: d.groupby("seed")["nfe_total"].cumsum())
            piv = g.pivot_table(index="epoch", columns="seed", values=col)
            x = g.groupby("epoch")["cum"].mean().reindex(piv.index)
            line, = ax.plot(x, piv.mean(axis=1), label=f"{alg} (n={piv.shape[1]})", lw=1.8,
                            ls="-" if alg.startswith("pcpo-") else "--")
            ax.fill_between(x, piv.min(axis=1), piv.max(axis=1), color=line.get_color(), alpha=0.18)
        ax.set_title(f"{model} · {reward}")
        ax.set_xlabel("network forwards + backwards (cumulative, CFG counted per branch)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + " against compute (line: mean over seeds; band: min–max)", fontsize=10)
    return _save(fig, path)


def plot_credit_weights(results: Path, path: Path) -> Path | None:
    """Native vs trained (PCPO) weight per step for every algorithm and model, with the
    effective weight of objectives that reweight their steps (TempFlow-GRPO)."""
    seen = _credits(results)
    if not seen:
        return None
    models = sorted({m for m, _ in seen})
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.6), squeeze=False, layout="constrained")
    for ax, model in zip(axes[0], models):
        drawn_native = False
        for (m, alg), c in sorted(seen.items()):
            if m != model:
                continue
            steps = np.arange(len(c["native"]))
            if not drawn_native and not alg.startswith("pcpo-"):
                ax.plot(steps, c["native"], "k--", lw=1.5, label=f"native w(t) ({alg})")
                drawn_native = True
            if alg.startswith("pcpo-") and not alg.startswith("pcpo-base"):
                ax.plot(steps, c["train_weight"], "o-", ms=3, label=f"{alg} weight")
            elif "objective_weight" in c:
                ax.plot(steps, _effective(c), "^:", ms=4, label=f"{alg}: native × its step factor")
        ax.set_title(f"credit weights · {model}")
        ax.set_xlabel("sampling step (noise → data)")
        ax.set_ylabel("weight")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_credit_audit(audit: pd.DataFrame, path: Path) -> Path | None:
    if audit.empty:
        return None
    models = sorted(audit["model"].unique())
    plt = _plt()
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 6.4), squeeze=False, layout="constrained")
    for j, model in enumerate(models):
        sub = audit[audit["model"] == model]
        for alg, g in sub.groupby("algorithm"):
            share = g.groupby("step")["grad_share"].mean()
            clip = g.groupby("step")["clipfrac"].mean()
            st = "o-" if alg.startswith("pcpo-") else "s--"
            axes[0][j].plot(share.index, share.values, st, ms=3, label=alg)
            axes[1][j].plot(clip.index, clip.values, st, ms=3, label=alg)
        axes[0][j].set_title(f"credit audit · {model}")
        axes[0][j].set_ylabel("share of gradient norm\n(at the network output)")
        F.bounded_axis(axes[1][j], "clipfrac", "clip fraction |ρ−1| > ξ")
        axes[1][j].set_xlabel("sampling step (noise → data)")
        for a in axes[:, j]:
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    return _save(fig, path)


def image_grid(results: Path, model: str, reward: str, algorithm: str, seed: int, epochs: list[int],
               path: Path, n: int = 10) -> Path | None:
    """Rows: base model, then each checkpoint; columns: the same prompts and seeds."""
    from PIL import Image

    rows = [("base", results / "samples" / model / "base")]
    rows += [(f"epoch {e}", results / "samples" / model / reward / algorithm / f"seed{seed}" / f"epoch{e}") for e in epochs]
    rows = [(lbl, d) for lbl, d in rows if (d / "manifest.json").is_file()]
    if len(rows) < 2:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n, 0.95 * len(rows) + 0.4), squeeze=False)
    for i, (lbl, d) in enumerate(rows):
        man = json.loads((d / "manifest.json").read_text())
        recs = man["images"]
        step = max(1, len(recs) // n)
        pick = recs[::step][:n]
        for k in range(n):
            ax = axes[i][k]
            ax.axis("off")
            if k < len(pick):
                ax.imshow(np.asarray(Image.open(d / pick[k]["file"])), cmap="gray", vmin=0, vmax=255)
        axes[i][0].text(-0.2, 0.5, lbl, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{algorithm} · {model} · {reward} · seed {seed}", fontsize=9)
    return _save(fig, path)


# ------------------------------------------------------------------ report

def _seeds_desc(df: pd.DataFrame) -> str:
    """'ddpo (3 seeds), pcpo-ddpo (3 seeds) on eps · digit_boldness; ...' for a caption."""
    if df.empty:
        return "no runs"
    parts = []
    for (model, reward), g in df[df["algorithm"] != "base"].groupby(["model", "reward"]):
        algs = ", ".join(f"{a} ({s['seed'].nunique()} seed{'s' if s['seed'].nunique() != 1 else ''})"
                         for a, s in g.groupby("algorithm"))
        parts.append(f"{algs} on {model} · {reward}")
    return "; ".join(parts)


def _eval_desc(points: pd.DataFrame, metric: str | None = None) -> str:
    """Which checkpoints were evaluated and on how many images, for a caption."""
    if points.empty:
        return "no evaluated checkpoints"
    runs = points[points["epoch"] >= 0]
    epochs = sorted({int(e) for e in runs["epoch"]})
    n = _images(points, metric) if metric else _images(points, "eval_reward", str(points["reward"].iloc[0]))
    return (f"evaluated checkpoints: epochs {', '.join(map(str, epochs))} of {_seeds_desc(runs)}, and the base model; "
            f"{n} per checkpoint")


def build_report(results: str | Path, config: dict) -> Path:
    results = Path(results)
    out = results / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables = results / "tables"
    curves = _read(tables / "training.csv")
    audit = _read(tables / "credit_audit.csv")
    points = _read(tables / "all_metrics.csv")
    nets = _read(tables / "networks.csv")
    ev = config.get("evaluation", {})
    trained = {r for block in config.get("matrix", []) for r in block.get("rewards", [])}
    # targets of rewards no run trains are left out
    targets = {k: v for k, v in (ev.get("targets") or {}).items() if k in trained}
    sig_settings = significance_settings(config)
    sig = significance_table(curves, points, config, sig_settings)  # before any writes: a config error writes nothing
    items = F.ReportItems()
    sections: list[str] = [f"# Report: experiment `{config.get('experiment')}`\n"]
    # --- headline (evaluation/headline.py): verdict tables, pilot line, headline_forest.png ---
    head_md, head_files = write_headline(sig, sig_settings, out)
    sections.append(head_md)
    # --- end headline ---
    train_runs = _seeds_desc(curves)
    for f in head_files:
        items.add(f, F.STATISTICS, "Headline", "Every pcpo-X − X effect (start here)",
                  f"Forest plot: each pcpo-X − X difference with the CI of the test that decided its verdict "
                  f"(report.significance.test: {sig_settings.test}), one panel per metric; runs {train_runs}. "
                  f"The verdict tables and the pilot line are at the top of significance.html.")

    final = final_reward_table(curves, points) if not curves.empty else pd.DataFrame()
    paths = write_table(final, out, "final_reward", "Training reward (first and last 3 epochs, mean over seeds, 95% bootstrap CI) and clip fraction")
    items.add(paths[0], F.TRAINING, "Tables", "Final reward and clip fraction",
              f"Training reward of the first and the last 3 epochs (mean over seeds, 95% bootstrap CI), the gain, "
              f"the clip fraction and, in final_* columns, the last evaluated checkpoint's reward and quality with "
              f"the number of images each was measured on (final_<metric>_n). Runs: {train_runs}.")
    sections.append("## Final reward and clip fraction\n\n" + to_markdown(final))

    ett = epochs_to_target_table(curves, targets) if not curves.empty else pd.DataFrame()
    paths = write_table(ett, out, "epochs_to_target", "Epochs and network forwards to reach the target training reward "
                        "(95% bootstrap CI over seeds; forwards: forward and backward passes summed, CFG branches counted)")
    tdesc = ", ".join(f"{k} ≥ {v}" for k, v in targets.items()) or "none set"
    items.add(paths[0], F.TRAINING, "Tables", "Epochs and forwards to target",
              f"Epochs and network forwards and backwards until the training reward first reaches the target "
              f"({tdesc}); mean and 95% bootstrap CI over seeds; a run that never reaches it counts as its "
              f"epochs plus one and is counted in 'censored'. Runs: {train_runs}.")
    sections.append("## Epochs and forwards to target\n\nTargets: " + tdesc
                    + ". Forwards to target (`forwards_mean`) counts every network forward and backward pass up to "
                    "that epoch (rollout with CFG branches, rollout hooks, old-log-prob recompute, training, "
                    "reference model), so algorithms that sample or train different numbers of steps compare at "
                    "equal compute; a censored run counts its forwards plus one epoch's.\n\n" + to_markdown(ett))

    matched_frames = []
    if not points.empty:
        for (model, reward), p in points.groupby(["model", "reward"]):
            levels = ev.get("matched_rewards", {}).get(reward) or auto_levels(p, "eval_reward")
            metrics = [q for q in QUALITY if q in p and not p[q].isna().all()]
            if levels and metrics:
                t = matched_reward_table(p, "eval_reward", metrics, levels)
                for q in metrics:  # every quality number says from how many images
                    ns = p[p["epoch"] >= 0][f"{q}_n"].dropna() if f"{q}_n" in p else pd.Series(dtype=float)
                    t[f"{q}_images"] = int(ns.iloc[0]) if len(ns) and ns.nunique() == 1 else math.nan
                matched_frames.append(t)
    matched = pd.concat(matched_frames, ignore_index=True) if matched_frames else pd.DataFrame()
    paths = write_table(matched, out, "matched_reward", "Quality and diversity at matched evaluated reward (interpolated along checkpoints; 95% bootstrap CI)")
    items.add(paths[0], F.QUALITY, "Tables", "Quality and diversity at matched reward",
              f"Each quality and diversity metric interpolated along every run's evaluated checkpoints (the base "
              f"model first) at the same evaluated reward, then mean and 95% bootstrap CI over the seeds that reach "
              f"it (<metric>_seeds); <metric>_images is the number of images behind each value. "
              f"{_eval_desc(points)}.")
    sections.append("## Quality and diversity at matched reward\n\n" + to_markdown(matched))

    credit = credit_table(results)
    if not credit.empty:
        paths = write_table(credit, out, "credit_weights", "Per-step credit: native weight, PCPO's trained weight, and the "
                            "effective weight of objectives that reweight steps (native × their factor), with each one's "
                            "share of the trajectory")
        items.add(paths[0], F.CREDIT, "Weights", "Credit weights per step",
                  "Per model, algorithm and sampling step: the native weight, PCPO's trained weight or an "
                  "objective's effective weight, and its share of the trajectory (from each algorithm's first "
                  "run's config.json).")
        sections.append("## Credit over timesteps\n\nNative weight, PCPO's proportional weight and, for objectives "
                        "that reweight their steps (TempFlow-GRPO), native × their factor, as shares of the "
                        "trajectory (`credit_weights.csv`; plot below).\n\n"
                        + to_markdown(credit.pivot_table(index=["model", "step"], columns="algorithm",
                                                         values="share").reset_index()))

    for f in write_significance(sig, out, sig_settings):
        if f.suffix in (".html", ".csv"):
            items.add(f, F.STATISTICS, "Pairwise tests",
                      "Verdicts: pcpo-X against X" if f.suffix == ".html" else "Every pairwise test (table)",
                      significance_caption(sig_settings).rstrip(".") + f". Runs: {train_runs}.")
    sections.append("## Statistical tests\n\n" + significance_caption(sig_settings) + " (`significance.csv`, "
                    "`significance.html`).\n\n" + ("".join(f"* {v}\n" for v in sig["verdict"]) or "_(no pairs)_\n"))
    if not nets.empty:
        paths = write_table(nets, out, "networks", "The network and weights behind each metric")
        items.add(paths[0], F.QUALITY, "Tables", "Networks behind each metric",
                  "The network, weights file and sha256 that measured each reward and quality metric.")
        sections.append("## Networks behind each metric\n\n" + to_markdown(nets))

    clip = float((config.get("train") or {}).get("clip_range") or 1e-4)
    band = f"Line: mean over seeds; band: min to max over seeds. Runs: {train_runs}."
    plots = [
        ("Reward against epoch", plot_curves(curves, "reward_mean", "training reward", out / "reward_vs_epoch.png", "Training reward"),
         F.TRAINING, "Reward", f"Mean training reward of each epoch's rollouts against epoch. {band}"),
        ("Reward against network forwards",
         plot_curves_vs_forwards(curves, "reward_mean", "training reward", out / "reward_vs_forwards.png",
                                 "Training reward"),
         F.TRAINING, "Reward", f"Mean training reward against the cumulative network forwards and backwards "
                               f"(CFG branches counted), so runs compare at equal compute. {band}"),
        ("Clip fraction against epoch", plot_curves(curves, "clipfrac", "clip fraction |ρ−1| > ξ", out / "clipfrac_vs_epoch.png",
                                                    "Clip fraction as the references log it (|ρ−1| > ξ, two-sided)"),
         F.TRAINING, "Clipping", f"Share of sample-steps with |ρ−1| > ξ (two-sided, as the reference codes log it), "
                                 f"on its full range 0 to 1. {band}"),
        ("Inactive fraction against epoch", plot_curves(curves, "clipfrac_inactive", "share with zero gradient",
                                                        out / "clipfrac_inactive_vs_epoch.png",
                                                        "Share of sample-steps whose gradient the clip or hinge removed"),
         F.TRAINING, "Clipping", f"Share of sample-steps whose gradient the clip or the hinge removed, on its full "
                                 f"range 0 to 1. {band}"),
        ("Rollout/training mismatch against the clip range", plot_mismatch(curves, clip, out / "mismatch_vs_epoch.png"),
         F.TRAINING, "Clipping", f"Largest |log ρ| between the rollout and the training forward before each epoch's "
                                 f"first update (max over seeds, log axis), against the clip range ξ = {clip:g}. "
                                 f"Runs: {train_runs}."),
    ]
    collapse = [("fid", "FID (lower is better)", "FID"), ("kid", "KID (lower is better)", "KID"),
                ("diversity", "diversity (higher is more diverse)", "diversity"),
                ("diversity_inception", "diversity, Inception features (higher is more diverse)", "diversity_inception"),
                ("coverage", "class coverage (1 = all digits)", "coverage"),
                ("reward/digit_alignment", "digit alignment (p of prompted digit)", "alignment")]
    for metric, label, short in collapse:
        name = short.lower()
        plots.append((f"Collapse: {short} against reward",
                      plot_collapse(points, metric, out / f"collapse_{name}.png", label), F.QUALITY, "Collapse curves",
                      f"{label} against the evaluated reward along each algorithm's checkpoints (line: mean over "
                      f"seeds, starting at the base model's star; dots: single seeds). {_eval_desc(points, metric)}."))
    plots += [
        ("Epochs to target", plot_epochs_to_target(ett, out / "epochs_to_target.png"), F.TRAINING, "Reward",
         f"Epochs until the training reward first reaches its target ({tdesc}); bars: mean over seeds, whiskers: "
         f"95% bootstrap CI; censored runs are labelled. Runs: {train_runs}."),
        ("Credit weights: native against PCPO", plot_credit_weights(results, out / "credit_weights.png"), F.CREDIT,
         "Weights", "Per sampling step: the native weight w(t) of the baseline, PCPO's trained weight and the "
                    "effective weight of objectives that reweight their steps (from each algorithm's first run)."),
        ("Credit audit per timestep", plot_credit_audit(audit, out / "credit_audit.png"), F.CREDIT, "Audit",
         f"Per sampling step, averaged over epochs and seeds: the share of the gradient norm at the network output "
         f"(top) and the clip fraction on its full range (bottom). Runs: {_seeds_desc(audit) if not audit.empty else 'none'}."),
    ]
    grids = []
    pair_grids = []
    epochs = sorted(int(e) for e in ev.get("epochs", []))
    seen = set()
    for block in config.get("matrix", []):
        for reward in block["rewards"]:
            algs = [a for b2 in config.get("matrix", []) if b2["model"] == block["model"] and reward in b2["rewards"]
                    for a in b2["algorithms"]]
            pairs = default_pairs(algs) + [p for p in sig_settings.pairs if set(p) <= set(algs)]
            for a, b in dict.fromkeys(pairs):
                key = ("pair", block["model"], reward, a, b)
                if key in seen or points.empty:
                    continue
                seen.add(key)
                got = F.pair_grid(results, points, matched, block["model"], reward, a, b,
                                  out / f"pair_{block['model']}_{reward}_{a}_vs_{b}.png")
                if got:
                    path, info = got
                    pair_grids.append((f"Samples: {a} against {b} on {block['model']} ({reward}) at matched reward", path))
                    rows = "; ".join(f"{lbl} (evaluated reward {r:.3f})" for lbl, r in zip(info["rows"], info["rewards"]))
                    per = ("the number under each image is that image's reward" if info["per_image"] else
                           "per-image rewards were not stored by this evaluation (rerun evaluate), so '–' is shown")
                    items.add(path, F.SAMPLES, "Pairs at matched reward", f"{a} against {b} · {block['model']} · {reward}",
                              f"The base model, {a} and {b}, each at the evaluated checkpoint (any seed) whose "
                              f"{reward} is nearest the {info['how']} reward {info['level']:.3f} of the quality "
                              f"table: {rows}. Columns: {info['images']} evaluation images, one per prompt, the same "
                              f"prompt (above) and the same initial noise in every row; {per}.")
            for alg in block["algorithms"]:
                key = (block["model"], reward, alg)
                if key in seen:
                    continue
                seen.add(key)
                seed = int(block["seeds"][0])
                g = image_grid(results, block["model"], reward, alg, seed, epochs,
                               out / f"grid_{block['model']}_{reward}_{alg}.png")
                if g:
                    grids.append((f"Samples: {alg} on {block['model']} ({reward}, seed {seed})", g))
                    items.add(g, F.SAMPLES, "Across checkpoints", f"{alg} · {block['model']} · {reward} · seed {seed}",
                              f"Rows: the base model, then seed {seed}'s evaluated checkpoints (epochs "
                              f"{', '.join(map(str, epochs))}); columns: the same 10 evaluation images (prompt and "
                              f"initial noise) in every row.")
    run_pages = []
    if not curves.empty:
        cols = F.run_columns(curves)
        for (model, reward, alg), g in curves.groupby(GROUP_KEYS):
            path = F.plot_run_page(curves, model, reward, alg, out / f"run_{model}_{reward}_{alg}.png")
            if path:
                run_pages.append((f"Run: {alg} on {model} ({reward})", path))
                items.add(path, F.RUNS, f"{model} · {reward}", f"{alg} · {model} · {reward}",
                          f"Every numeric column of the runs' metrics.csv ({len(F.run_columns(g))} of {len(cols)} "
                          f"hold values) against epoch: each of the {g['seed'].nunique()} seeds "
                          f"({', '.join(str(s) for s in sorted(g['seed'].unique()))}) a thin grey line, the mean "
                          f"over seeds thick. Fractions are on their full range 0 to 1; other panels are zoomed.")
    for title, p, cat, sub, cap in plots:
        items.add(p, cat, sub, title, cap)
    sections.append("## Plots\n")
    for title, p in [(t, p) for t, p, *_ in plots] + pair_grids + grids + run_pages:
        if p is not None:
            sections.append(f"### {title}\n\n![{title}]({p.name})\n")
    index = out / "index.md"
    atomic_write_text(index, "\n".join(sections))
    items.write(out)  # last: it registers every PNG/CSV/HTML in the folder for the HTML report
    return index


def _read(p: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(p)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()
