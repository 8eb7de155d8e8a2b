"""One rehearsal run: a paper config + config/rehearsal.yaml through Snakemake, against the loopback world.

The run happens in a work folder of its own (``--directory``), where ``config`` links to the
repository's config folder (paper configs read repository files such as
config/paper/prompts/simple_animals.txt by relative path) and ``data/`` is the data root the data
rule fetches into. ``python tests/rehearsal/run.py config/paper/X.yaml [--slurm]`` runs one by hand.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ROOT / "config" / "rehearsal.yaml"
REHEARSAL_PROFILE = Path(__file__).resolve().parent / "profile"


def prepare_workdir(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    link = work / "config"
    if not link.exists():
        link.symlink_to(ROOT / "config", target_is_directory=True)
    return work


def matrix_cut(config: Path, work: Path) -> Path:
    """A third config layer: the paper config's matrix with each entry's first seed only.

    config/rehearsal.yaml cannot do this: the matrix is a list, which Snakemake replaces whole, and its
    model names differ per config. Algorithms, rewards and models stay."""
    import yaml

    cfg = yaml.safe_load(Path(config).read_text())
    cut = {"matrix": [{**b, "seeds": list(b["seeds"])[:1]} for b in cfg["matrix"]]}
    path = work / "rehearsal-matrix.yaml"
    path.write_text("# written by tests/rehearsal/run.py: the matrix's first seed only\n" + yaml.safe_dump(cut))
    return path


def snakemake_args(config: Path, work: Path, results: Path, slurm: bool, extra=()) -> list[str]:
    args = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", str(config), str(OVERRIDES), str(matrix_cut(config, work)), *map(str, extra),
            "--config", f"results={results}",
            "--workflow-profile", "none", "--printshellcmds", "--show-failed-logs"]
    if slurm:
        args += ["--profile", str(ROOT / "profiles" / "slurm"), "--profile", str(REHEARSAL_PROFILE), "--cores", "all"]
    else:
        args += ["--cores", "2"]
    return args


def run(config: str | os.PathLike, work: Path, env: dict, *, slurm: bool = False, timeout: float = 1800, extra=()):
    """Run Snakemake; returns (returncode, output, seconds). Slurm runs start their own session so a
    timeout can stop them with SIGINT (Snakemake then cancels its Slurm jobs)."""
    import signal

    config = Path(config).resolve()
    prepare_workdir(work)
    results = work / "results"
    cmd = snakemake_args(config, work, results, slurm, extra)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run_env.update(env)
    run_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), run_env.get("PATH", ""), "/usr/sbin",
                                       "/usr/bin", "/sbin", "/bin"])
    run_env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [run_env.get("PYTHONPATH")] if p])
    print("rehearsal: " + shlex.join(cmd), file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=str(work), env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        out = (out or "") + f"\n[rehearsal: timed out after {timeout:.0f} s]\n"
        return 124, out, time.monotonic() - t0
    return proc.returncode, out, time.monotonic() - t0


def main(argv: list[str]) -> int:
    import argparse
    import tempfile

    from tests.rehearsal.world import build_world, serve_world

    p = argparse.ArgumentParser()
    p.add_argument("configs", nargs="+")
    p.add_argument("--slurm", action="store_true")
    p.add_argument("--dir", default=None)
    p.add_argument("--extra", action="append", default=[], help="a further config layer (by hand only)")
    a = p.parse_args(argv)
    base = Path(a.dir or tempfile.mkdtemp(prefix="pcpo-rehearsal-"))
    world = build_world(base / "world") if not (base / "world" / "catalogue.yaml").is_file() else \
        {"hub": base / "world" / "hub", "files": base / "world" / "files", "catalogue": base / "world" / "catalogue.yaml"}
    rc_all = 0
    with serve_world(world, base / "home") as (env, _, _):
        for c in a.configs:
            rc, out, secs = run(c, base / Path(c).stem, env, slurm=a.slurm, extra=[Path(x).resolve() for x in a.extra])
            print(out[-8000:])
            print(f"rehearsal {c}: rc={rc} in {secs:.0f} s", flush=True)
            rc_all = rc_all or rc
    return rc_all


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
