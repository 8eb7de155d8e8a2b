"""The report's figure helpers (evaluation/figures.py): the checkpoint shown at matched reward,
per-image rewards, bounded axes, the captions template, per-run pages."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from evaluation import figures as F


def _matched(rows):
    return pd.DataFrame(rows, columns=["model", "reward", "algorithm", "matched_reward", "fid", "fid_seeds"])


def test_matched_level_is_the_highest_both_reach():
    m = _matched([("eps", "r", "x", 0.3, 1.0, 3), ("eps", "r", "pcpo-x", 0.3, 1.0, 3),
                  ("eps", "r", "x", 0.4, 1.0, 2), ("eps", "r", "pcpo-x", 0.4, 1.0, 1),
                  ("eps", "r", "x", 0.5, 1.0, 1), ("eps", "r", "pcpo-x", 0.5, math.nan, 0)])
    assert F.matched_level(m, "eps", "r", "x", "pcpo-x") == 0.4
    assert F.matched_level(m, "flow", "r", "x", "pcpo-x") is None
    assert F.matched_level(m.iloc[[4, 5]], "eps", "r", "x", "pcpo-x") is None


def test_nearest_checkpoint_to_the_level():
    cs = [F.Checkpoint(f"e{i}", None, None, r) for i, r in enumerate([0.30, 0.36, 0.41, 0.38])]
    assert F.nearest(cs, 0.39).label == "e3"
    assert F.nearest(cs, 0.0).label == "e0"
    assert F.nearest([], 0.3) is None


def test_per_image_rewards_read_by_manifest_position(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"metrics": {"reward/r": {"value": 0.5, "per_image": {"index": [2, 0], "value": [0.7, 0.3]}}}}))
    assert F.per_image_rewards(f, "r") == {2: 0.7, 0: 0.3}
    assert F.per_image_rewards(f, "other") == {}
    assert F.per_image_rewards(tmp_path / "missing.json", "r") == {}


def test_fractions_on_their_full_range_and_bounded_rewards_say_theirs():
    plt = F._plt()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.98, 0.996])
    label = F.bounded_axis(ax, "coverage", "class coverage")
    lo, hi = ax.get_ylim()
    assert lo <= 0 and hi >= 1 and "0–1" in label
    fig2, ax2 = plt.subplots()
    ax2.plot([0, 1], [0.31, 0.36])
    label = F.bounded_axis(ax2, "reward/digit_alignment", "alignment")
    assert ax2.get_ylim()[1] < 0.5 and "range 0–1" in label  # zoomed, and says so
    assert F.bounded_axis(ax2, "fid", "FID") == "FID"
    plt.close("all")


def test_captions_template_renders_each_file_as_plain_rst():
    """Snakemake renders the caption template with Jinja (wildcards name, ext), then docutils:
    markup characters in a caption stay text and every file gets its own caption."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    items = {"clip.png": F.Item(F.TRAINING, "Clipping", "Clip", "share with |ρ−1| > ξ of reward_mean_ *x* {{ y }}"),
             "clip.csv": F.Item(F.TRAINING, "Tables", "Clip table", "the table")}
    tpl = Environment(trim_blocks=True, lstrip_blocks=True).from_string(F.caption_template(items))

    class W:
        def __init__(self, name, ext):
            self.name, self.ext = name, ext

    class S:
        def __init__(self, w):
            self.wildcards = w

    out = publish_parts(tpl.render(snakemake=S(W("clip", "png"))), writer="html",
                        settings_overrides={"report_level": 1, "halt_level": 2})["body"]
    assert "|ρ−1| &gt; ξ of reward_mean_ *x* {{ y }}" in out and "system-message" not in out
    assert "the table" in tpl.render(snakemake=S(W("clip", "csv")))
    assert "no caption" in tpl.render(snakemake=S(W("other", "png")))


def test_register_refuses_an_unknown_category_and_defaults_the_tests(tmp_path):
    items = F.ReportItems()
    with pytest.raises(F.ReportError, match="x.png: unknown category"):
        items.add(tmp_path / "x.png", "Misc", "a", "b", "c")
    for name in ("a.png", "significance.html", "headline_forest.png", "notes.md"):
        (tmp_path / name).write_text("x")
    items.add(tmp_path / "a.png", F.RUNS, "sub", "A", "caption of a")
    js, rst = items.write(tmp_path)
    data = json.loads(js.read_text())
    assert set(data) == {"a.png", "significance.html", "headline_forest.png"}  # .md is not registered
    assert data["a.png"]["category"] == F.RUNS
    assert data["significance.html"]["category"] == data["headline_forest.png"]["category"] == F.STATISTICS
    assert "caption of a" in rst.read_text()


def test_run_page_plots_every_numeric_column(tmp_path):
    rows = [{"model": "m", "reward": "r", "algorithm": "a", "seed": s, "epoch": e, "reward_mean": 0.1 * e + s,
             "clipfrac": 0.5, "empty": math.nan, "note": "x"} for s in (0, 1) for e in range(4)]
    df = pd.DataFrame(rows)
    assert F.run_columns(df) == ["reward_mean", "clipfrac"]
    assert F.plot_run_page(df, "m", "r", "a", tmp_path / "p.png").is_file()
    assert F.plot_run_page(df, "m", "r", "b", tmp_path / "q.png") is None
