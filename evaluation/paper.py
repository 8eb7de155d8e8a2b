"""The paper's figures and tables, ours beside the paper's numbers.

Reads the figure list (``workflow/paper_figures.yaml``: for each figure the paper settings it
covers, what it makes, and the paper's reported numbers) and the reports of the experiments that
stand for those settings (``results/<experiment>/report`` and ``tables``, written by
``pcpo report``), and writes ``<out>/`` with one file per figure and an ``index.md``:

    python -m evaluation.paper --figures workflow/paper_figures.yaml --world tiny \
        --results results --irg results/paper/tiny/irg/irg.csv --out results/paper/tiny

The Snakemake target ``paper`` (workflow/rules/paper.smk) runs the experiments and then this.
Tables and plots reuse :mod:`evaluation.report`; the matched-reward values are interpolated as the
report's (:func:`evaluation.collapse.matched_reward_table`), at the highest reward both runs of a
setting's pair reach (:func:`matched_level`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from evaluation.collapse import RUN_KEYS, matched_reward_table
from evaluation.report import _plt, _read, _save, credit_table, plot_curves, to_markdown, write_table
from pcpo.utils import atomic_write_text


class PaperError(ValueError):
    """A figure list or a result the figures need is missing or malformed (one line, no traceback)."""


KINDS = ("epochs_table", "matched_table", "curves", "credit", "grids", "irg")


# ------------------------------------------------------------------ the figure list

def load_figures(path: str | Path, world: str) -> dict:
    """The figure list with ``settings`` resolved for ``world``; checked before anything is written."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PaperError(f"{path}: no such file; pass the figure list (workflow/paper_figures.yaml)") from None
    worlds = spec.get("worlds") or {}
    if world not in worlds:
        raise PaperError(f"{path}: no world {world!r} under worlds: (it has {sorted(worlds)})")
    settings = worlds[world].get("settings") or {}
    for name, s in settings.items():
        miss = [k for k in ("experiment", "model", "reward", "baseline", "pcpo") if k not in s]
        if miss:
            raise PaperError(f"{path}: worlds.{world}.settings.{name}: missing {', '.join(miss)}")
        if s["experiment"] not in (worlds[world].get("experiments") or {}):
            raise PaperError(f"{path}: worlds.{world}.settings.{name}: experiment {s['experiment']!r} is not "
                             f"under worlds.{world}.experiments")
    for fname, fig in (spec.get("figures") or {}).items():
        if fig.get("kind") not in KINDS:
            raise PaperError(f"{path}: figures.{fname}.kind: {fig.get('kind')!r}; one of {', '.join(KINDS)}")
        used = fig.get("settings") or [fig.get("setting")]
        bad = [s for s in used if s not in settings]
        if bad:
            raise PaperError(f"{path}: figures.{fname}: settings {bad} have no entry under worlds.{world}.settings")
    return {"world": world, "settings": settings, "figures": spec.get("figures") or {},
            "labels": spec.get("settings_labels") or {}}


def paper_world(figures: str | Path, environ=None) -> str:
    """The world `snakemake paper` builds: $PCPO_PAPER_WORLD (default ``full``), checked against the list."""
    import os

    world = (environ if environ is not None else os.environ).get("PCPO_PAPER_WORLD", "full")
    worlds = (yaml.safe_load(Path(figures).read_text()) or {}).get("worlds") or {}
    if world not in worlds:
        raise PaperError(f"PCPO_PAPER_WORLD={world!r}: {figures} has worlds {sorted(worlds)}; set it to one of them")
    return world


def experiment_configs(figures: str | Path, world: str, root: str | Path, results: str) -> dict[str, dict]:
    """Each experiment of ``world`` as the config its Snakemake module gets: the experiment's file
    (relative to ``root``) with the entry's ``layer:`` merged over it, renamed to its key, its results
    under ``results`` (the invocation's results root), keeping only the matrix blocks of ``models:``
    where given."""
    raw = yaml.safe_load(Path(figures).read_text())
    out = {}
    for name, entry in ((raw.get("worlds") or {}).get(world, {}).get("experiments") or {}).items():
        path = Path(root, entry["config"])
        if not path.is_file():
            raise PaperError(f"{figures}: worlds.{world}.experiments.{name}: no config file {entry['config']}")
        cfg = yaml.safe_load(path.read_text())
        if entry.get("layer"):
            # the world's own values over the config's (dicts merged key by key, a list replaced whole)
            from pcpo.config import deep_merge

            cfg = deep_merge(cfg, entry["layer"])
        cfg["experiment"] = name
        cfg["results"] = results
        if entry.get("models"):
            cfg["matrix"] = [b for b in cfg["matrix"] if b["model"] in entry["models"]]
            if not cfg["matrix"]:
                raise PaperError(f"{figures}: worlds.{world}.experiments.{name}: models {entry['models']} match "
                                 f"no matrix block of {entry['config']}")
        out[name] = cfg
    return out


def figure_outputs(spec: dict) -> dict[str, list[str]]:
    """Figure name -> the file names (under the output folder) it makes; what the test checks."""
    out = {}
    for name, fig in spec["figures"].items():
        kind = fig["kind"]
        if kind in ("epochs_table", "matched_table"):
            out[name] = [f"{name}.csv", f"{name}.md", f"{name}.tex"]
        elif kind in ("curves", "credit"):
            out[name] = [f"{name}.png"]
        elif kind == "grids":
            out[name] = [f"{name}_{s}.png" for s in fig["settings"]]
        elif kind == "irg":
            out[name] = [f"{name}.csv", f"{name}.md", f"{name}.tex", f"{name}.png"]
    return out


# ------------------------------------------------------------------ helpers

def _exp_dir(results: Path, setting: dict) -> Path:
    return results / setting["experiment"]


def _need(df: pd.DataFrame, path: Path, what: str) -> pd.DataFrame:
    if df.empty:
        raise PaperError(f"{path}: missing or empty; it holds {what}: run `snakemake paper` (or the "
                         "experiment's report) first")
    return df


def _pair(df: pd.DataFrame, s: dict) -> pd.DataFrame:
    return df[(df["model"] == s["model"]) & (df["reward"] == s["reward"]) & df["algorithm"].isin([s["baseline"], s["pcpo"]])]


def _num(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _exp_config(results: Path, s: dict) -> dict:
    p = _exp_dir(results, s) / "config.yaml"
    return yaml.safe_load(p.read_text()) if p.is_file() else {}


# ------------------------------------------------------------------ tables

def epochs_table(spec: dict, fig: dict, results: Path) -> pd.DataFrame:
    """Per setting: the target, and epochs to it for baseline and PCPO, the paper's beside ours."""
    rows = []
    for name in fig["settings"]:
        s = spec["settings"][name]
        path = _exp_dir(results, s) / "report" / "epochs_to_target.csv"
        ett = _pair(_need(_read(path), path, "epochs to target"), s)
        paper = (fig.get("paper") or {}).get(name, {})
        target = (_exp_config(results, s).get("evaluation", {}).get("targets") or {}).get(s["reward"])
        row = {"setting": spec["labels"].get(name, name), "ours: model · reward": f"{s['model']} · {s['reward']}",
               "paper target": paper.get("target"), "our target": target}
        for role in ("baseline", "pcpo"):
            r = ett[ett["algorithm"] == s[role]]
            ours = math.nan if r.empty else float(r["epochs_mean"].iloc[0])
            lab = "PCPO" if role == "pcpo" else "baseline"
            row[f"{lab} paper"] = paper.get(role)
            cell = f"{s[role]}: " + _num(ours)
            if not r.empty:
                cell += f" [{_num(float(r['ci_low'].iloc[0]))}, {_num(float(r['ci_high'].iloc[0]))}]"
                if int(r["censored"].iloc[0]):
                    cell += f" ({int(r['censored'].iloc[0])} censored)"
            row[f"{lab} ours"] = cell if not r.empty else f"{s[role]}: – (no run)"
        rows.append(row)
    return pd.DataFrame(rows)


def _tiny_metric(fig: dict, world: str, metric: str) -> str:
    return (fig.get("tiny_metrics") or {}).get(metric, metric) if world == "tiny" else metric


def matched_level(points: pd.DataFrame, s: dict) -> tuple[float, float]:
    """``(level, base reward)`` of a setting's pair: the highest evaluated reward that every run of
    the baseline and of PCPO reaches at one of its checkpoints (the lowest of the runs' best
    rewards), the level the sample grids use too (:func:`_matched_checkpoint`).  The report's own
    levels (:func:`evaluation.collapse.auto_levels`) span every algorithm of the experiment and lie
    strictly between the base model's reward and the lowest final one, so a pair whose runs end
    below the base model (a small budget) has none there."""
    p = points[(points["model"] == s["model"]) & (points["reward"] == s["reward"])]
    base = p[p["epoch"] < 0]["eval_reward"]
    base_r = float(base.mean()) if len(base) else math.nan
    runs = _pair(p[p["epoch"] >= 0], s)
    missing = [s[r] for r in ("baseline", "pcpo") if s[r] not in set(runs["algorithm"])]
    if missing:
        raise PaperError(f"no evaluated checkpoint of {', '.join(missing)} on {s['model']} · {s['reward']}")
    return float(runs.groupby(RUN_KEYS)["eval_reward"].max().min()), base_r


def matched_table(spec: dict, fig: dict, results: Path) -> pd.DataFrame:
    """Per setting and metric: baseline -> PCPO at the highest reward both reach (:func:`matched_level`),
    each metric interpolated along the checkpoints of every run at that level (first crossing) and
    averaged over seeds (:func:`evaluation.collapse.matched_reward_table`), beside the paper's."""
    rows = []
    for name in fig["settings"]:
        s = spec["settings"][name]
        path = _exp_dir(results, s) / "tables" / "all_metrics.csv"
        points = _need(_read(path), path, "evaluated checkpoints")
        level, base_r = matched_level(points, s)
        cols = {metric: _tiny_metric(fig, spec["world"], metric) for metric in fig["metrics"]}
        have = [c for c in cols.values() if c in points and not points[c].isna().all()]
        sel = points[(points["model"] == s["model"]) & (points["reward"] == s["reward"])]
        # the base model starts every run's path (as in the report) where it lies below the level; at or
        # above it, its first crossing would be the base itself: then the checkpoints alone are compared
        above = level > base_r
        sel = pd.concat([sel[sel["epoch"] < 0]] * above + [_pair(sel[sel["epoch"] >= 0], s)], ignore_index=True)
        mt = matched_reward_table(sel, "eval_reward", have, [level]) if have else pd.DataFrame()
        paper = (fig.get("paper") or {}).get(name, {})
        row = {"setting": spec["labels"].get(name, name), "ours: model · reward": f"{s['model']} · {s['reward']}"}
        for metric, header in fig["metrics"].items():
            col = cols[metric]
            p = paper.get(metric)
            row[f"{header} paper"] = f"{_num(float(p[0]), 4)} → {_num(float(p[1]), 4)}" if p else "–"
            cell = "– (not measured)"
            if col in have:
                v = {r["algorithm"]: r[col] for _, r in mt.iterrows()}
                b, q = v.get(s["baseline"], math.nan), v.get(s["pcpo"], math.nan)
                cell = f"{_num(float(b), 4)} → {_num(float(q), 4)}" + (f" ({col})" if col != metric else "")
            row[f"{header} ours"] = cell
        row["matched reward (ours)"] = _num(level, 4)
        row["note"] = ("" if above else f"a run ends at or below the base model's reward ({_num(base_r, 4)}): "
                       "its checkpoints compared at the highest reward both reach")
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ plots

def _setting_curves(spec: dict, fig: dict, results: Path) -> pd.DataFrame:
    """The training curves of each setting's pair, with `model` replaced by the setting's label so
    that :func:`evaluation.report.plot_curves` draws one panel per setting."""
    frames = []
    for i, name in enumerate(fig["settings"]):
        s = spec["settings"][name]
        path = _exp_dir(results, s) / "tables" / "training.csv"
        c = _pair(_need(_read(path), path, "training curves"), s).copy()
        # (a), (b), ...: plot_curves orders its panels by name; this keeps the figure list's order
        c["model"] = f"({chr(97 + i)}) {spec['labels'].get(name, name)} [ours: {s['model']}]"
        frames.append(c)
    return pd.concat(frames, ignore_index=True)


def curves_plot(spec: dict, fig: dict, results: Path, path: Path) -> Path:
    curves = _setting_curves(spec, fig, results)
    col = fig["column"]
    if col not in curves or curves[col].isna().all():
        raise PaperError(f"figure {path.stem}: no run logged column {col!r}")
    out = plot_curves(curves, col, fig.get("ylabel", col), path, fig.get("title", path.stem))
    if out is None:
        raise PaperError(f"figure {path.stem}: nothing to plot")
    return out


def credit_plot(spec: dict, fig: dict, results: Path, path: Path) -> tuple[Path, pd.DataFrame]:
    """Native against PCPO's per-step credit, as shares of the trajectory, one panel per setting."""
    plt = _plt()
    names = fig["settings"]
    f, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.6), squeeze=False, layout="constrained")
    rows = []
    for ax, name in zip(axes[0], names):
        s = spec["settings"][name]
        ct = credit_table(_exp_dir(results, s))
        if ct.empty:
            raise PaperError(f"{_exp_dir(results, s)}/runs: no run config.json with credit; run the experiment first")
        ct = ct[ct["model"] == s["model"]]
        for alg, style in ((s["baseline"], "k--"), (s["pcpo"], "o-")):
            g = ct[ct["algorithm"] == alg].sort_values("step")
            if g.empty:
                raise PaperError(f"{_exp_dir(results, s)}: no {alg} run on {s['model']} for the credit figure")
            ax.plot(g["step"], g["share"], style, ms=3, label=f"{alg} ({g['credit'].iloc[0]})")
            rows.append(g.assign(setting=name))
        ax.set_title(spec["labels"].get(name, name), fontsize=9)
        ax.set_xlabel("sampling step (noise → data)")
        ax.set_ylabel("share of the trajectory's credit")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    f.suptitle(fig.get("title", "per-step credit"), fontsize=10)
    return _save(f, path), pd.concat(rows, ignore_index=True)


def _matched_checkpoint(points: pd.DataFrame, s: dict, seed: int) -> tuple[dict, float]:
    """For baseline and PCPO (one seed): the evaluated checkpoint whose reward is closest to the
    highest reward both reach (the lower of the two maxima)."""
    p = points[(points["model"] == s["model"]) & (points["reward"] == s["reward"]) & (points["seed"] == seed)
               & (points["epoch"] >= 0)]
    best = {}
    for role in ("baseline", "pcpo"):
        g = p[p["algorithm"] == s[role]]
        if g.empty:
            raise PaperError(f"no evaluated checkpoint of {s[role]} seed {seed} on {s['model']} · {s['reward']}")
        best[role] = g
    level = min(float(g["eval_reward"].max()) for g in best.values())
    pick = {role: g.iloc[int(np.argmin(np.abs(g["eval_reward"].to_numpy() - level)))] for role, g in best.items()}
    return pick, level


def grid_plot(spec: dict, fig: dict, results: Path, name: str, path: Path) -> Path:
    """Rows: base model, baseline and PCPO at matched reward; columns: the same prompts and seeds."""
    from PIL import Image

    s = spec["settings"][name]
    exp = _exp_dir(results, s)
    pts_path = exp / "tables" / "all_metrics.csv"
    points = _need(_read(pts_path), pts_path, "evaluated checkpoints")
    seed = int(points[(points["model"] == s["model"]) & (points["epoch"] >= 0)]["seed"].min())
    pick, level = _matched_checkpoint(points, s, seed)
    rows = [("base", exp / "samples" / s["model"] / "base")]
    for role in ("baseline", "pcpo"):
        r = pick[role]
        rows.append((f"{s[role]}\nepoch {int(r['epoch'])}\nreward {float(r['eval_reward']):.3g}",
                     exp / "samples" / s["model"] / s["reward"] / s[role] / f"seed{seed}" / f"epoch{int(r['epoch'])}"))
    n = int(fig.get("n", 8))
    plt = _plt()
    f, axes = plt.subplots(len(rows), n, figsize=(1.0 * n + 1.0, 1.05 * len(rows) + 0.5), squeeze=False)
    for i, (lbl, d) in enumerate(rows):
        man = d / "manifest.json"
        if not man.is_file():
            raise PaperError(f"{man}: missing; the samples of this checkpoint were not written")
        recs = json.loads(man.read_text())["images"]
        pick_recs = recs[:: max(1, len(recs) // n)][:n]
        for k in range(n):
            ax = axes[i][k]
            ax.axis("off")
            if k < len(pick_recs):
                img = np.asarray(Image.open(d / pick_recs[k]["file"]))
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        axes[i][0].text(-0.15, 0.5, lbl, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=7)
    f.suptitle(f"{spec['labels'].get(name, name)} · ours: {s['model']} · {s['reward']} · seed {seed} · "
               f"matched reward ≈ {level:.3g}", fontsize=9)
    return _save(f, path)


def irg_outputs(irg_csv: Path, fig: dict, out: Path, name: str) -> pd.DataFrame:
    df = _need(_read(irg_csv), irg_csv, "the IRG samples' metrics per lambda")
    want = [float(x) for x in fig.get("lambdas", [])]
    have = sorted(float(x) for x in df["lambda"])
    if want and have != sorted(want):
        raise PaperError(f"{irg_csv}: lambdas {have}, the figure list asks {sorted(want)}; rerun the paper_irg rule")
    write_table(df, out, name, fig.get("title", "IRG") + " (lambda 0: base model, 1: the fine-tuned one)")
    cols = [c for c in df.columns if c != "lambda" and (c.startswith("reward") or c == "fid")]
    plt = _plt()
    f, axes = plt.subplots(1, max(1, len(cols)), figsize=(4.2 * max(1, len(cols)), 3.4), squeeze=False,
                           layout="constrained")
    for ax, c in zip(axes[0], cols):
        ax.plot(df["lambda"], df[c], "o-")
        ax.axvline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xlabel("IRG scale λ")
        ax.set_ylabel(c)
        ax.grid(alpha=0.3)
    f.suptitle(fig.get("title", "IRG"), fontsize=10)
    _save(f, out / f"{name}.png")
    return df


# ------------------------------------------------------------------ all

def build_paper(figures: str | Path, world: str, results: str | Path, out: str | Path,
                irg: str | Path | None = None) -> Path:
    spec = load_figures(figures, world)
    results, out = Path(results), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"# The paper's figures and tables ({world} world)\n",
                "Each figure of Lee & Ye (arXiv:2509.25774) as `workflow/paper_figures.yaml` lists it; the paper's "
                "numbers beside ours. " + ("The tiny world stands in for each paper setting (see the "
                                           "`ours: model · reward` column); its numbers say nothing about the paper's.\n"
                                           if world == "tiny" else "\n")]
    for name, fig in spec["figures"].items():
        kind = fig["kind"]
        title = fig.get("title", name)
        if kind == "epochs_table":
            df = epochs_table(spec, fig, results)
            write_table(df, out, name, title)
            sections.append(f"## {title}\n\n" + to_markdown(df))
        elif kind == "matched_table":
            df = matched_table(spec, fig, results)
            write_table(df, out, name, title)
            sections.append(f"## {title}\n\n" + to_markdown(df))
        elif kind == "curves":
            p = curves_plot(spec, fig, results, out / f"{name}.png")
            sections.append(f"## {title}\n\n![{title}]({p.name})\n")
        elif kind == "credit":
            p, _ = credit_plot(spec, fig, results, out / f"{name}.png")
            sections.append(f"## {title}\n\n![{title}]({p.name})\n")
        elif kind == "grids":
            sections.append(f"## {title}\n")
            for s in fig["settings"]:
                p = grid_plot(spec, fig, results, s, out / f"{name}_{s}.png")
                sections.append(f"### {spec['labels'].get(s, s)}\n\n![{s}]({p.name})\n")
        elif kind == "irg":
            if irg is None:
                raise PaperError(f"figure {name}: pass --irg (the paper_irg rule's CSV)")
            df = irg_outputs(Path(irg), fig, out, name)
            sections.append(f"## {title}\n\n" + to_markdown(df) + f"\n![{title}]({name}.png)\n")
    index = out / "index.md"
    atomic_write_text(index, "\n".join(sections))
    return index


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Render the paper's figures and tables from finished experiments")
    ap.add_argument("--figures", default="workflow/paper_figures.yaml")
    ap.add_argument("--world", default="full")
    ap.add_argument("--results", default="results", help="the folder holding results/<experiment>/")
    ap.add_argument("--irg", help="the IRG CSV (the paper_irg rule's output)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        index = build_paper(args.figures, args.world, args.results, args.out, args.irg)
    except PaperError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
