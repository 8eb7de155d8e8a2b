"""The report's headline and its compact page of statistical tests.

From the significance table (:func:`evaluation.significance.significance_table`):

* :func:`headline_markdown`: for the top of ``index.md``: one pilot line where the seeds
  cannot reach alpha with the permutation test, then one verdict table per pair (metric,
  difference with its CI, p and the test that gave it, better / worse / not
  distinguishable, seeds for the configured power) and the forest plot.
* :func:`plot_forest`: ``headline_forest.png``, every ``b - a`` effect with its CI, one
  panel per metric (each in its own units), coloured by outcome.
* :func:`significance_page`: ``significance.html``, the same headline then the full
  comparisons grouped by pair and metric, columns sortable by a click (a few lines of
  inline JavaScript, nothing fetched), the sentence-long verdict in each row's tooltip and
  the description of the tests in a ``<details>`` block, the forest plot (embedded) below.

The difference, CI and p shown are those of the test that decided the verdict (the
``decided_by`` column): the mean difference with its bootstrap CI and the permutation p,
or the mixed model's estimate, CI and p.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.significance import METRICS, SignificanceSettings, min_seeds_for_permutation

FOREST = "headline_forest.png"
OUTCOME_COLOUR = {"better": "#1a7f37", "worse": "#cf222e", "not distinguishable": "#6e7781", "no data": "#afb8c1"}


def _g(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.3g}"


def _where(r) -> str:
    """Which evaluation a row's metric is read at, in a few words."""
    if r["metric"] == "epochs_to_target":
        return f"target {r['level']:g}"
    if r["metric"] == "final_reward":
        return "last 3 epochs"
    if not pd.isna(r["level"]):
        return f"reward {r['level']:.3g}"
    return "all checkpoints"


def decisive(r) -> tuple[float, float, float, float, str]:
    """Estimate, CI and p of the test that decided the row, and its short name."""
    if str(r.get("decided_by", "")).startswith("LMM"):
        return r["lmm_diff"], r["lmm_ci_low"], r["lmm_ci_high"], r["lmm_p"], "LMM"
    if str(r.get("decided_by", "")).startswith("permutation and LMM"):
        p = max(r["p_value"], r["lmm_p"]) if not pd.isna(r["lmm_p"]) else math.nan
        return r["diff"], r["ci_low"], r["ci_high"], p, "both"
    return r["diff"], r["ci_low"], r["ci_high"], r["p_value"], "perm."


def pilot_lines(sig: pd.DataFrame, settings: SignificanceSettings) -> list[str]:
    """One line per seed count at which the permutation test cannot reach alpha."""
    if sig.empty:
        return []
    sig = _paired_column(sig)
    stuck = sig[sig["smallest_p"] > settings.alpha]
    lines = []
    for paired, g in stuck.groupby("paired"):
        for n in sorted(set(g["n_a"])):
            need = min_seeds_for_permutation(settings.alpha, bool(paired))
            what = ("paired seed" if paired else "seed per algorithm") if n == 1 else (
                "paired seeds" if paired else "seeds per algorithm")
            line = (f"pilot: {n} {what} cannot reach p < {settings.alpha:g} with the permutation test "
                    f"(smallest attainable p {g.loc[g['n_a'] == n, 'smallest_p'].min():.3g}); {need} needed")
            lmm = g[(g["n_a"] == n) & g["decided_by"].str.startswith("LMM")]
            if len(lmm):
                line += (f". {len(lmm)} of these {int((g['n_a'] == n).sum())} comparisons are decided by the linear "
                         "mixed model instead (parametric; its p can go below the permutation floor)")
            lines.append(line + ".")
    return lines


def _paired_column(sig: pd.DataFrame) -> pd.DataFrame:
    if "paired" not in sig:  # a table read back from CSV without it: paired tests say so
        sig = sig.assign(paired=sig["test"].astype(str).str.startswith("paired"))
    return sig


def verdict_tables(sig: pd.DataFrame, settings: SignificanceSettings) -> list[tuple[str, pd.DataFrame]]:
    """``(title, table)`` per pair: metric, at, difference [CI], p (test), verdict, seeds."""
    out = []
    pw = f"seeds for {100 * settings.power:g}% power"
    ci = f"{100 * settings.level:g}% CI"
    for (model, reward, a, b), g in sig.groupby(["model", "reward", "a", "b"], sort=False):
        rows = []
        for _, r in g.iterrows():
            est, lo, hi, p, name = decisive(r)
            words, higher = METRICS[r["metric"]]
            rows.append({"metric": f"{words} ({'↑' if higher else '↓'})", "at": _where(r),
                         f"{b} − {a}": _g(est), ci: f"[{_g(lo)}, {_g(hi)}]", "p": f"{_g(p)} ({name})",
                         "verdict": r["outcome"], pw: _g(float(r["seeds_for_power"]))})
        out.append((f"{model} / {reward}: {b} against {a}", pd.DataFrame(rows)))
    return out


def plot_forest(sig: pd.DataFrame, path: Path) -> Path:
    """Every ``b - a`` effect with its CI (of the deciding test), one panel per metric;
    written even without pairs (a one-line figure saying so)."""
    from evaluation.report import _plt, _save

    if sig.empty:  # the file is a workflow output: it exists, and says why it is empty
        fig, ax = _plt().subplots(figsize=(5, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no pair of algorithms to compare", ha="center", va="center")
        return _save(fig, path)
    metrics = [m for m in METRICS if m in set(sig["metric"])]
    plt = _plt()
    heights = [max(1, int((sig["metric"] == m).sum())) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7.5, 0.9 + 0.32 * sum(heights) + 0.5 * len(metrics)),
                             squeeze=False, gridspec_kw={"height_ratios": heights}, layout="constrained")
    for ax, m in zip(axes[:, 0], metrics):
        g = sig[sig["metric"] == m].reset_index(drop=True)
        words, higher = METRICS[m]
        ys = np.arange(len(g))[::-1]
        for y, (_, r) in zip(ys, g.iterrows()):
            est, lo, hi, p, name = decisive(r)
            c = OUTCOME_COLOUR.get(r["outcome"], "k")
            if not (pd.isna(lo) or pd.isna(hi)):
                ax.plot([lo, hi], [y, y], color=c, lw=2)
            if not pd.isna(est):
                ax.plot([est], [y], "o" if name != "LMM" else "D", color=c, ms=5)
        ax.axvline(0, color="k", lw=0.8, ls=":")
        ax.set_yticks(ys, [f"{r.model}: {r.b} − {r.a} · {_where(r)}" for _, r in g.iterrows()], fontsize=7)
        ax.set_title(f"{words}: {'higher' if higher else 'lower'} is better", fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    handles = [plt.Line2D([], [], color=c, marker="o", lw=2, label=k) for k, c in OUTCOME_COLOUR.items()
               if k in set(sig["outcome"])]
    handles.append(plt.Line2D([], [], color="k", marker="D", lw=0, label="LMM estimate (else mean difference)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=7)
    fig.suptitle("Effects b − a with the CI of the test that decided each verdict", fontsize=9)
    return _save(fig, path)


def headline_markdown(sig: pd.DataFrame, settings: SignificanceSettings, forest: Path | None) -> str:
    """The headline section of ``index.md``."""
    from evaluation.report import to_markdown

    parts = ["## Headline\n"]
    if sig.empty:
        return "## Headline\n\n_No pair of algorithms to compare (no X with its pcpo-X)._\n"
    parts += [f"**{line}**\n" for line in pilot_lines(_paired_column(sig), settings)]
    parts.append(f"Verdicts at alpha = {settings.alpha:g} (`report.significance.test: {settings.test}`); "
                 "↑/↓: higher/lower is better; the p column names the test that decided "
                 "(perm.: permutation test over seeds; LMM: linear mixed model over seeds × checkpoints). "
                 "Every number and both tests' results are in `significance.csv` and `significance.html`.\n")
    for title, t in verdict_tables(sig, settings):
        parts.append(f"### {title}\n\n" + to_markdown(t))
    if forest is not None:
        parts.append(f"![Forest plot of every effect]({forest.name})\n")
    return "\n".join(parts)


# ------------------------------------------------------------------ significance.html

_STYLE = """
body{font-family:system-ui,sans-serif;font-size:12.5px;margin:10px;max-width:1240px}
h2{font-size:17px;margin:8px 0} h3{font-size:14px;margin:14px 0 4px}
table{border-collapse:collapse;width:100%;table-layout:auto;margin-bottom:6px}
th,td{border-bottom:1px solid #d0d7de;padding:2px 4px;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom}
th{background:#f6f8fa;cursor:pointer;user-select:none} th:after{content:" ⇅";color:#999;font-size:10px}
td.l,th.l{text-align:left} tr.m-first td{border-top:2px solid #8c959f}
tr.better td.v{background:#dafbe1;color:#1a7f37;font-weight:bold}
tr.worse td.v{background:#ffebe9;color:#cf222e;font-weight:bold}
tr.not-distinguishable td.v{color:#57606a} tr.no-data td.v{color:#afb8c1}
tr:hover td{background:#f3f4f6} p.pilot{font-weight:bold;color:#9a6700}
details{margin:8px 0;color:#24292f} img{max-width:100%}
"""

_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (t) {
  t.querySelectorAll("th").forEach(function (th, i) {
    th.addEventListener("click", function () {
      var body = t.tBodies[0], rows = Array.from(body.rows), asc = th.dataset.asc !== "1";
      rows.sort(function (x, y) {
        var a = x.cells[i].dataset.v || x.cells[i].textContent, b = y.cells[i].dataset.v || y.cells[i].textContent;
        var na = parseFloat(a), nb = parseFloat(b);
        var c = (!isNaN(na) && !isNaN(nb)) ? na - nb : a.localeCompare(b);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { r.classList.remove("m-first"); body.appendChild(r); });
      th.dataset.asc = asc ? "1" : "0";
    });
  });
});
"""

PAGE_COLUMNS = ["metric", "at", "n", "b − a", "CI (bootstrap)", "perm. p", "LMM b − a", "LMM CI", "LMM p",
                "decided by", "verdict", "seeds for power"]


def _num(v) -> str:
    """``data-v`` for sorting: the number, or a large one for ∞ and a blank for NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "1e308"
    return repr(float(v))


def _cells(r) -> list[tuple[str, str, str]]:
    """(text, sort value, class) per column of :data:`PAGE_COLUMNS`."""
    words, higher = METRICS[r["metric"]]
    n = f"{r['n_a']}" if r.get("paired", False) else f"{r['n_a']}+{r['n_b']}"
    by = str(r["decided_by"])
    short = "LMM" if by.startswith("LMM") else ("both" if by.startswith("permutation and") else "perm.")
    lmm_p = _g(r["lmm_p"]) if not pd.isna(r["lmm_p"]) else "n/e"
    return [(f"{words} {'↑' if higher else '↓'}", words, "l"), (_where(r), _num(r["level"]), "l"),
            (n, _num(float(r["n_a"])), ""), (_g(r["diff"]), _num(r["diff"]), ""),
            (f"[{_g(r['ci_low'])}, {_g(r['ci_high'])}]", _num(r["ci_low"]), ""),
            (_g(r["p_value"]), _num(r["p_value"]), ""), (_g(r["lmm_diff"]), _num(r["lmm_diff"]), ""),
            (f"[{_g(r['lmm_ci_low'])}, {_g(r['lmm_ci_high'])}]", _num(r["lmm_ci_low"]), ""),
            (lmm_p, _num(r["lmm_p"]), ""), (short, short, "l"), (r["outcome"], r["outcome"], "l v"),
            (_g(float(r["seeds_for_power"])), _num(float(r["seeds_for_power"])), "")]


def significance_page(sig: pd.DataFrame, settings: SignificanceSettings, caption: str,
                      forest: Path | None = None) -> str:
    """The self-contained ``significance.html``: headline, then one sortable table per pair."""
    sig = _paired_column(sig)
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Statistical tests</title>"
             f"<style>{_STYLE}</style></head><body>", "<h2>Statistical tests: pcpo-X against X</h2>"]
    parts += [f'<p class="pilot">{e(line)}</p>' for line in pilot_lines(sig, settings)]
    parts.append(f"<details><summary>How these are tested (alpha = {settings.alpha:g}, "
                 f"<code>report.significance.test: {e(settings.test)}</code>)</summary><p>{e(caption)}</p>"
                 "<p>Rows are grouped by pair and metric; click a column header to sort. Hover a row for its "
                 "full verdict, the tests' names and the mixed model's formula. n/e: the mixed model is not "
                 "estimable (reason in the tooltip). ↑/↓: higher/lower is better.</p></details>")
    if sig.empty:
        parts.append("<p>No pairs to compare.</p>")
    head = "".join(f'<th class="{"l" if c in ("metric", "at", "decided by", "verdict") else ""}">{e(c)}</th>'
                   for c in PAGE_COLUMNS)
    for (model, reward, a, b), g in sig.groupby(["model", "reward", "a", "b"], sort=False):
        parts.append(f"<h3>{e(model)} / {e(reward)}: {e(b)} − {e(a)}</h3>")
        rows, last = [], None
        for _, r in g.iterrows():
            cls = r["outcome"].replace(" ", "-") + (" m-first" if last is not None and r["metric"] != last else "")
            last = r["metric"]
            tip = f"{r['verdict']}\n\npermutation: {r['test']}\nLMM: {r['lmm_note']}\ndecided by: {r['decided_by']}"
            cells = "".join(f'<td class="{c}" data-v="{e(v)}">{e(t)}</td>' for t, v, c in _cells(r))
            rows.append(f'<tr class="{cls}" title="{e(tip)}">{cells}</tr>')
        parts.append(f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows)
                     + "\n</tbody></table>")
    if forest is not None and forest.is_file() and not sig.empty:
        data = base64.b64encode(forest.read_bytes()).decode()
        parts.append(f"<details open><summary>Forest plot of every effect</summary>"
                     f'<img alt="forest plot" src="data:image/png;base64,{data}"></details>')
    parts.append(f"<script>{_SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def write_headline(sig: pd.DataFrame, settings: SignificanceSettings, out: Path) -> tuple[str, list[Path]]:
    """Write ``headline_forest.png``; return the headline's Markdown and the files written."""
    forest = plot_forest(sig, out / FOREST)
    return headline_markdown(sig, settings, forest), [forest]
