"""What each job asks the cluster for comes from the experiment config's `resources:` block.

Read from Snakemake's own dry run under `--profile slurm` (no sbatch needed: a dry run submits
nothing) for every paper config, then turned into the sbatch command line by the installed
snakemake-executor-plugin-slurm's own functions. The expected numbers are read from the YAML
files here, not from pcpo.launch."""
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.workflow
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
PAPER = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config" / "paper").glob("*.yaml"))
#: the config block each rule takes its request from
BLOCK_OF = {"train": "train", "sample_base": "sample", "sample": "sample", "evaluate": "evaluate",
            "aggregate": "report", "report": "report", "pretrain": "pretrain", "pretrain_classifier": "pretrain"}
#: the tiny world's values where a config leaves a key out (documented in pcpo/launch.py)
TINY = {"pretrain": (4000, 60), "train": (3000, 60), "sample": (2000, 30), "evaluate": (3000, 30), "report": (2000, 10)}


def dry_run(*args, tmp_path):
    r = subprocess.run([str(BIN / "snakemake"), "-n", "--profile", "slurm", "--config", f"results={tmp_path}/results",
                        *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert not (tmp_path / "results").exists(), "the dry run wrote results"
    return r.stdout + r.stderr


def planned_jobs(out: str) -> list[dict]:
    """Every job of a dry run's listing: rule, threads, resources (as Snakemake prints them), shell."""
    jobs = []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)(Shell command: .*)?", out, re.M):
        body = m.group(2)
        res = {}
        line = re.search(r"^    resources: (.*)$", body, re.M)
        for item in (line.group(1).split(", ") if line else []):
            k, v = item.split("=", 1)
            res[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
        th = re.search(r"^    threads: (\d+)$", body, re.M)
        jobs.append(dict(rule=m.group(1), resources=res, threads=int(th.group(1)) if th else 1,
                         shell=(m.group(3) or "")[len("Shell command: "):]))
    return jobs


def expected(cfg: dict, block: str) -> dict:
    b = (cfg.get("resources") or {}).get(block) or {}
    mem, rt = TINY[block]
    return dict(gpus=b.get("gpus", 0), nodes=b.get("nodes", 1), cpus=b.get("cpus", 1), mem_mb=b.get("mem_mb", mem),
                runtime=b.get("runtime", rt))


class _Res(dict):
    __getattr__ = dict.get


def sbatch_line(resources: dict, threads: int) -> str:
    """The sbatch call snakemake-executor-plugin-slurm builds for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=_Res(resources), threads=threads)
    params = dict(run_uuid="u", slurm_logfile="l", comment_str="c", account="", partition="", workdir="")
    return get_submit_command(job, params) + set_gres_string(job)


def check_job(job: dict, want: dict):
    r = job["resources"]
    where = f"{job['rule']}: {r}"
    assert r["mem_mb"] == want["mem_mb"] and r["runtime"] == want["runtime"], where
    assert r["cpus_per_task"] == want["cpus"] and r["nodes"] == want["nodes"] and r["tasks"] == want["nodes"], where
    from snakemake.utils import available_cpu_count

    assert job["threads"] == min(want["cpus"], available_cpu_count()), where  # threads follow cpus (--cores all caps)
    sb = sbatch_line(r, job["threads"])
    assert f"--mem {want['mem_mb']}" in sb and f"-t {want['runtime']}" in sb, sb
    assert f"--cpus-per-task={want['cpus']}" in sb and f"--nodes={want['nodes']}" in sb, sb
    assert "--ntasks-per-gpu" not in sb, sb
    if want["nodes"] == 1:
        assert r["gpu"] == want["gpus"], where
        assert (f"--gpus={want['gpus']}" in sb) == (want["gpus"] > 0) and "--gres" not in sb, sb
    else:
        assert "gpu" not in r and r["mpi"] == "srun", where
        assert f"--gres=gpu:{want['gpus']}" in sb and "--gpus=" not in sb and f"--ntasks={want['nodes']}" in sb, sb
    return sb


@pytest.mark.parametrize("configfile", PAPER)
def test_every_rule_requests_what_the_paper_config_asks(configfile, tmp_path):
    cfg = yaml.safe_load((ROOT / configfile).read_text())
    jobs = planned_jobs(dry_run("--configfile", configfile, tmp_path=tmp_path))
    checked = set()
    for job in jobs:
        block = BLOCK_OF.get(job["rule"])
        if block is None:  # `all`, or a data-fetch job another part of the workflow adds
            continue
        check_job(job, expected(cfg, block))
        checked.add(job["rule"])
    assert {"train", "sample_base", "sample", "evaluate", "aggregate", "report"} <= checked, checked
    train = next(j for j in jobs if j["rule"] == "train")
    g = cfg["resources"]["train"]["gpus"]
    assert f"-m torch.distributed.run --standalone --nproc_per_node {g} -m pcpo.cli train" in train["shell"]
    # every paper config trains on GPUs and samples and evaluates on one
    assert g >= 1 and expected(cfg, "sample")["gpus"] == expected(cfg, "evaluate")["gpus"] == 1


def test_multi_node_training_asks_per_node_gpus_and_runs_srun(tmp_path):
    over = tmp_path / "four_nodes.yaml"
    over.write_text(yaml.safe_dump({"resources": {"train": {"nodes": 4}}}))
    cfgfile = "config/paper/flowgrpo_sd35m_pickscore.yaml"
    cfg = yaml.safe_load((ROOT / cfgfile).read_text())
    jobs = planned_jobs(dry_run("--configfile", cfgfile, str(over), tmp_path=tmp_path))
    want = {**expected(cfg, "train"), "nodes": 4}
    trains = [j for j in jobs if j["rule"] == "train"]
    assert trains
    for job in trains:
        check_job(job, want)
        assert job["resources"]["tasks_per_gpu"] == 0
        sh = job["shell"]
        assert sh.startswith(f"OMP_NUM_THREADS={max(1, job['threads'] // want['gpus'])} srun --nodes=4 --ntasks=4 "
                             f"--ntasks-per-node=1 --cpus-per-task={want['cpus']} "), sh
        assert f"-m pcpo.launch --nnodes 4 --nproc-per-node {want['gpus']} -- train --config" in sh, sh
    # the other jobs keep their single-node requests
    for job in jobs:
        if BLOCK_OF.get(job["rule"]) in ("sample", "evaluate"):
            check_job(job, expected(cfg, BLOCK_OF[job["rule"]]))


def test_tiny_world_defaults_ask_one_cpu_and_no_gpu(tmp_path):
    jobs = planned_jobs(dry_run("--configfile", "config/smoke.yaml", tmp_path=tmp_path))
    cfg = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    seen = set()
    for job in jobs:
        block = BLOCK_OF.get(job["rule"])
        if block:
            check_job(job, expected(cfg, block))
            seen.add(block)
            assert job["resources"]["gpu"] == 0
    assert seen == {"pretrain", "train", "sample", "evaluate", "report"}


def test_slurm_profile_sets_no_counts():
    """The profile holds site settings only: an entry under set-resources would replace the
    config's request for that rule."""
    prof = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    counts = {"gpu", "gpus", "gres", "nodes", "tasks", "cpus_per_task", "mem_mb", "mem", "runtime", "threads"}
    for rule, res in (prof.get("set-resources") or {}).items():
        assert not counts & set(res), (rule, res)
    assert "set-threads" not in prof


# ---- the launcher --------------------------------------------------------------------------

def test_launcher_forms():
    from pcpo.launch import train_launcher, world_size

    py = "/x/python"
    assert train_launcher(None, python=py) == "/x/python -m pcpo.cli"
    assert train_launcher({"train": {"gpus": 1}}, python=py) == "/x/python -m pcpo.cli"
    assert train_launcher({"train": {"gpus": 8}}, python=py) == \
        "/x/python -m torch.distributed.run --standalone --nproc_per_node 8 -m pcpo.cli"
    assert train_launcher({"train": {"gpus": 8, "nodes": 4, "cpus": 32}}, python=py) == (
        "srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --cpus-per-task=32 --kill-on-bad-exit=1 "
        "/x/python -m pcpo.launch --nnodes 4 --nproc-per-node 8 --")
    assert world_size({"train": {"gpus": 8, "nodes": 4}}) == 32 and world_size({}) == 1
    assert world_size({"train": {"gpus": 0, "nodes": 2}}) == 2  # CPU processes, one per node


def test_rendezvous_from_the_slurm_environment(monkeypatch):
    from pcpo import launch

    env = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu17,gpu18"}
    assert launch.rendezvous(env) == (f"gpu17:{launch.PORT_BASE + 123456 % launch.PORT_SPAN}", "123456")
    assert launch.rendezvous({**env, "PCPO_RDZV_PORT": "4242"}) == ("gpu17:4242", "123456")
    # a compressed list goes through `scontrol show hostnames`
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(stdout="gpu07\ngpu08\n")

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    assert launch.rendezvous({**env, "SLURM_JOB_NODELIST": "gpu[07-08]"})[0].startswith("gpu07:")
    assert calls == [["scontrol", "show", "hostnames", "gpu[07-08]"]]
    with pytest.raises(launch.ResourceError, match="SLURM_JOB_ID"):
        launch.rendezvous({})


def test_node_side_execs_one_torchrun_agent(monkeypatch):
    from pcpo import launch

    seen = {}
    monkeypatch.setattr(launch.os, "execv", lambda exe, argv: seen.update(argv=argv))
    monkeypatch.setattr(launch.os, "environ", {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n1,n2",
                                               "PCPO_RDZV_PORT": "30000", "SLURM_NODEID": "1"})
    launch.main(["--nnodes", "2", "--nproc-per-node", "4", "--", "train", "--seed", "3"])
    assert seen["argv"] == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "4",
                            "--rdzv_backend", "c10d", "--rdzv_endpoint", "n1:30000", "--rdzv_id", "77",
                            "-m", "pcpo.cli", "train", "--seed", "3"]


def test_resource_blocks_are_checked():
    from pcpo.launch import ResourceError, job_resources

    with pytest.raises(ResourceError, match=r"resources.train.gpus"):
        job_resources({"train": {"gpus": -1}}, "train")
    with pytest.raises(ResourceError, match=r"train_gpus -> resources.train.gpus"):
        job_resources({"train_gpus": 8}, "train")
    with pytest.raises(ResourceError, match=r"resources.sample.gpu: unknown key"):
        job_resources({"sample": {"gpu": 1}}, "sample")
