"""A two-"node" training run: two torchrun agents, each started by the node-side command the
workflow's multi-node launcher builds (what srun runs once per node), meet in a c10d rendezvous
on 127.0.0.1 and train one process each (gloo). The run matches one process with the same
global batch and seed."""
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers import ROOT, pcpo_cmd
from tests.integration.test_multiprocess import SAME, _rows, _train, assert_same_weights
from tests.integration.test_trainer import make_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(nodes: int, procs: int) -> list[str]:
    """What srun starts on each node: the launcher's command after srun's own options."""
    from pcpo.launch import train_launcher

    argv = train_launcher({"train": {"gpus": procs, "nodes": nodes, "cpus": 1}}, python=sys.executable).split()
    assert argv[0] == "srun" and f"--nodes={nodes}" in argv and "--ntasks-per-node=1" in argv
    return argv[argv.index(sys.executable):]


def test_two_nodes_match_one_process(tmp_path, tiny_models):
    cfg = make_config(tmp_path, tiny_models["flow"], "flow", epochs=1, prompts_per_epoch=4, group_size=2,
                      train_batch_size=2)
    lr = float(yaml.safe_load(cfg.read_text())["train"]["lr"])
    base = ["train", "--config", str(cfg), "--algorithm", "dancegrpo", "--seed", "1", *SAME]
    one = _train(pcpo_cmd(*base, "--set", "train.gradient_accumulation=4"), tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]

    out = tmp_path / "two"
    cmd = node_command(2, 1) + base + ["--set", "train.gradient_accumulation=2", "--out", str(out), "--no-progress"]
    # what srun gives each task: the job id, the allocation's node list, the node's index; two names
    # of this machine stand in for two hosts, and the first of them hosts the rendezvous
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": str(4000 + os.getpid() % 1000),
           "SLURM_JOB_NODELIST": "127.0.0.1,localhost", "SLURM_NNODES": "2", "PCPO_RDZV_PORT": str(free_port())}
    t0 = time.time()
    agents = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "SLURM_NODEID": str(i)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        res = [a.communicate(timeout=600) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    print(f"two agents: {time.time() - t0:.1f} s")
    for a, (so, se) in zip(agents, res):
        assert a.returncode == 0, se[-3000:]
        assert "c10d rendezvous 127.0.0.1:" in se
    text = "".join(so + se for so, se in res)
    assert "over 2 processes (4 each)" in text and "8 samples per optimizer step" in text, text[-3000:]

    r1, r2 = _rows(tmp_path / "one" / "metrics.csv"), _rows(out / "metrics.csv")
    for k in ("reward_mean", "reward_std", "reward_min", "reward_max", "adv_abs_mean", "samples"):
        assert float(r1[0][k]) == pytest.approx(float(r2[0][k]), rel=1e-6, abs=1e-7), k
    assert r1[0]["optimizer_steps"] == r2[0]["optimizer_steps"] == "1"
    # one Adam step moves each weight by about lr: the runs agree to a thousandth of that step
    # (float32 rounding of the weights themselves is far below it)
    assert_same_weights(tmp_path / "one", out, rtol=0, atol=1e-3 * lr)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_000000", "latest"]
