"""What a finished rehearsal run must show (shared by the Slurm and the local rehearsal tests)."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.rehearsal.run import OVERRIDES, ROOT


def merged_config(config: Path) -> dict:
    """The paper config with config/rehearsal.yaml and the matrix cut merged over it, as Snakemake merges them."""
    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    cfg = merge(yaml.safe_load(Path(config).read_text()), yaml.safe_load(OVERRIDES.read_text()))
    cfg["matrix"] = [{**b, "seeds": list(b["seeds"])[:1]} for b in cfg["matrix"]]
    return cfg


def expected_fetches(config: Path, work: Path, env: dict) -> list[str]:
    """The catalogue names `pcpo data fetch --for CONFIG` would fetch (its own dry run); ``config`` is the
    effective config the run wrote (results/<experiment>/config.yaml: every layer merged)."""
    import os

    r = subprocess.run([sys.executable, "-m", "pcpo.cli", "data", "fetch", "--for", str(config), "--dry-run"],
                       cwd=str(work), env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()


def _finite_numbers(obj, path=""):
    """(path, value) of every number in a metric record."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [(path, float(obj))]
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _finite_numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in _finite_numbers(v, f"{path}[{i}]")]
    return []


def check_run(config: Path, work: Path, env: dict, output: str) -> dict:
    """Assert the run's outputs; returns a summary (counts) for the test log."""
    cfg = merged_config(config)
    results = work / "results" / cfg["experiment"]
    summary = {}

    # data: every catalogue entry the config needs was fetched and verified into the work folder's data root
    effective = results / "config.yaml"
    assert effective.is_file(), output[-4000:]
    cfg = yaml.safe_load(effective.read_text())
    names = expected_fetches(effective, work, env)
    assert names, "the config needs no data at all?"
    for n in names:
        stamp = work / "data" / ".fetched" / f"{n}.json"
        assert stamp.is_file(), f"data job did not fetch and verify {n} ({stamp} missing)\n{output[-4000:]}"
        assert json.loads(stamp.read_text()).get("sha256"), n
    summary["fetched"] = len(names)

    # training: every run of the matrix, each with 2 processes
    logs = sorted((results / "logs" / "train").rglob("*.log"))
    n_runs = sum(len(b["algorithms"]) * len(b["seeds"]) * len(b["rewards"]) for b in cfg["matrix"])
    assert len(logs) == n_runs, (len(logs), n_runs)
    for log in logs:
        text = log.read_text(errors="replace")
        assert re.search(r"over 2 processes", text), f"{log}: not trained with 2 processes\n{text[-3000:]}"
    done = list((results / "runs").rglob("DONE"))
    assert len(done) == n_runs
    summary["train_runs"] = n_runs

    # sampling and evaluation: every configured metric, finite, in every metrics file
    metrics = cfg["evaluation"]["metrics"]
    files = sorted((results / "metrics").rglob("*.json"))
    n_models = len({b["model"] for b in cfg["matrix"]})
    n_algs = sum(len(b["algorithms"]) * len(b["rewards"]) for b in cfg["matrix"])
    assert len(files) == n_models + n_algs * len(cfg["evaluation"]["epochs"]), [str(f) for f in files]
    for f in files:
        rec = json.loads(f.read_text())
        got = rec["metrics"]
        for m in metrics:
            keys = [k for k in got if k == m or k.startswith(m + "/")]
            assert keys, f"{f}: metric {m} missing (has {sorted(got)})"
            nums = [x for k in keys for x in _finite_numbers(got[k], k)]
            assert nums and all(math.isfinite(v) for _, v in nums), f"{f}: {m} not finite: {nums}"
        assert rec["n_images"] > 0
        man = Path(rec["samples"]) / "manifest.json"
        assert man.is_file()
    summary["metric_files"] = len(files)

    # the report
    assert (results / "report" / "index.md").is_file()
    return summary
