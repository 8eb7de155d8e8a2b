"""FSDP (``train.sharding: fsdp``) on two real CPU processes (torchrun, gloo): a full
fine-tune sharded over two ranks ends an epoch with the parameters, EMA and metrics of
an unsharded single process with the same global batch, writes one whole-weight
checkpoint that loads for sampling like any other, and resumes after a kill."""
import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_multiprocess import SAME, _rows, _train, assert_same_update, kill_and_resume, torchrun
from tests.integration.test_trainer import make_config
from tests.helpers import pcpo_cmd

pytestmark = pytest.mark.slow

LR = 1e-4
FULL = [*SAME, "--set", "lora.enabled=false", "--set", f"train.lr={LR}"]


@pytest.mark.parametrize("algorithm", ["dancegrpo", "flow_grpo"])
def test_fsdp_two_processes_match_one_unsharded(tmp_path, tiny_models, algorithm):
    cfg = make_config(tmp_path, tiny_models["flow"], "flow", epochs=1, prompts_per_epoch=4, group_size=2,
                      train_batch_size=2)
    base = ["train", "--config", str(cfg), "--algorithm", algorithm, "--seed", "3", *FULL]
    one = _train(pcpo_cmd(*base, "--set", "train.gradient_accumulation=4"), tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(torchrun(2, *base, "--set", "train.gradient_accumulation=2", "--set", "train.sharding=fsdp"),
                 tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "denoiser sharded (FSDP)" in two.stdout and "over 2 processes (4 each)" in two.stdout
    r1, r2 = _rows(tmp_path / "one" / "metrics.csv"), _rows(tmp_path / "two" / "metrics.csv")
    # rewards and advantages: the same images (see test_two_processes_match_one); the loss of these
    # group-relative runs is ~0 on every process (each holds whole groups, whose advantages sum to 0)
    for k in ("reward_mean", "reward_std", "adv_abs_mean", "loss", "clipfrac"):
        assert float(r1[0][k]) == pytest.approx(float(r2[0][k]), rel=1e-4, abs=1e-6), k
    # the gradient before the step (norm within the reordered-sum bound) and every weight after it
    # (within a tenth of an Adam step); the EMA is a convex mix of weights, so the same bound holds
    names = ["trainable"] + (["ema"] if algorithm == "flow_grpo" else [])
    assert_same_update(r1[0], r2[0], tmp_path / "one", tmp_path / "two", lr=LR, names=names)
    w = load_file(str(tmp_path / "two" / "checkpoints" / "epoch_000000" / "trainable.safetensors"))
    assert len(w) > 10  # the whole UNet, under its own names
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["epoch_000000", "latest"]


def test_fsdp_kill_resumes_and_the_checkpoint_samples(tmp_path, tiny_models):
    from pcpo.checkpoint import load_policy

    cfg = make_config(tmp_path, tiny_models["flow"], "flow", epochs=3, prompts_per_epoch=4, group_size=2,
                      train_batch_size=2, gradient_accumulation=1, checkpoint_every=1)
    base = torchrun(2, "train", "--config", str(cfg), "--algorithm", "flow_grpo", "--seed", "4", *FULL,
                    "--set", "train.sharding=fsdp")
    kill_and_resume(base, tmp_path, epochs=3)
    last = tmp_path / "full" / "checkpoints" / "epoch_000002"
    pol = load_policy(last, use_ema=True)
    w = load_file(str(last / "ema.safetensors"))
    got = pol.denoiser.state_dict()
    assert all(torch.equal(got[k], w[k]) for k in w)
    # an FSDP checkpoint is not resumed unsharded: the optimizer state is laid out by name
    one = _train(pcpo_cmd("train", "--config", str(cfg), "--algorithm", "flow_grpo", "--seed", "4", *FULL,
                          "--set", "train.epochs=4"), tmp_path / "full")
    assert one.returncode != 0 and "train.sharding: fsdp" in one.stderr


def test_fsdp_refuses_lora(tmp_path, tiny_models):
    cfg = make_config(tmp_path, tiny_models["flow"], "flow")
    r = _train(pcpo_cmd("train", "--config", str(cfg), "--algorithm", "dancegrpo", "--seed", "0", *SAME,
                        "--set", "train.sharding=fsdp"), tmp_path / "x")
    assert r.returncode != 0 and "train.sharding: fsdp shards a full fine-tune" in r.stderr
    assert "Traceback" not in r.stderr
