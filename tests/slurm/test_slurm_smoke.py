"""config/smoke.yaml end to end on a real one-node Slurm cluster, through profiles/slurm
plus the test profile (no GPUs, squeue status checks)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slurm
def test_smoke_config_runs_through_slurm(slurm_cluster, tmp_path):
    results = tmp_path / "results"
    r = slurm_cluster.run_snakemake(ROOT, ROOT / "Snakefile", ROOT / "config" / "smoke.yaml",
                                    ["--config", f"results={results}"], cwd=ROOT, timeout=1500)
    assert r.returncode == 0, r.stdout[-6000:]
    assert "SLURM jobid" in r.stdout  # the jobs really went through sbatch
    rep = results / "smoke" / "report"
    assert (rep / "index.md").is_file()
    assert (rep / "final_reward.csv").read_text().count("\n") == 1 + 4  # header + 4 algorithms
    logs = list((results / "smoke" / "logs" / "train").rglob("*.log"))
    assert len(logs) == 12
