"""A config is checked before any work: a --configfile must name its experiment, a typo in the
trainer sections or the matrix stops the dry run in one line naming the field (the library's own
validators, as `pcpo train` runs them), and a dry run writes nothing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.workflow
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
#: Snakemake's own notices before any parsing error (not error text)
NOTICES = ("Using workflow specific profile", "Using profile", "Config file ")


def snakemake(*args, results, timeout=300):
    r = subprocess.run([str(BIN / "snakemake"), *args, "--config", f"results={results}"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=timeout)
    return r


def smoke(**changes) -> dict:
    cfg = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    cfg.update(changes)
    return cfg


def write(tmp_path, name, cfg) -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def fails_in_one_line(r, results: Path) -> str:
    """Exit non-zero, one line of error (no traceback), nothing written."""
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and not ln.startswith(NOTICES)]
    assert len(lines) == 1, lines
    assert not results.exists(), "a failed check wrote results"
    return lines[0]


def test_configfile_without_experiment_is_refused(tmp_path):
    cfg = smoke()
    del cfg["experiment"]
    f = write(tmp_path, "noexp.yaml", cfg)
    line = fails_in_one_line(snakemake("-n", "--configfile", f, results=tmp_path / "r"), tmp_path / "r")
    assert line.startswith(f"config: {f}: no 'experiment:' key"), line


def test_merged_configfiles_that_name_the_experiment_run(tmp_path):
    cfg = smoke()
    del cfg["experiment"]
    a = write(tmp_path, "body.yaml", cfg)
    b = write(tmp_path, "name.yaml", {"experiment": "merged"})
    r = snakemake("-n", "--configfile", a, b, results=tmp_path / "r")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"{tmp_path}/r/merged/runs/" in r.stdout
    assert not (tmp_path / "r").exists()


def test_default_is_the_tiny_world_and_a_dry_run_writes_nothing(tmp_path):
    results = tmp_path / "fresh"
    r = snakemake("-n", results=results)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"{results}/tiny/runs/eps/digit_boldness/ddpo/seed0/DONE" in r.stdout
    assert not results.exists(), sorted(str(p) for p in results.rglob("*"))


def test_a_real_run_gives_jobs_the_effective_config(tmp_path):
    """onstart writes results/<exp>/config.yaml before the first job, every layer merged in;
    here a stand-in `pcpo` copies the file its job was given."""
    results = tmp_path / "r"
    fake = "sh -c 'mkdir -p \"$7\" && cp \"$3\" \"$7/config.json\"' sh"  # pretrain --config C --model M --out O
    over = write(tmp_path, "over.yaml", {"train": {"lr": 0.5}})
    r = subprocess.run([str(BIN / "snakemake"), "--cores", "1", f"{results}/smoke/base/classifier/config.json",
                        "--configfile", "config/smoke.yaml", over, "--config", f"results={results}",
                        f"pcpo_command={fake}"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    seen = yaml.safe_load((results / "smoke/base/classifier/config.json").read_text())
    assert seen == yaml.safe_load((results / "smoke/config.yaml").read_text())
    assert seen["experiment"] == "smoke" and seen["train"] == {**smoke()["train"], "lr": 0.5}
    assert seen["results"] == str(results)


@pytest.mark.parametrize("name,change,expect", [
    ("lr", lambda c: c["train"].update(lr="abc"), "config: train.lr: expected a number, got 'abc'"),
    ("unknown_field", lambda c: c["sampling"].update(stepz=3), "config: sampling.stepz: unknown field"),
    ("algorithm", lambda c: c["matrix"][0]["algorithms"].append("nope"),
     "config: matrix[0].algorithms: unknown algorithm 'nope'; available: "),
    ("model", lambda c: c["matrix"][0].update(model="sd9"), "config: matrix[0].model: 'sd9' is not in base_models"),
    ("base_override", lambda c: c["base_models"]["eps"].update(overrides={"train": {"group_size": "x"}}),
     "config: train.group_size: expected an integer, got 'x'"),
    ("algorithm_override", lambda c: c.update(algorithms={"ddpo": {"clip_rang": 0.1}}),
     "config: algorithms.ddpo.clip_rang: unknown framework field"),
    ("old_resources", lambda c: c.update(resources={"train_gpus": 8}),
     "config: resources: train_gpus is no longer read; write one block per job kind instead "
     "(train_gpus -> resources.train.gpus)"),
    ("resources_type", lambda c: c.update(resources={"train": {"gpus": "x"}}),
     "config: resources.train.gpus: 'x' is not of type 'integer'"),
    ("resources_nodes", lambda c: c.update(resources={"sample": {"nodes": 2}}),
     "config: resources.sample.nodes: 2 is greater than the maximum of 1"),
])
def test_a_typo_fails_the_dry_run_in_one_line(tmp_path, name, change, expect):
    cfg = smoke()
    change(cfg)
    f = write(tmp_path, f"{name}.yaml", cfg)
    line = fails_in_one_line(snakemake("-n", "--configfile", f, results=tmp_path / "r"), tmp_path / "r")
    assert line.startswith(expect), line


def test_the_workflow_uses_the_trainers_validators():
    """Not a copy of the rules: the check calls pcpo.config and pcpo.algorithms."""
    text = (ROOT / "workflow/rules/checks.smk").read_text()
    for call in ("from pcpo.config import", "from_dict(TrainingConfig", "validate_training(", "get_algorithm(",
                 "parse_sets("):
        assert call in text, call
