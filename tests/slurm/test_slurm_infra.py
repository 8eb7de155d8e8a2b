"""End-to-end check of the Slurm profile stack on a local one-node cluster.

A two-rule throwaway workflow goes through profiles/slurm (+ the test
overrides in tests/slurm/profile) and snakemake-executor-plugin-slurm; each
rule records the Slurm job it ran in.
"""

from __future__ import annotations

import textwrap
import time

import pytest
import yaml

from cluster import BASE_PROFILE, TEST_PROFILE

pytestmark = pytest.mark.slurm

# `prepare` gets profiles/slurm's default-resources; `train` gets the test
# profile's set-resources (requests that fit the GPU-less test node).
SNAKEFILE = textwrap.dedent(
    """
    rule train:
        input: "prepared.txt"
        output: "trained.txt"
        log: "logs/train.log"
        shell:
            "(echo train on $(hostname); cat {input}) > {log} 2>&1; "
            "printf 'job=%s cpus=%s\\n' \\"${{SLURM_JOB_ID:-}}\\" "
            "\\"${{SLURM_CPUS_PER_TASK:-}}\\" > {output}"

    rule prepare:
        output: "prepared.txt"
        log: "logs/prepare.log"
        shell:
            "echo prepare on $(hostname) > {log} 2>&1; "
            "printf 'job=%s cpus=%s\\n' \\"${{SLURM_JOB_ID:-}}\\" "
            "\\"${{SLURM_CPUS_PER_TASK:-}}\\" > {output}"
    """
)


def _fields(path):
    text = path.read_text().strip()
    return dict(item.split("=", 1) for item in text.split())


def test_two_rule_workflow_runs_through_slurm(slurm_cluster, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE)

    t0 = time.monotonic()
    result = slurm_cluster.run_snakemake(tmp_path, snakefile, timeout=300)
    elapsed = time.monotonic() - t0
    print(f"snakemake on slurm: {elapsed:.1f}s (cluster startup "
          f"{slurm_cluster.startup_seconds:.1f}s, apt {slurm_cluster.apt_seconds:.1f}s)")
    assert result.returncode == 0, (
        f"snakemake failed (exit {result.returncode}):\n{result.stdout[-6000:]}\n"
        f"{slurm_cluster.logs()}"
    )

    for name in ("prepared.txt", "trained.txt", "logs/prepare.log", "logs/train.log"):
        assert (tmp_path / name).is_file(), f"{name} missing\n{result.stdout[-4000:]}"

    prepare = _fields(tmp_path / "prepared.txt")
    train = _fields(tmp_path / "trained.txt")
    # really ran as Slurm jobs, two distinct ones
    assert prepare["job"].isdigit(), prepare
    assert train["job"].isdigit(), train
    assert prepare["job"] != train["job"]
    assert "prepare on" in (tmp_path / "logs/prepare.log").read_text()
    assert "train on" in (tmp_path / "logs/train.log").read_text()

    # resources came from the profile stack
    base = yaml.safe_load(BASE_PROFILE.joinpath("config.yaml").read_text())
    test = yaml.safe_load(TEST_PROFILE.joinpath("config.yaml").read_text())
    prepare_job = slurm_cluster.job_info(prepare["job"])
    train_job = slurm_cluster.job_info(train["job"])
    assert prepare_job["JobState"] == train_job["JobState"] == "COMPLETED"
    assert prepare_job["MinMemoryNode"] == f"{base['default-resources']['mem_mb']}M"
    minutes = base["default-resources"]["runtime"]
    assert prepare_job["TimeLimit"] == f"{minutes // 60:02d}:{minutes % 60:02d}:00"
    assert train_job["MinMemoryNode"] == f"{test['set-resources']['train']['mem_mb']}M"
    # profiles/slurm sets no counts (the experiment config's resources: decide them)
    counts = {"gpu", "gres", "nodes", "tasks", "cpus_per_task", "mem_mb", "runtime"}
    assert not any(counts & set(r) for r in (base.get("set-resources") or {}).values())
    assert "gpu" not in train_job.get("TresPerJob", "") + train_job.get("TresPerNode", "")

    # Snakemake's own record of the submissions
    assert "SLURM run ID" in result.stdout
    for job_id in (prepare["job"], train["job"]):
        assert f"submitted with SLURM jobid {job_id}" in result.stdout
