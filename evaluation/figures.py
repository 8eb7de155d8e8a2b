"""Report figures beyond the summary plots, and the register of every report file.

* :func:`plot_run_page`: one figure per (model, reward, algorithm) with every numeric column
  of the runs' ``metrics.csv`` against epoch, each seed a thin line under the mean.
* :func:`pair_grid`: X and pcpo-X side by side at a matched evaluated reward, the same
  prompts and initial noise in each column, labelled with the prompt and each image's reward.
* :class:`ReportItems`: what each PNG/CSV/HTML of ``results/<experiment>/report/`` shows, under
  which category of the Snakemake HTML report.  :meth:`ReportItems.write` writes
  ``report_items.json`` (read by ``workflow/rules/report.smk`` for categories and labels) and
  ``captions.rst`` (the RST/Jinja caption template that report.smk hands to ``report()``).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pcpo.utils import atomic_write_text

# the categories of the HTML report (Snakemake lists them alphabetically). Not "Statistics": the
# report already has a panel of that name, and a category of the same name clashes with its link
# target in every caption (docutils: "Duplicate explicit target name")
TRAINING, QUALITY, CREDIT, SAMPLES, STATISTICS, RUNS = (
    "Training", "Quality and collapse", "Credit", "Samples", "Statistical tests", "Runs")
CATEGORIES = (TRAINING, QUALITY, CREDIT, SAMPLES, STATISTICS, RUNS)
REGISTERED = ("png", "csv", "html")  # the file types report.smk registers

# metrics with a known range: plotted on it (fractions) or with the range on the axis
FULL_RANGE = {"coverage": (0.0, 1.0), "clipfrac": (0.0, 1.0), "clipfrac_inactive": (0.0, 1.0),
              "reward_info_correct": (0.0, 1.0)}
STATED_RANGE = {"digit_alignment": (0.0, 1.0), "reward/digit_alignment": (0.0, 1.0),
                "reward_info_alignment": (0.0, 1.0)}
RUN_KEYS = ("model", "reward", "algorithm", "seed", "epoch")


def bounded_axis(ax, metric: str, label: str) -> str:
    """Put a fraction on its full range; say a bounded metric's range on a zoomed axis.
    Returns the axis label used."""
    key = metric.split("/", 1)[-1] if metric not in FULL_RANGE and metric not in STATED_RANGE else metric
    if metric in FULL_RANGE or key in FULL_RANGE:
        lo, hi = FULL_RANGE.get(metric) or FULL_RANGE[key]
        ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
        label = f"{label} [{lo:g}–{hi:g}, full range]"
    elif metric in STATED_RANGE or key in STATED_RANGE:
        lo, hi = STATED_RANGE.get(metric) or STATED_RANGE[key]
        label = f"{label} (zoomed; range {lo:g}–{hi:g})"
    ax.set_ylabel(label)
    return label


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> Path:
    from pcpo.utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    _plt().close(fig)
    return path


# ------------------------------------------------------------------ per-run pages

def run_columns(curves: pd.DataFrame) -> list[str]:
    """The numeric columns of metrics.csv that hold a value (not the keys, not all-NaN)."""
    return [c for c in curves.columns if c not in RUN_KEYS and pd.api.types.is_numeric_dtype(curves[c])
            and curves[c].notna().any()]


def plot_run_page(curves: pd.DataFrame, model: str, reward: str, algorithm: str, path: Path) -> Path | None:
    """Every numeric metrics.csv column of one (model, reward, algorithm) against epoch:
    each seed a thin line, the mean over seeds a thick one."""
    g = curves[(curves["model"] == model) & (curves["reward"] == reward) & (curves["algorithm"] == algorithm)]
    cols = run_columns(g)
    if g.empty or not cols:
        return None
    plt = _plt()
    ncol = 4
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.3 * nrow), squeeze=False, layout="constrained")
    seeds = sorted(g["seed"].unique())
    for ax, col in zip(axes.flat, cols):
        piv = g.pivot_table(index="epoch", columns="seed", values=col)
        for s in piv.columns:
            ax.plot(piv.index, piv[s], lw=0.8, alpha=0.55, color="tab:gray")
        ax.plot(piv.index, piv.mean(axis=1), lw=2.0, color="tab:blue" if not algorithm.startswith("pcpo-") else "tab:orange")
        ax.set_title(col, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if col in FULL_RANGE:
            lo, hi = FULL_RANGE[col]
            ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
            ax.set_title(f"{col} [full range {lo:g}–{hi:g}]", fontsize=8)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    fig.suptitle(f"{algorithm} · {model} · {reward}: every metrics.csv column "
                 f"(grey: each of {len(seeds)} seeds {', '.join(str(s) for s in seeds)}; thick: mean)", fontsize=10)
    return _save(fig, path, dpi=80)  # ~25 panels: a smaller file keeps the HTML report light


# ------------------------------------------------------------------ samples at matched reward

@dataclass
class Checkpoint:
    label: str
    samples: Path
    metrics: Path
    eval_reward: float


def _checkpoints(results: Path, points: pd.DataFrame, model: str, reward: str, algorithm: str) -> list[Checkpoint]:
    """Evaluated checkpoints of an algorithm (every seed) whose samples are on disk."""
    out = []
    p = points[(points["model"] == model) & (points["reward"] == reward) & (points["algorithm"] == algorithm)
               & (points["epoch"] >= 0)]
    for r in p.itertuples():
        rel = Path(model) / reward / algorithm / f"seed{int(r.seed)}" / f"epoch{int(r.epoch)}"
        if (results / "samples" / rel / "manifest.json").is_file() and np.isfinite(r.eval_reward):
            out.append(Checkpoint(f"{algorithm} · seed {int(r.seed)} · epoch {int(r.epoch)}", results / "samples" / rel,
                                  results / "metrics" / rel.with_suffix(".json"), float(r.eval_reward)))
    return out


def matched_level(matched: pd.DataFrame, model: str, reward: str, a: str, b: str) -> float | None:
    """The highest matched-reward level of the quality table that both algorithms reach
    (a seed of each interpolated there); None if they share none."""
    if matched.empty or "matched_reward" not in matched:
        return None
    m = matched[(matched["model"] == model) & (matched["reward"] == reward)]
    seeds = [c for c in m.columns if c.endswith("_seeds")]
    if not seeds:
        return None
    ok = []
    for level, g in m.groupby("matched_reward"):
        reached = {r.algorithm for r in g.itertuples() if any(getattr(r, c) > 0 for c in seeds)}
        if {a, b} <= reached:
            ok.append(float(level))
    return max(ok) if ok else None


def nearest(checkpoints: list[Checkpoint], level: float) -> Checkpoint | None:
    """The checkpoint whose evaluated reward is closest to ``level`` (ties: the first)."""
    return min(checkpoints, key=lambda c: abs(c.eval_reward - level)) if checkpoints else None


def per_image_rewards(metrics_json: Path, reward: str) -> dict[int, float]:
    """Manifest position -> that image's reward, from an evaluation JSON ({} for older ones)."""
    try:
        m = json.loads(metrics_json.read_text())["metrics"][f"reward/{reward}"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return {}
    per = m.get("per_image") or {}
    return {int(i): float(v) for i, v in zip(per.get("index", []), per.get("value", []))}


def _prompt_label(rec: dict) -> str:
    meta = rec.get("metadata") or {}
    if "digit" in meta:
        return f"digit {meta['digit']}"
    p = str(rec.get("prompt", ""))
    return p if len(p) <= 18 else p[:16] + "…"


def pair_grid(results: Path, points: pd.DataFrame, matched: pd.DataFrame, model: str, reward: str, a: str, b: str,
              path: Path, n: int = 10) -> tuple[Path, dict] | None:
    """Rows: base model, X, pcpo-X (each at the evaluated checkpoint nearest the matched
    reward level); columns: the same evaluation images (same prompt, same initial noise:
    ``sample_cli.image_noise(seed, index)``), one per prompt, up to ``n``.  Each image is
    labelled with its reward.  Returns the path and what was shown (for the caption)."""
    from PIL import Image

    level = matched_level(matched, model, reward, a, b)
    picks = {alg: _checkpoints(results, points, model, reward, alg) for alg in (a, b)}
    if not all(picks.values()):
        return None
    how = "matched"
    if level is None:  # no common matched level: the highest reward both reach at an evaluated checkpoint
        level = min(max(c.eval_reward for c in cs) for cs in picks.values())
        how = "highest common"
    rows = []
    base = points[(points["model"] == model) & (points["reward"] == reward) & (points["epoch"] < 0)]
    bdir = results / "samples" / model / "base"
    if len(base) and (bdir / "manifest.json").is_file():
        rows.append(Checkpoint("base model", bdir, results / "metrics" / model / "base.json",
                               float(base["eval_reward"].iloc[0])))
    rows += [nearest(picks[a], level), nearest(picks[b], level)]
    mans = [json.loads((r.samples / "manifest.json").read_text())["images"] for r in rows]
    # one image per prompt: the first image of each prompt, in manifest order, shared by every row
    first: dict[str, int] = {}
    for i, rec in enumerate(mans[-1]):
        first.setdefault(str(rec.get("group", rec.get("prompt"))), i)
    idx = [i for i in first.values() if all(i < len(m) and m[i]["prompt"] == mans[-1][i]["prompt"] for m in mans)]
    idx = idx[:: max(1, math.ceil(len(idx) / n))][:n]
    if not idx:
        return None
    rewards = [per_image_rewards(r.metrics, reward) for r in rows]
    plt = _plt()
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.05 * len(idx) + 2.4, 1.35 * len(rows) + 0.8),
                             squeeze=False)
    for i, (row, man, rw) in enumerate(zip(rows, mans, rewards)):
        for k, j in enumerate(idx):
            ax = axes[i][k]
            ax.set_xticks([])
            ax.set_yticks([])
            img = np.asarray(Image.open(row.samples / man[j]["file"]))
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            if i == 0:
                ax.set_title(_prompt_label(man[j]), fontsize=7)
            ax.set_xlabel(f"{rw[j]:.3f}" if j in rw else "–", fontsize=7)
        axes[i][0].set_ylabel(f"{row.label}\nreward {row.eval_reward:.3f}", fontsize=7, rotation=0, ha="right",
                              va="center")
    fig.suptitle(f"{a} vs {b} · {model} · {reward}: checkpoints nearest the {how} reward {level:.3f}; "
                 f"same prompts (top) and initial noise per column; under each image its {reward}", fontsize=8)
    _save(fig, path)
    return path, {"level": level, "how": how, "rows": [r.label for r in rows],
                  "rewards": [r.eval_reward for r in rows], "images": len(idx),
                  "per_image": all(j in rw for rw in rewards for j in idx)}


# ------------------------------------------------------------------ the register

@dataclass
class Item:
    category: str
    subcategory: str
    title: str
    caption: str


class ReportError(ValueError):
    pass


class ReportItems:
    """What each registered report file shows, for Snakemake's ``report()``."""

    def __init__(self):
        self.items: dict[str, Item] = {}

    def add(self, path: Path | str | None, category: str, subcategory: str, title: str, caption: str) -> None:
        if path is None:
            return
        if category not in CATEGORIES:
            raise ReportError(f"report item {Path(path).name}: unknown category {category!r}; use one of {CATEGORIES}")
        self.items[Path(path).name] = Item(category, subcategory, title, caption.strip())

    def write(self, out: Path) -> tuple[Path, Path]:
        """``report_items.json`` and ``captions.rst`` for every PNG/CSV/HTML in ``out``.
        Files nobody registered get a default by name (:func:`default_item`)."""
        items = {}
        for f in sorted(out.iterdir()):
            if f.suffix.lstrip(".") not in REGISTERED or not f.is_file():
                continue
            items[f.name] = self.items.get(f.name) or default_item(f.name)
        data = {k: asdict(v) for k, v in items.items()}
        js = out / "report_items.json"
        atomic_write_text(js, json.dumps(data, indent=1, sort_keys=True) + "\n")
        rst = out / "captions.rst"
        atomic_write_text(rst, caption_template(items))
        return js, rst


def default_item(name: str) -> Item:
    """A file nobody registered (build_report registers every file it writes, the headline and the
    significance files included): filed under its own name, saying so."""
    return Item(STATISTICS, "Unregistered", name,
                f"{name}: no caption registered (add it with ReportItems.add in evaluation/report.py).")


def rst_escape(s: str) -> str:
    """Plain text as RST: no markup, substitution (``|x|``) or reference (``word_``)."""
    for ch in ("\\", "|", "*", "`", "_", "["):
        s = s.replace(ch, "\\" + ch)
    return s


def _rst_text(s: str) -> str:
    """Caption text as a Jinja-raw block (Snakemake renders captions with Jinja, then RST)."""
    return "{% raw %}" + s.replace("{% endraw %}", "") + "{% endraw %}"


def caption_template(items: dict[str, Item]) -> str:
    """One Jinja/RST template with the caption of every file, chosen by the pattern's
    wildcards (``{name}.{ext}``) that report.smk registers the report folder with."""
    lines = ["{% set f = snakemake.wildcards.name ~ '.' ~ snakemake.wildcards.ext %}"]
    for i, (name, it) in enumerate(sorted(items.items())):
        kw = "if" if i == 0 else "elif"
        lines.append(f"{{% {kw} f == {json.dumps(name)} %}}")
        lines.append(_rst_text(f"**{rst_escape(it.title)}.** {rst_escape(it.caption)}"))
    if items:
        lines.append("{% else %}")
    lines.append("(no caption: this file was not in the report folder when the captions were written)")
    if items:
        lines.append("{% endif %}")
    return "\n".join(lines) + "\n"


def read_items(report_dir: str | Path) -> dict:
    """``report_items.json`` of a report folder ({} if absent), for report.smk."""
    try:
        return json.loads((Path(report_dir) / "report_items.json").read_text())
    except FileNotFoundError:
        return {}
