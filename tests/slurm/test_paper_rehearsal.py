"""The rehearsal of every paper config: config/paper/X.yaml + config/rehearsal.yaml through Snakemake,
end to end, against loopback stand-ins of the hub and the download servers (tests/rehearsal/).

Each run covers the data job (`pcpo data fetch` of everything the config needs, verified against the
test catalogue), training of every run of the matrix with two processes, sampling, evaluation with
every metric the config names, and the report. The tiny same-class models are served under the
config's real hub ids; the metrics' networks are same-architecture stand-ins.

Every paper config goes through profiles/slurm + tests/rehearsal/profile on the local one-node Slurm
(tests/slurm/cluster.py), with each train job's requests checked against the config (it asks --gpus=2
and gets it). Time: CI runs `pytest -m slurm tests/slurm` after the main suite; the rehearsal layer
keeps each config to one epoch of two groups, a fifth of the sampler steps trained, and 2-step
evaluation sampling, so the eight fit in CI's budget (measured times: README, "Rehearsing a paper config").
`python tests/rehearsal/run.py config/paper/X.yaml` runs one by hand with the local executor.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.rehearsal import checks  # noqa: E402
from tests.rehearsal import run as rehearsal  # noqa: E402
from tests.rehearsal.world import build_world, serve_world  # noqa: E402

PAPER = sorted((ROOT / "config" / "paper").glob("*.yaml"))
SLURM_CONFIGS = [p.stem for p in PAPER]
# configs whose rehearsal is known to fail, with the exact reason (strict: a pass must remove the entry)
KNOWN_FAILURES: dict[str, str] = {}
TIMEOUT = 1800


def _params(names):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[n]))
            if n in KNOWN_FAILURES else n for n in names]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    w = build_world(root / "world")
    with serve_world(w, root / "home", timeout=4 * 3600) as (env, hub_url, files_url):
        yield {"root": root, "env": env, "hub": hub_url, "files": files_url}


def test_every_paper_config_is_rehearsed():
    assert PAPER and set(SLURM_CONFIGS) == {p.stem for p in PAPER}


def _rehearse(world, name, slurm):
    config = ROOT / "config" / "paper" / f"{name}.yaml"
    work = world["root"] / name
    before = len(world["files"].log) + len(world["hub"].log)
    rc, out, secs = rehearsal.run(config, work, world["env"], slurm=slurm, timeout=TIMEOUT)
    print(f"rehearsal {name} ({'slurm' if slurm else 'local'}): rc={rc} in {secs:.0f} s")
    assert rc == 0, out[-8000:]
    summary = checks.check_run(config, work, world["env"], out)
    # the jobs really went to the loopback servers (the environment reached them)
    assert len(world["files"].log) + len(world["hub"].log) > before
    print(f"rehearsal {name}: {summary}")
    return out, secs


def _train_job_ids(output: str) -> list[str]:
    """Slurm job ids of the train jobs, from Snakemake's 'rule train' blocks and the plugin's
    'Job N has been submitted with SLURM jobid M' lines."""
    ids, rule_of = [], {}
    cur = None
    for line in output.splitlines():
        m = re.match(r"\s*(?:localrule|rule) (\w+):", line)
        if m:
            cur = m.group(1)
        m = re.match(r"\s*jobid: (\d+)", line)
        if m and cur:
            rule_of[m.group(1)] = cur
        m = re.search(r"Job (\d+) has been submitted with SLURM jobid (\d+)", line)
        if m and rule_of.get(m.group(1)) == "train":
            ids.append(m.group(2))
    return ids


@pytest.mark.slurm
@pytest.mark.parametrize("name", _params(SLURM_CONFIGS))
def test_paper_config_rehearsal_on_slurm(slurm_cluster, world, name):
    out, _ = _rehearse(world, name, slurm=True)
    assert "SLURM jobid" in out
    ids = _train_job_ids(out)
    assert ids, out[-4000:]
    cfg = checks.merged_config(ROOT / "config" / "paper" / f"{name}.yaml")
    want = cfg["resources"]["train"]
    for jid in ids:  # Slurm keeps finished jobs for MinJobAge (600 s): what each train job was given
        info = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True, timeout=30,
                              env=slurm_cluster_env()).stdout
        assert re.search(rf"gres[:/]gpu[:=]{want['gpus']}\b", info), info  # TresPerJob=gres:gpu:2
        assert re.search(rf"NumCPUs={want['cpus']}\b", info), info
        assert re.search(rf"mem={want['mem_mb']}M", info), info


def slurm_cluster_env():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin:/bin"
    return env
