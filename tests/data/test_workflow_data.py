"""The Snakemake side: a paper config's dry run lists one data_fetch job per catalogue name it needs and the
jobs that read the data wait for the stamps; the data_fetch rule itself fetches through `pcpo data fetch`."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.data.conftest import sha256, write_catalogue
from tests.data.test_needs import FLOWGRPO, full_catalogue
from tests.helpers import ROOT
from tests.loopback import serve_files

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _snakemake(env, *args, timeout=300):
    import os

    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([SNAKEMAKE, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


def test_dry_run_lists_the_data_jobs_and_train_waits_for_them(tmp_path):
    cat = write_catalogue(tmp_path / "sources.yaml", full_catalogue())
    root = tmp_path / "data"
    r = _snakemake({"PCPO_DATA_CATALOGUE": cat, "PCPO_DATA": str(root)}, "-n", "--configfile", str(FLOWGRPO),
                   "--config", f"results={tmp_path / 'results'}")
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout + r.stderr
    fetched = sorted(set(re.findall(rf"{re.escape(str(root))}/\.fetched/([A-Za-z0-9._+-]+)\.json", text)))
    assert fetched == ["coco2014-val-captions", "coco2014-val-images", "dinov2-large-hf", "inception-fid",
                       "lpips-alexnet", "pickscore-model", "pickscore-processor", "pickscore-test-prompts",
                       "pickscore-train-prompts", "sd35-medium"]
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", text, re.M))
    assert stats["data_fetch"] == "10"
    assert "WARNING: the data catalogue provides no entry" not in text


def test_the_data_rule_fetches_through_pcpo(tmp_path):
    www = tmp_path / "www" / "raw.example.org" / "flow_grpo" / "pickscore"
    www.mkdir(parents=True)
    (www / "train.txt").write_bytes(b"one\ntwo\n")
    cat = full_catalogue()
    cat["pickscore-train-prompts"]["sha256"] = sha256(b"one\ntwo\n")
    catalogue = write_catalogue(tmp_path / "sources.yaml", cat)
    root = tmp_path / "data"
    target = f"{root}/.fetched/pickscore-train-prompts.json"
    with serve_files(tmp_path / "www") as url:
        r = _snakemake({"PCPO_DATA_CATALOGUE": catalogue, "PCPO_DATA": str(root), "PCPO_DATA_ENDPOINT": url},
                       target, "--cores", "1", "--configfile", str(FLOWGRPO), "--config",
                       f"results={tmp_path / 'results'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (root / "prompts" / "pickscore_train.txt").read_bytes() == b"one\ntwo\n"
    assert json.loads(Path(target).read_text())["sha256"] == sha256(b"one\ntwo\n")
