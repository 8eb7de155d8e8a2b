"""CPU run of ``benchmarks/fullscale_epoch.py``, the script ``benchmarks/gpu_check.sh`` runs on a GPU.

``--scale tiny`` goes through everything the GPU run does (pipeline folder with
marker-built random denoiser/VAE, the patched loader, the trainer, two epochs, the
model-only timing, freeing between algorithms) with tiny versions of the same
classes; ``--meta-check`` builds the REAL SD1.5 UNet and FLUX.1-dev transformer on
the meta device through the adapters and runs one forward + decode there with the
real text-encoder widths.

The two training command lines run in this process (``main(argv)``: the imports are
paid once, which keeps the test fast on a loaded 2-core machine); meanwhile the
command line runs in a fresh process from another folder (``--no-train``: arguments,
imports, summary).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# every test here trains or samples with the tiny models (a trainer, a CLI subprocess or a rollout):
# seconds to minutes each on 2 cores, so they run in the full suite, not in the fast tier
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "fullscale_epoch.py"

RUNS = {
    # as benchmarks/gpu_check.sh runs it: each algorithm with the rollout's and with recomputed old log-probs
    "sd15": ["--model", "sd15", "--scale", "tiny", "--algorithms", "ddpo", "pcpo-ddpo", "--meta-check",
             "--old-logprobs", "rollout", "recompute"],
    "flux": ["--model", "flux", "--scale", "tiny", "--algorithms", "dancegrpo", "--meta-check"],
}


def _load_script():
    spec = importlib.util.spec_from_file_location("fullscale_epoch_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The command-line run, started first so that it overlaps the in-process runs (two cores)."""
    tmp = tmp_path_factory.mktemp("fullscale_epoch_cli")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    p = subprocess.Popen([sys.executable, str(SCRIPT), "--model", "flux", "--scale", "real", "--no-train",
                          "--out", str(tmp / "w"), "--json", str(tmp / "s.json")],
                         cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield p, tmp
    if p.poll() is None:
        p.kill()
        p.communicate()


@pytest.fixture(scope="module")
def summaries(tmp_path_factory, cli_run):
    root = tmp_path_factory.mktemp("fullscale_epoch")
    mod = _load_script()
    threads = torch.get_num_threads()
    out = {}
    try:
        for name, args in RUNS.items():
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = mod.main([*args, "--device", "cpu", "--out", str(root / name),
                                 "--json", str(root / f"{name}.json")])
            stdout = buf.getvalue()
            assert code == 0, f"{name}: exit {code}\n{stdout[-4000:]}"
            lines = [ln for ln in stdout.splitlines() if ln.strip()]
            summary = json.loads(lines[-1])  # the last line is the summary
            assert summary == json.loads((root / f"{name}.json").read_text())
            out[name] = (summary, stdout)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name,runs", [
    ("sd15", [("ddpo", "rollout"), ("ddpo", "recompute"), ("pcpo-ddpo", "rollout"), ("pcpo-ddpo", "recompute")]),
    ("flux", [("dancegrpo", "auto")])])
def test_tiny_epochs(summaries, name, runs):
    summary, stdout = summaries[name]
    assert summary["model"] == name and summary["scale"] == "tiny" and summary["device"] == "cpu"
    assert [(r["algorithm"], r["old_logprobs"]) for r in summary["results"]] == runs
    for r in summary["results"]:
        assert r["status"] == "ok", r
        for k in ("seconds_per_epoch", "rollout_s", "train_s", "model_only_s", "overhead", "warmup_epoch_s"):
            assert r[k] is not None and math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert r["logratio_first_max"] < 1e-5 and r["logratio_ok"], r
        assert r["finite"] and r["grad_norm"] > 0, r
        assert r["freed"], "the trainer's denoiser was still alive after the algorithm"
        assert r["peak_gpu_gib"] is None
        assert f"RESULT {name} {r['algorithm']} [{r['old_logprobs']}]: " in stdout
        # float32 on the CPU: auto does not recompute; a recomputing run reports its pass's cost
        assert r["recomputed"] == (r["old_logprobs"] == "recompute")
        if r["recomputed"]:
            assert r["logratio_first_max"] == 0.0 and r["recompute_s"] > 0 and r["recompute_cost"] > 1.0, r
            assert "x the training phase" in stdout
        else:
            assert r["recompute_cost"] is None and r["rollout_mismatch_max"] == r["logratio_first_max"], r


@pytest.mark.parametrize("name,params", [("sd15", 859_520_964), ("flux", 11_901_408_320)])
def test_real_configs_construct_on_meta(summaries, name, params):
    mc = summaries[name][0]["meta_check"]
    assert mc["ok"], mc
    assert mc["denoiser_params"] == params
    assert mc["image_shape"] == [2, 3, 512, 512] and mc["forward_shape"] == [2, *mc["latent_shape"]]
    assert mc["lora_params"] > 0
    if name == "sd15":
        assert mc["denoiser_class"] == "UNet2DConditionModel" and mc["latent_shape"] == [4, 64, 64]
        assert mc["cond_shapes"] == {"encoder_hidden_states": [2, 77, 768]}
    else:
        assert mc["denoiser_class"] == "FluxTransformer2DModel" and mc["latent_shape"] == [1024, 64]
        assert mc["cond_shapes"] == {"encoder_hidden_states": [2, 64, 4096], "pooled_projections": [2, 768]}


def test_command_line(cli_run):
    """A fresh process from another folder, no PYTHONPATH: the script finds the package, prints its summary."""
    p, tmp = cli_run
    try:
        stdout, stderr = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
        stdout, stderr = p.communicate()
    assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
    s = json.loads(stdout.strip().splitlines()[-1])
    assert s == json.loads((tmp / "s.json").read_text())
    assert s["model"] == "flux" and s["scale"] == "real" and s["results"] == []


def test_time_budget_skips(summaries, tmp_path):
    """--time-budget 0: every algorithm is skipped ("skipped (budget)"), the summary still comes out, exit 0."""
    mod = sys.modules["fullscale_epoch_under_test"]
    threads = torch.get_num_threads()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            code = mod.main(["--model", "flux", "--scale", "tiny", "--device", "cpu", "--time-budget", "0",
                             "--out", str(tmp_path / "w"), "--json", str(tmp_path / "s.json")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert [r["algorithm"] for r in s["results"]] == ["dancegrpo", "pcpo-dancegrpo", "flow_grpo", "pcpo-flow_grpo"]
    assert [r["status"] for r in s["results"]] == ["skipped (budget)"] * 4
    assert "RESULT flux flow_grpo [auto]: skipped (budget)" in buf.getvalue()


def test_forward_consistency_bisection_on_cpu(tmp_path):
    """``benchmarks/forward_consistency.py`` (the GPU check's bisection of a first-step log-ratio
    mismatch) on the tiny SD1.5 classes: every variant is reported, and on a CPU the training
    forward (train mode, autograd, gradient checkpointing, mixed timesteps) equals the rollout's
    bit for bit; only a different batch size may move the prediction, and then by float32 noise."""
    from benchmarks import forward_consistency as fc

    out = tmp_path / "fc.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert fc.main(["--model", "sd15", "--scale", "tiny", "--out", str(tmp_path / "w"),
                        "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    res = {r["variant"]: r for r in summary["results"]}
    assert list(res) == list(fc.VARIANTS)
    assert summary["guidance_scale"] > 1 and summary["micro_batch"] == 4 and len(summary["steps_checked"]) == 3
    for name in ("train_mode", "autograd", "training", "training_math_sdpa", "training_no_cudnn", "mixed_timesteps"):
        assert res[name]["max_abs_pred_diff"] == 0.0 and res[name]["max_abs_log_ratio"] == 0.0, res[name]
    for name in ("batch_double", "batch_single"):  # other GEMM shapes: a few ulp at most
        assert res[name]["max_abs_log_ratio"] < 1e-4, res[name]
    assert buf.getvalue().count("CONSISTENCY sd15") == len(fc.VARIANTS)
