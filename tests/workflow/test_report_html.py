"""`snakemake --report report.html` on a finished results tree of the default experiment: every
PNG, CSV and HTML that `pcpo report` wrote is in the HTML report, with a caption and one of the
report's categories, and the landing page describes the experiment.

The tree is the reference run's tables with synthetic sample folders and evaluation JSONs
(tests/evaluation/report_tree.py): the default run itself takes 11 minutes."""
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluation.report_tree import build_tree
from tests.helpers import ROOT
from tests.workflow.test_workflow import ENV

pytestmark = [pytest.mark.workflow, pytest.mark.slow]  # ~1 min: the report's ~30 figures, then Snakemake


def _script_json(page: str, name: str):
    m = re.search(rf"<script id=\"{name}\">\s*var {name} = (.*?);\s*</script>", page, re.S)
    assert m, f"no {name} data in the report"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from evaluation.report import build_report

    tmp = tmp_path_factory.mktemp("htmlreport")
    res, cfg = build_tree(tmp)
    build_report(res, cfg)
    out = tmp / "report.html"
    r = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--report", str(out), "--configfile",
                        "config/tiny.yaml", "--config", f"results={tmp / 'results'}"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return {"report": res / "report", "html": out.read_text(), "log": r.stdout + r.stderr}


def test_every_report_file_is_in_the_html_report_with_a_caption_and_category(built):
    from evaluation.figures import CATEGORIES

    results = _script_json(built["html"], "results")
    categories = _script_json(built["html"], "categories")
    by_name = {Path(p).name: v for p, v in results.items()}
    written = sorted(f.name for f in built["report"].iterdir() if f.suffix in (".png", ".csv", ".html"))
    assert len(written) >= 25, written
    assert set(by_name) == set(written)
    for name in written:
        cap = re.sub(r"<[^>]+>", "", by_name[name]["caption"]).strip()
        assert len(cap) > 40, (name, cap)
        assert "no caption" not in cap, name
        assert by_name[name]["data_uri"].startswith("data:"), name  # embedded, not a link
    assert set(categories) <= set(CATEGORIES) and "Other" not in categories
    assert set(categories) == set(CATEGORIES)  # every category has something in the default experiment
    where = {Path(p).name: (cat, sub) for cat, subs in categories.items() for sub, ps in subs.items() for p in ps}
    assert set(where) == set(written)
    assert all(sub != "Other" for _, sub in where.values())
    # each kind of result sits where a reader looks for it
    expect = {"reward_vs_epoch.png": "Training", "collapse_fid.png": "Quality and collapse",
              "matched_reward.csv": "Quality and collapse", "credit_audit.png": "Credit",
              "significance.html": "Statistical tests", "significance.csv": "Statistical tests",
              "pair_eps_digit_boldness_ddpo_vs_pcpo-ddpo.png": "Samples",
              "pair_flow_digit_boldness_dancegrpo_vs_pcpo-dancegrpo.png": "Samples"}
    for name, cat in expect.items():
        assert where[name][0] == cat, (name, where[name])
    runs = sorted(n for n, (c, _) in where.items() if c == "Runs")
    assert runs == sorted(f"run_{m}_digit_boldness_{a}.png" for m, algs in
                          (("eps", ("ddpo", "pcpo-ddpo")), ("flow", ("dancegrpo", "pcpo-dancegrpo"))) for a in algs)
    assert {where[n][1] for n in runs} == {"eps · digit_boldness", "flow · digit_boldness"}
    # captions say how many seeds and images; no RST error leaks into the page
    assert "3 seeds" in by_name["reward_vs_epoch.png"]["caption"]
    assert "80 images" in by_name["collapse_fid.png"]["caption"]
    assert "system-message" not in built["html"]
    assert "Duplicate explicit target" not in built["log"]


def test_the_landing_page_describes_the_experiment(built):
    m = re.search(r"<script id=\"workflow-desc\">\s*var workflow_desc = (.*?);\s*</script>", built["html"], re.S)
    desc = html.unescape(json.loads(m.group(1)))
    assert "experiment" in desc and "tiny" in desc
    assert "Where to look first" in desc and "significance.html" in desc
    assert "ddpo, pcpo-ddpo on digit_boldness" in desc  # the matrix, from the config
