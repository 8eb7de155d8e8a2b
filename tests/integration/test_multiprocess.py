"""Two real CPU processes (torchrun, gloo) run `pcpo train`: they start, split the
batch in whole groups, see the same rollouts, rewards and advantages as one process
with the same global batch and seed, end one epoch with the same parameters, write
one checkpoint, and resume after a kill to the same numbers."""
import csv
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ROOT, adam_step_atol, pcpo_cmd, reordered_sum_tol
from tests.integration.test_trainer import TIME_COLS, make_config

pytestmark = pytest.mark.slow


def torchrun(n: int, *args: str) -> list[str]:
    """The command the workflow's train_launcher builds for resources.train.gpus = n on one node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "-m", "pcpo.cli", *args]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _train(cmd, out, env=None):
    r = subprocess.run(cmd + ["--out", str(out), "--no-progress"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600)
    return r


def assert_same_weights(dir_a, dir_b, name="trainable", epoch=0, **tol):
    """The ``name`` weights of two runs' checkpoints at ``epoch``: the same keys, values within ``tol``."""
    f = f"checkpoints/epoch_{epoch:06d}/{name}.safetensors"
    a, b = load_file(str(dir_a / f)), load_file(str(dir_b / f))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol)
    return a


def kill_and_resume(cmd, tmp_path, epochs: int) -> None:
    """Run ``cmd`` through, then again killed after epoch 1 and restarted: both end with the
    same metrics, timings aside."""
    full = _train(cmd, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _train(cmd, tmp_path / "killed", env={"PCPO_FAULT_AFTER_EPOCH": "1"})
    assert killed.returncode != 0
    again = _train(cmd, tmp_path / "killed")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    a, b = _rows(tmp_path / "full" / "metrics.csv"), _rows(tmp_path / "killed" / "metrics.csv")
    assert len(a) == len(b) == epochs
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in TIME_COLS | {"time_recompute"}} == \
               {k: v for k, v in rb.items() if k not in TIME_COLS | {"time_recompute"}}


# 8 samples (4 groups of 2); one optimizer step per epoch on either world size, every step trained
SAME = ["--set", "train.timestep_fraction=1.0", "--set", "train.device=cpu"]
#: products summed into one element of a convolution weight's gradient in the runs above: samples x
#: trained steps (make_config samples 4) x the 16 x 16 latent positions.  One and two processes, and
#: other kernel sets, add them in other orders (accumulation, all-reduce, the rollout's batch shape).
#: Measured on an AMD EPYC: the gradient norms of 1 and 2 processes differ by 1.2e-7 relative with
#: AVX-512 kernels and by 1.3e-6 with ATEN_CPU_CAPABILITY=default and SSE4 oneDNN/MKL kernels, so a
#: bound over the samples and steps alone (3.7e-6) would be too close to pass on every CPU.
GRADIENT_TERMS = 8 * 4 * 16 * 16


def assert_same_update(r1: dict, r2: dict, dir_a, dir_b, lr: float, names=("trainable",), epoch=0) -> None:
    """One and two processes took the same optimizer steps, judged before and after the step.

    Before: the logged gradient norm (after the all-reduce, before clipping) agrees within the
    float32 bound for reordering a sum of GRADIENT_TERMS contributions: the processes add the same
    per-sample gradients in another order (accumulation, then the all-reduce), which is all that
    may differ.  After: every weight agrees within a tenth of an Adam step per optimizer step,
    since Adam turns a rounding-level gradient difference into a move of at most a fraction of lr
    (see tests.helpers.adam_step_atol); no relative tolerance, the difference is in units of lr."""
    g1, g2 = float(r1["grad_norm"]), float(r2["grad_norm"])
    assert g1 > 0 and g2 == pytest.approx(g1, rel=reordered_sum_tol(GRADIENT_TERMS), abs=0), (g1, g2)
    steps = int(r1["optimizer_steps"])
    for name in names:
        assert_same_weights(dir_a, dir_b, name, epoch, rtol=0, atol=adam_step_atol(lr, steps))


@pytest.mark.parametrize("algorithm,family", [("ddpo", "eps"), ("dancegrpo", "flow"), ("flow_grpo", "flow"),
                                              ("pcpo-dancegrpo", "flow")])
def test_two_processes_match_one(tmp_path, tiny_models, algorithm, family):
    cfg = make_config(tmp_path, tiny_models[family], family, epochs=1, prompts_per_epoch=4, group_size=2,
                      train_batch_size=2)
    base = ["train", "--config", str(cfg), "--algorithm", algorithm, "--seed", "1", *SAME]
    one = _train(pcpo_cmd(*base, "--set", "train.gradient_accumulation=4"), tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(torchrun(2, *base, "--set", "train.gradient_accumulation=2"), tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "over 2 processes (4 each)" in two.stdout and "8 samples per optimizer step" in two.stdout
    r1, r2 = _rows(tmp_path / "one" / "metrics.csv"), _rows(tmp_path / "two" / "metrics.csv")
    # both runs draw every image from the same per-sample noise with the same weights, and score
    # uint8 images: a float32 rounding difference in the rollout changes a reward only if a pixel
    # sits within ~1e-6 of a quantisation boundary, so rewards and advantages agree to print precision
    for k in ("reward_mean", "reward_std", "reward_min", "reward_max", "adv_abs_mean", "samples"):
        assert float(r1[0][k]) == pytest.approx(float(r2[0][k]), rel=1e-6, abs=1e-7), k
    assert r1[0]["optimizer_steps"] == r2[0]["optimizer_steps"] == "1"
    # not the per-process "loss" column: each process logs the mean of its own samples' losses
    assert_same_update(r1[0], r2[0], tmp_path / "one", tmp_path / "two", lr=1e-3)  # make_config's lr
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["epoch_000000", "latest"]
    # only the main process writes TensorBoard events (train.tensorboard is on by default)
    assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_two_process_kill_resumes_to_the_same_numbers(tmp_path, tiny_models):
    cfg = make_config(tmp_path, tiny_models["flow"], "flow", epochs=3, prompts_per_epoch=4, group_size=2,
                      train_batch_size=2, gradient_accumulation=1, checkpoint_every=1)
    kill_and_resume(torchrun(2, "train", "--config", str(cfg), "--algorithm", "dancegrpo", "--seed", "2", *SAME),
                    tmp_path, epochs=3)


def test_workflow_launcher_starts_n_processes():
    """The workflow's train rule starts what pcpo.launch.train_launcher builds: torchrun with one
    process per GPU on one node (the command this file's tests run)."""
    from pcpo.launch import train_launcher

    cmd = train_launcher({"train": {"gpus": 2}}, python=sys.executable)
    assert cmd.split() == torchrun(2)
    assert "train_launcher(config.get(\"resources\"))" in (ROOT / "workflow/rules/common.smk").read_text()
