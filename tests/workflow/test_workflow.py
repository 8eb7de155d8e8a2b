"""The Snakemake workflow: lint, dry runs of every config, and the smoke matrix end to
end with a dropped-in baseline, interrupted mid-run and restarted."""
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.workflow
#: every test that starts Snakemake (5 to 20 s each for a lint or dry run on a 2-core machine, minutes
#: for the smoke run) is in the full suite only; the in-process config validation stays in the fast tier
SNAKEMAKE = pytest.mark.slow
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
# every experiment config; config/rehearsal.yaml is an override layer merged on top of a paper config (its
# own test is tests/slurm/test_paper_rehearsal.py), not an experiment
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config").rglob("*.yaml") if p.name != "rehearsal.yaml")


def snakemake(*args, timeout=900, **kw):
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


@SNAKEMAKE
def test_lint_is_clean():
    r = snakemake("--lint", "--configfile", "config/smoke.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations, your workflow is in a good condition" in r.stdout + r.stderr


@pytest.mark.parametrize("configfile", CONFIGS)
def test_every_config_passes_the_trainer_validation(configfile):
    from pcpo.algorithms import get_algorithm
    from pcpo.config import load_config

    cfg = load_config(ROOT / configfile)
    raw = yaml.safe_load((ROOT / configfile).read_text())
    for block in raw["matrix"]:
        for alg in block["algorithms"]:
            fw = get_algorithm(alg)
            fam = {"sd1": "ddim", "tiny-eps": "ddim"}.get(raw["base_models"][block["model"]]["kind"], "flow")
            fw.sampler_for(fam)
    assert cfg.train.epochs >= 1


@SNAKEMAKE
@pytest.mark.parametrize("configfile", CONFIGS)
def test_dry_run_of_every_config(configfile, tmp_path):
    r = snakemake("-n", "--configfile", configfile, "--config", f"results={tmp_path}/results", "--quiet", "rules")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    for rule in ("train", "sample", "evaluate", "aggregate", "report"):
        assert rule in out, f"{rule} missing from the plan of {configfile}"


@SNAKEMAKE
def test_malformed_config_fails_at_validation_naming_the_field(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    cfg["matrix"][0]["seeds"] = ["zero"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = snakemake("-n", "--configfile", str(bad), "--config", f"results={tmp_path}/results")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "seeds" in out and "zero" in out
    assert not (tmp_path / "results").exists()


@SNAKEMAKE
def test_evaluation_seeds_select_checkpoints_and_reject_unknown_seeds(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    cfg["evaluation"]["seeds"] = [1]
    f = tmp_path / "one_seed.yaml"
    f.write_text(yaml.safe_dump(cfg))
    r = snakemake("-n", "--configfile", str(f), "--config", f"results={tmp_path}/results")
    assert r.returncode == 0, r.stdout + r.stderr
    planned = {ln.split(": ", 1)[1] for ln in r.stdout.splitlines() if ln.strip().startswith("output: ")}
    evals = sorted(p for p in planned if "/metrics/" in p and "/base.json" not in p)
    assert evals and all("/seed1/" in p for p in evals), evals
    cfg["evaluation"]["seeds"] = [7]
    f.write_text(yaml.safe_dump(cfg))
    r = snakemake("-n", "--configfile", str(f), "--config", f"results={tmp_path}/results")
    assert r.returncode != 0
    assert "evaluation.seeds" in r.stdout + r.stderr and "[7]" in r.stdout + r.stderr


DROPIN = '''"""Test drop-in baseline, written as a user would: its own advantage estimator (centred
ranks within each group) and its own loss (the PPO clip on the advantage's sign), DanceGRPO's
settings otherwise."""
import torch

from pcpo.advantages import register_advantage
from pcpo.algorithms import Framework, register_framework
from pcpo.objectives import ppo_clip_loss, register_objective


@register_advantage("wfdrop_rank")
def make_rank_advantage(**_):
    def estimate(prompts, rewards, group_ids):
        out = torch.zeros(len(rewards))
        for g in group_ids.unique():
            m = group_ids == g
            r = rewards[m].argsort().argsort().float()
            out[m] = r - r.mean()
        return out
    return estimate


@register_objective("wfdrop_sign")
def sign_loss(ctx):
    return ppo_clip_loss(ctx.log_ratio, torch.sign(ctx.advantages), ctx.clip_range)


register_framework(Framework(name="wfdrop", description="workflow test drop-in", samplers={"ddim": "ddim"},
                             eta=1.0, advantage="wfdrop_rank", objective="wfdrop_sign", timestep_fraction=0.5,
                             share_initial_noise=True))
'''


def finished_outputs(log: str, base: Path) -> list[Path]:
    """The folders under `base` holding an output of a job that Snakemake's log reports finished."""
    jobs = {m.group(2): m.group(1) for m in re.finditer(r"^(?:local)?rule \w+:\n\s*(?:input: .*\n\s*)?output: (.*)\n(?:.*\n)*?\s*jobid: (\d+)", log, re.M)}
    finished = set(re.findall(r"Finished job(?:id:)? (\d+)", log))
    done = []
    for d in base.iterdir() if base.is_dir() else []:
        if any(jid in finished and f"{base.name}/{d.name}/" in block for jid, block in jobs.items()):
            done.append(d)
    return done


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """config/smoke.yaml plus a dropped-in baseline: started, killed once the first
    training checkpoint exists, then restarted to completion."""
    tmp = tmp_path_factory.mktemp("wf")
    results = tmp / "results"
    cfg = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    cfg["results"] = str(results)
    cfg["matrix"].append({"model": "eps", "algorithms": ["wfdrop", "pcpo-wfdrop"], "rewards": ["digit_alignment"],
                          "seeds": [0]})
    cfgfile = tmp / "smoke_dropin.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    mod = ROOT / "baselines" / "wfdrop.py"
    mod.write_text(DROPIN)
    try:
        args = [str(BIN / "snakemake"), "--cores", "2", "--configfile", str(cfgfile)]
        t0 = time.time()
        first_log = tmp / "first_attempt.log"
        logf = open(first_log, "w")
        p = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True, text=True)
        first_ckpt = None
        while time.time() - t0 < 600 and p.poll() is None:
            hits = list((results / "smoke" / "runs").glob("*/*/*/seed*/checkpoints/latest"))
            if hits:
                first_ckpt = hits[0]
                break
            time.sleep(0.5)
        assert p.poll() is None and first_ckpt is not None, "no training checkpoint appeared"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        logf.close()
        interrupted = time.time() - t0
        # the base models whose job had finished at the kill by Snakemake's own account: its log says
        # "Finished jobid: N" for the job whose output is in that folder. A declared output on disk is
        # not enough: a job killed after writing it but before Snakemake recorded the end is rightly rerun
        done = finished_outputs(first_log.read_text(), results / "smoke" / "base")
        pre = {f: f.stat().st_mtime_ns for d in done for f in d.rglob("*.json")}
        # a hard kill leaves Snakemake's lock behind: the documented recovery is --unlock
        subprocess.run(args + ["--unlock"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120, check=True)
        r = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
        total = time.time() - t0
        yield {"results": results / "smoke", "log": r.stdout + r.stderr, "rc": r.returncode, "pre": pre,
               "first_ckpt": first_ckpt, "interrupted_s": interrupted, "total_s": total, "config": cfg}
    finally:
        mod.unlink(missing_ok=True)
        shutil.rmtree(ROOT / "__pycache__", ignore_errors=True)


@SNAKEMAKE
def test_smoke_run_completes_with_report(smoke_run):
    assert smoke_run["rc"] == 0, smoke_run["log"][-4000:]
    rep = smoke_run["results"] / "report"
    for f in ["index.md", "final_reward.csv", "final_reward.md", "final_reward.tex", "epochs_to_target.csv",
              "matched_reward.csv", "reward_vs_epoch.png", "clipfrac_vs_epoch.png", "credit_weights.png",
              "credit_audit.png", "collapse_fid.png", "collapse_coverage.png"]:
        assert (rep / f).is_file(), f
    # class coverage (config/smoke.yaml asks for it) reaches the table of every evaluated checkpoint
    import pandas as pd

    allm = pd.read_csv(smoke_run["results"] / "tables" / "all_metrics.csv")
    assert allm["coverage"].between(0, 1).all() and len(allm) > 0
    index = (rep / "index.md").read_text()
    assert "Epochs to target" in index and "matched reward" in index
    print(f"\nsmoke run (interrupted at {smoke_run['interrupted_s']:.0f} s, restarted): {smoke_run['total_s']:.0f} s total")


@SNAKEMAKE
def test_dropped_in_baseline_appears_in_report(smoke_run):
    import pandas as pd

    final = pd.read_csv(smoke_run["results"] / "report" / "final_reward.csv")
    assert {"wfdrop", "pcpo-wfdrop", "ddpo", "pcpo-ddpo", "dancegrpo", "pcpo-dancegrpo"} <= set(final["algorithm"])
    cfg = json.loads((smoke_run["results"] / "runs/eps/digit_alignment/wfdrop/seed0/config.json").read_text())
    assert cfg["framework"]["timestep_fraction"] == 0.5
    # its own advantage estimator and loss ran; the PCPO variant swapped only the loss
    assert (cfg["framework"]["advantage"], cfg["framework"]["objective"]) == ("wfdrop_rank", "wfdrop_sign")
    pc = json.loads((smoke_run["results"] / "runs/eps/digit_alignment/pcpo-wfdrop/seed0/config.json").read_text())
    assert (pc["framework"]["advantage"], pc["framework"]["objective"]) == ("wfdrop_rank", "log_hinge")


@SNAKEMAKE
def test_restart_reuses_finished_jobs_and_resumes_training(smoke_run):
    # the base models finished before the kill were not rebuilt
    assert smoke_run["pre"], "no base model had finished at the kill"  # a training run needs one
    for f, mtime in smoke_run["pre"].items():
        assert f.stat().st_mtime_ns == mtime, f"{f} was rebuilt"
    run = smoke_run["first_ckpt"].parents[1]
    log = (smoke_run["results"] / "logs" / "train" / run.relative_to(smoke_run["results"] / "runs")).with_suffix(".log")
    text = log.read_text()
    assert "resuming from" in text or "run already complete" in text, text[-2000:]


@SNAKEMAKE
def test_the_workflow_launches_two_training_processes(smoke_run, tmp_path):
    """resources.train.gpus: 2 makes the train rule start two real processes (torchrun; gloo on
    this CPU), reusing the smoke run's base models: one new run, split in whole groups."""
    assert smoke_run["rc"] == 0, smoke_run["log"][-2000:]
    cfg = json.loads(json.dumps(smoke_run["config"]))
    cfg["resources"] = {"train": {"gpus": 2}}
    cfg["train"] = {**cfg["train"], "train_batch_size": 2, "device": "cpu"}
    cfg["matrix"] = [{"model": "flow", "algorithms": ["dancegrpo"], "rewards": ["digit_alignment"], "seeds": [7]}]
    cfg["evaluation"] = {**cfg["evaluation"], "seeds": [7]}
    f = tmp_path / "two_gpus.yaml"
    f.write_text(yaml.safe_dump(cfg))
    run = smoke_run["results"] / "runs" / "flow" / "digit_alignment" / "dancegrpo" / "seed7"
    r = snakemake(str(run / "DONE"), "--cores", "2", "--configfile", str(f), timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "rule pretrain" not in r.stdout + r.stderr  # the base models were reused
    log = (smoke_run["results"] / "logs" / "train" / run.relative_to(smoke_run["results"] / "runs")).with_suffix(".log")
    text = log.read_text()
    assert "over 2 processes (2 each)" in text, text[-2000:]
    assert (run / "metrics.csv").is_file() and (run / "checkpoints" / "latest").is_file()
