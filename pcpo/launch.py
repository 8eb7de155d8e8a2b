"""How the workflow asks for resources and starts training processes.

``resources:`` in an experiment file holds one block per kind of job::

    resources:
      train: {gpus: 8, nodes: 1, cpus: 16, mem_mb: 400000, runtime: 4320}
      sample: {gpus: 1, cpus: 8, mem_mb: 96000, runtime: 480}

``gpus`` and ``cpus`` count per node (one training process per GPU, or ``gpus`` CPU processes
with gloo where there is no GPU), ``mem_mb`` is host memory per node, ``runtime`` minutes.
Missing keys take the tiny world's values (:data:`DEFAULTS`). :func:`job_resources` turns a
block into the Snakemake resources the Slurm executor plugin maps to sbatch flags, and
:func:`train_launcher` builds the command that starts ``pcpo train`` on them:

* one process: ``python -m pcpo.cli``;
* one node, G > 1 processes: ``python -m torch.distributed.run --standalone --nproc_per_node G``;
* N > 1 nodes: ``srun`` starts one task per node, each running ``python -m pcpo.launch``, which
  finds the first node of the allocation and execs one torchrun agent with a c10d rendezvous
  there (world size N x G).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

#: the job kinds of the workflow (rule -> block: pretrain_classifier uses pretrain,
#: sample_base uses sample, aggregate uses report)
BLOCKS = ("pretrain", "train", "sample", "evaluate", "report", "data")
KEYS = ("gpus", "nodes", "cpus", "mem_mb", "runtime")

#: the tiny world's requests: no GPU, one CPU, a few GB, minutes
DEFAULTS = {
    "pretrain": dict(gpus=0, nodes=1, cpus=1, mem_mb=4000, runtime=60),
    "train": dict(gpus=0, nodes=1, cpus=1, mem_mb=3000, runtime=60),
    "sample": dict(gpus=0, nodes=1, cpus=1, mem_mb=2000, runtime=30),
    "evaluate": dict(gpus=0, nodes=1, cpus=1, mem_mb=3000, runtime=30),
    "report": dict(gpus=0, nodes=1, cpus=1, mem_mb=2000, runtime=10),
    "data": dict(gpus=0, nodes=1, cpus=1, mem_mb=2000, runtime=120),
}

#: the flat keys of older configs and where they went
OLD_KEYS = {
    "train_gpus": "resources.train.gpus",
    "pretrain_gpus": "resources.pretrain.gpus",
    "sample_gpus": "resources.sample.gpus",
    "evaluate_gpus": "resources.evaluate.gpus",
    "train_mem_mb": "resources.train.mem_mb",
    "train_runtime": "resources.train.runtime",
    "train_nodes": "resources.train.nodes",
}

#: rendezvous port when PCPO_RDZV_PORT is unset: a base plus the job id modulo a span, so two
#: multi-node jobs that share a first node rarely meet on one port
PORT_BASE, PORT_SPAN = 29500, 20000


class ResourceError(ValueError):
    """A ``resources:`` block the workflow cannot turn into a request."""


def old_keys_message(resources: dict) -> str | None:
    """One line naming the new keys when ``resources`` uses the flat keys of older configs."""
    old = [k for k in (resources or {}) if k in OLD_KEYS]
    if not old:
        return None
    moves = ", ".join(f"{k} -> {OLD_KEYS[k]}" for k in old)
    return (f"resources: {', '.join(old)} {'is' if len(old) == 1 else 'are'} no longer read; "
            f"write one block per job kind instead ({moves}), e.g. resources: {{train: {{gpus: 8, nodes: 1}}}}")


def resource_block(resources: dict | None, name: str) -> dict:
    """The ``resources.<name>`` block with the tiny world's defaults filled in."""
    if name not in DEFAULTS:
        raise ResourceError(f"resources.{name}: unknown job kind; known: {', '.join(BLOCKS)}")
    msg = old_keys_message(resources or {})
    if msg:
        raise ResourceError(msg)
    given = (resources or {}).get(name) or {}
    bad = sorted(set(given) - set(KEYS))
    if bad:
        raise ResourceError(f"resources.{name}.{bad[0]}: unknown key; known: {', '.join(KEYS)}")
    out = {**DEFAULTS[name], **given}
    for k in KEYS:
        v = out[k]
        lowest = 0 if k == "gpus" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
            raise ResourceError(f"resources.{name}.{k}: expected an integer >= {lowest}, got {v!r}")
    return out


def processes_per_node(block: dict) -> int:
    """Training processes per node: one per GPU (``gpus`` CPU processes where there is none)."""
    return max(1, int(block["gpus"]))


def world_size(resources: dict | None) -> int:
    """Training processes of a run: nodes x processes per node."""
    b = resource_block(resources, "train")
    return int(b["nodes"]) * processes_per_node(b)


def job_resources(resources: dict | None, name: str) -> dict:
    """Snakemake resources for a job of kind ``name``, as snakemake-executor-plugin-slurm reads them.

    * ``nodes`` -> ``--nodes``; ``mem_mb`` -> ``--mem`` (per node); ``runtime`` -> ``-t`` (minutes);
      ``cpus_per_task`` -> ``--cpus-per-task`` (one task per node, so the node's CPUs).
    * GPUs on one node: ``gpu`` -> ``--gpus=G`` (``--gpus=<model>:G`` with a ``gpu_model`` from the
      profile). On several nodes ``--gpus`` would count the whole job, so the request is
      ``gres: gpu:G`` -> ``--gres=gpu:G``, which Slurm counts per node.
    * ``tasks`` -> ``--ntasks`` (one per node). The plugin would turn ``tasks`` into
      ``--ntasks-per-gpu`` on GPU jobs, so ``tasks_per_gpu: 0`` switches that off.
    * Several nodes: ``mpi: srun`` makes the plugin run the job's shell once, on the first node,
      rather than inside ``srun -n1``; the shell's own ``srun`` then starts one task per node.
    """
    b = resource_block(resources, name)
    g, n = int(b["gpus"]), int(b["nodes"])
    out = dict(nodes=n, tasks=n, cpus_per_task=int(b["cpus"]), mem_mb=int(b["mem_mb"]), runtime=int(b["runtime"]))
    if n == 1:
        out["gpu"] = g
    elif g > 0:
        out["gres"] = f"gpu:{g}"
    if g > 0:
        out["tasks_per_gpu"] = 0
    if n > 1:
        out["mpi"] = "srun"
    return out


def train_launcher(resources: dict | None, python: str | None = None) -> str:
    """The shell prefix that starts ``pcpo <command> ...`` on the train block's processes."""
    b = resource_block(resources, "train")
    py = shlex.quote(python or sys.executable)
    nodes, procs = int(b["nodes"]), processes_per_node(b)
    if nodes == 1 and procs == 1:
        return f"{py} -m pcpo.cli"
    if nodes == 1:
        return f"{py} -m torch.distributed.run --standalone --nproc_per_node {procs} -m pcpo.cli"
    return (f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task={int(b['cpus'])} "
            f"--kill-on-bad-exit=1 {py} -m pcpo.launch --nnodes {nodes} --nproc-per-node {procs} --")


def torchrun_argv(nnodes: int, nproc_per_node: int, endpoint: str, rdzv_id: str, python: str | None = None) -> list[str]:
    """One torchrun agent of an ``nnodes``-node c10d rendezvous at ``endpoint`` (host:port)."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
            "--nproc_per_node", str(nproc_per_node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
            "--rdzv_id", str(rdzv_id), "-m", "pcpo.cli"]


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (``node[01-04],gpu7`` needs ``scontrol show hostnames``)."""
    if not nodelist:
        raise ResourceError("SLURM_JOB_NODELIST is empty; multi-node training runs inside a Slurm allocation "
                            "(or set PCPO_RDZV_HOST)")
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        raise ResourceError(f"scontrol show hostnames {nodelist}: {e}; set PCPO_RDZV_HOST to the first node") from e
    if not out:
        raise ResourceError(f"scontrol show hostnames {nodelist} printed no host; set PCPO_RDZV_HOST")
    return out[0]


def rendezvous(env: dict | None = None) -> tuple[str, str]:
    """(host:port, id) of this job's rendezvous: the allocation's first node, a port from the job
    id (PCPO_RDZV_HOST / PCPO_RDZV_PORT override them), the Slurm job id as the rendezvous id."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or env.get("PCPO_RDZV_ID")
    if not job:
        raise ResourceError("SLURM_JOB_ID is not set; multi-node training runs inside a Slurm allocation "
                            "(or set PCPO_RDZV_ID, PCPO_RDZV_HOST and PCPO_RDZV_PORT)")
    host = env.get("PCPO_RDZV_HOST") or first_host(
        env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_STEP_NODELIST") or "")
    if env.get("PCPO_RDZV_PORT"):
        port = int(env["PCPO_RDZV_PORT"])
    else:
        digits = "".join(c for c in str(job) if c.isdigit()) or "0"
        port = PORT_BASE + int(digits) % PORT_SPAN
    return f"{host}:{port}", str(job)


def main(argv: list[str] | None = None) -> int:
    """Node side of a multi-node run: ``python -m pcpo.launch --nnodes N --nproc-per-node G -- train ...``
    execs one torchrun agent joining this job's rendezvous."""
    p = argparse.ArgumentParser(prog="python -m pcpo.launch", description=main.__doc__)
    p.add_argument("--nnodes", type=int, required=True)
    p.add_argument("--nproc-per-node", type=int, required=True)
    p.add_argument("args", nargs=argparse.REMAINDER, help="the pcpo command after --")
    a = p.parse_args(argv)
    rest = a.args[1:] if a.args[:1] == ["--"] else a.args
    try:
        endpoint, rid = rendezvous()
    except ResourceError as e:
        print(f"pcpo.launch: {e}", file=sys.stderr)
        return 2
    cmd = torchrun_argv(a.nnodes, a.nproc_per_node, endpoint, rid) + rest
    node = os.environ.get("SLURM_NODEID", "?")
    print(f"pcpo.launch: node {node} of {a.nnodes}: torchrun agent with {a.nproc_per_node} processes, "
          f"c10d rendezvous {endpoint} id {rid}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
