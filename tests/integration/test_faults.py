"""The fault battery through the real CLI: every I/O fault and bad input ends a `pcpo` command
with a non-zero exit and exactly one stderr line naming the file or field (no traceback, no
library noise), and leaves nothing half-written.  Also: one writer per run folder (a second
`pcpo train` on a busy folder fails at once), SIGTERM logs where the run resumes, and runs
whose advantages are zero by construction are refused before any model loads."""
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, pcpo_cmd
from tests.integration.test_trainer import make_config, read_rows

pytestmark = pytest.mark.usefixtures("one_thread")

NO_MODEL = "/nonexistent/pcpo-model"  # a model path that would fail if anything tried to load it


def _config(tmp: Path, model: str, **train) -> Path:
    """test_trainer's tiny eps config, each call in a file of its own."""
    return make_config(tmp, model, "eps", name=f"cfg_{len(list(tmp.glob('cfg_*')))}.yaml", **train)


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    for k in ("PCPO_FAULT_AFTER_EPOCH", "PCPO_FAULT_SIGNAL", "PCPO_FAULT_DISK_FULL"):
        if k not in extra:
            env.pop(k, None)
    return env


def _cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(pcpo_cmd(*args), capture_output=True, text=True, cwd=ROOT, env=env or _env(),
                          timeout=timeout)


def _train_args(cfg: Path, out: Path, *sets: str, algorithm: str = "dancegrpo", seed: int = 0) -> list[str]:
    args = ["train", "--config", str(cfg), "--algorithm", algorithm, "--seed", str(seed), "--out", str(out),
            "--no-progress"]
    for s in sets:
        args += ["--set", s]
    return args


def one_line(r: subprocess.CompletedProcess, *needles: str, progress_log: bool = False) -> str:
    """The command failed with exactly one non-empty stderr line holding every needle (with
    ``progress_log``, a run that had got going may have logged its INFO progress lines before)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if progress_log:
        lines = [ln for ln in lines if not re.match(r"^\d\d:\d\d:\d\d INFO pcpo\.", ln)]
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1, r.stderr[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _nothing_written(out: Path) -> None:
    """A refused run leaves at most its (released, empty) lock file."""
    if out.exists():
        left = sorted(p.name for p in out.iterdir())
        assert left in ([], [".lock"]), left
        if left:
            assert (out / ".lock").read_text() == ""


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models):
    tmp = tmp_path_factory.mktemp("faults")
    return {"tmp": tmp, "model": tiny_models["eps"], "cfg": _config(tmp, tiny_models["eps"])}


# ------------------------------------------------------------------ bad inputs, before any model loads

def test_malformed_set_yaml(world, tmp_path):
    out = tmp_path / "o"
    r = _cli(*_train_args(world["cfg"], out, "train.lr=[1"))
    one_line(r, "--set train.lr", "not valid YAML", "quote")
    _nothing_written(out)


def test_unknown_reward_option_names_the_accepted_ones(world, tmp_path):
    out = tmp_path / "o"
    r = _cli(*_train_args(world["cfg"], out, "reward.options.qualty=80", f"model.path={NO_MODEL}"))
    one_line(r, "reward.options.qualty", "jpeg_incompressibility", "accepts quality")
    _nothing_written(out)


def test_binary_prompts_file(world, tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    out = tmp_path / "o"
    r = _cli(*_train_args(world["cfg"], out, "prompts.source=file", f"prompts.options.path={bad}",
                          f"model.path={NO_MODEL}"))
    one_line(r, "prompts.options.path", str(bad), "UTF-8")
    _nothing_written(out)


def test_prompts_the_reward_cannot_score_fail_before_the_rollout(world, tmp_path):
    clf = tmp_path / "clf"  # enough for the reward factory; never loaded because the check comes first
    clf.mkdir()
    (clf / "config.json").write_text("{}")
    out = tmp_path / "o"
    r = _cli(*_train_args(world["cfg"], out, "reward.name=digit_alignment", f"reward.options.classifier_path={clf}",
                          "prompts.source=list", "prompts.options.prompts=[a red car, a blue boat]",
                          f"model.path={NO_MODEL}"))
    one_line(r, "prompts:", "digit_alignment", "a red car")
    _nothing_written(out)


def test_group_of_one_with_group_advantages_is_refused(world, tmp_path):
    out = tmp_path / "o"
    r = _cli(*_train_args(world["cfg"], out, "train.group_size=1", "train.train_batch_size=1",
                          f"model.path={NO_MODEL}"))
    one_line(r, "train.group_size", "set train.group_size >= 2")
    _nothing_written(out)


def test_unknown_algorithm_for_show_lists_close_matches():
    r = _cli("algorithms", "--show", "pcpo")
    line = one_line(r, "--show", "'pcpo'", "did you mean", "pcpo-")
    assert r.returncode == 2 and "pcpo algorithms" in line


def test_read_only_out_fails_before_the_model_loads(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount is the only real test
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
    else:
        ro.chmod(0o555)
    try:
        out = ro / "run"
        r = _cli(*_train_args(world["cfg"], out, f"model.path={NO_MODEL}"))
        line = one_line(r, "--out", str(out), "choose a writable folder")
        assert "Read-only file system" in line or "Permission denied" in line
        assert not out.exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=True)
        else:
            ro.chmod(0o755)


def test_truncated_base_weights(world, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    w = model / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-5000])
    out = tmp_path / "o"
    r = _cli(*_train_args(world["cfg"], out, f"model.path={model}"))
    one_line(r, "model.path", str(w), "truncated", "fetch the model again")
    _nothing_written(out)


# ------------------------------------------------------------------ faults while running

def _no_half_written(out: Path) -> None:
    ck = out / "checkpoints"
    if ck.is_dir():
        assert not [d.name for d in ck.iterdir() if ".tmp" in d.name], list(ck.iterdir())
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_disk_full_while_saving_is_one_line_and_the_run_resumes(world, tmp_path):
    """An ENOSPC injected at the second checkpoint's first file: one line naming the file and the
    checkpoint the rerun resumes from; no temporary folder left; the rerun finishes the run."""
    from pcpo import checkpoint as ck

    out = tmp_path / "run"
    r = _cli(*_train_args(world["cfg"], out), env=_env(PCPO_FAULT_DISK_FULL="epoch_000001"))
    one_line(r, "No space left on device while writing", str(out / "checkpoints" / "epoch_000001"),
             "free space and rerun", f"resumes from {out / 'checkpoints' / 'epoch_000000'}", progress_log=True)
    _no_half_written(out)
    assert sorted(d.name for d in (out / "checkpoints").iterdir()) == ["epoch_000000", "latest"]
    assert not (out / "DONE").exists()
    again = _cli(*_train_args(world["cfg"], out))
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    assert [int(x["epoch"]) for x in read_rows(out / "metrics.csv")] == [0, 1]
    ck.verify_checkpoint(out / "checkpoints" / "epoch_000001")


@pytest.mark.slow
def test_a_really_full_disk_is_one_line(world, tmp_path):
    """The same on a real full file system: --out on a tmpfs too small for a checkpoint (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected-ENOSPC test covers the path")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "run"
        r = _cli(*_train_args(world["cfg"], out))
        one_line(r, "No space left on device while writing", str(out), "free space and rerun", progress_log=True)
        _no_half_written(out)
        assert not (out / "checkpoints" / "latest").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.slow
def test_sigterm_logs_where_it_resumes_and_the_rerun_finishes(world, tmp_path):
    out = tmp_path / "run"
    r = _cli(*_train_args(world["cfg"], out),
             env=_env(PCPO_FAULT_AFTER_EPOCH="0", PCPO_FAULT_SIGNAL="SIGTERM"))
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert "Traceback" not in r.stderr
    stop = [ln for ln in r.stderr.splitlines() if "stopped by SIGTERM" in ln]
    assert len(stop) == 1 and f"resume from {out / 'checkpoints' / 'epoch_000000'} (epoch 0)" in stop[0], r.stderr
    _no_half_written(out)
    assert (out / ".lock").read_text() == ""  # released
    again = _cli(*_train_args(world["cfg"], out))
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    assert [int(x["epoch"]) for x in read_rows(out / "metrics.csv")] == [0, 1]


@pytest.mark.slow
def test_second_writer_fails_at_once_and_the_first_finishes_intact(world, tmp_path):
    """ddpo seed 0 and pcpo-ddpo seed 1 on one --out (the issue's pair): the second fails in one
    line naming the first's PID and host; the first's checkpoints, config and metrics are its own."""
    from pcpo import checkpoint as ck

    out = tmp_path / "run"
    first = subprocess.Popen(pcpo_cmd(*_train_args(world["cfg"], out, algorithm="ddpo", seed=0)), cwd=ROOT,
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".lock"
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(lock.read_text() or "{}").get("pid") == first.pid:
                    break
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock held, so the overlap is certain
        try:
            second = _cli(*_train_args(world["cfg"], out, algorithm="pcpo-ddpo", seed=1), timeout=600)
        finally:
            first.send_signal(signal.SIGCONT)
        one_line(second, "--out", str(out), f"PID {first.pid}", f"host {socket.gethostname()}")
        _, err = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert json.loads((out / "config.json").read_text())["algorithm"] == "ddpo"
    rows = read_rows(out / "metrics.csv")
    assert [int(x["epoch"]) for x in rows] == [0, 1]
    ckpts = ck.list_checkpoints(out)
    assert [d.name for d in ckpts] == ["epoch_000000", "epoch_000001"]
    for d in ckpts:
        meta, state, _, _ = ck.verify_checkpoint(d)
        assert (meta["algorithm"], meta["seed"]) == ("ddpo", 0)
        assert [r["epoch"] for r in state["rows"]] == list(range(meta["epoch"] + 1))
    assert (out / "DONE").is_file() and (out / "checkpoints" / "latest").read_text().strip() == "epoch_000001"


# ------------------------------------------------------------------ no silent no-op

def test_zero_advantage_rules_of_the_built_in_estimators():
    from pcpo.advantages import BatchShape, zero_advantage_reason

    def shape(g, groups=4, draw="per_group", epochs=10, prompts=None):
        return BatchShape("x", g, groups, draw, epochs, prompts)

    grp = {"eps": 1e-8, "unbiased": True}
    assert "train.group_size" in zero_advantage_reason("group", grp, shape(1))
    assert zero_advantage_reason("group", grp, shape(2)) is None
    assert "prompt_draw: per_sample" in zero_advantage_reason("group", grp, shape(4, draw="per_sample"))
    # Flow-GRPO: the per-prompt mean of this epoch's images (no history, min_count 1)
    fg = {"buffer_size": None, "min_count": 1, "history": False, "global_std": True}
    assert "train.group_size" in zero_advantage_reason("per_prompt", fg, shape(1))
    assert zero_advantage_reason("per_prompt", fg, shape(2)) is None
    assert zero_advantage_reason("per_prompt", fg, shape(1, prompts=1)) is None  # one prompt: all compared
    # DDPO (the paper's group_size 1 configs): batch statistics and a history across epochs
    ddpo = {"buffer_size": 32, "min_count": 16}
    assert zero_advantage_reason("per_prompt", ddpo, shape(1, groups=256, draw="per_sample")) is None
    assert "1 sample per epoch" in zero_advantage_reason("per_prompt", {**ddpo, "history": False},
                                                         shape(1, groups=1, draw="per_sample"))


def test_a_registered_estimator_declares_its_minimum_group(world, tmp_path):
    import torch

    from pcpo.advantages import ADVANTAGE_CHECKS, ADVANTAGES, register_advantage
    from pcpo.algorithms import FRAMEWORKS, Framework, register_framework
    from pcpo.config import ConfigError, load_config
    from pcpo.trainer import Trainer

    @register_advantage("zz_rank3", min_group_size=3)
    def rank3():
        return lambda prompts, rewards, gids: torch.zeros_like(rewards)

    try:
        register_framework(Framework(name="zz_needs3", description="test", samplers={"ddim": "ddim"},
                                     advantage="zz_rank3"))
        cfg = load_config(world["cfg"], {"model": {"path": NO_MODEL}})
        with pytest.raises(ConfigError, match=r"^train\.group_size: 2 image.*at least 3"):
            Trainer(cfg, "zz_needs3", 0, tmp_path / "o", progress=False)
        _nothing_written(tmp_path / "o")
    finally:
        ADVANTAGE_CHECKS.pop("zz_rank3", None)
        ADVANTAGES._items.pop("zz_rank3", None)
        FRAMEWORKS._items.pop("zz_needs3", None)


def test_a_run_that_never_had_a_gradient_says_so(world, tmp_path, caplog):
    import torch

    from pcpo.config import load_config
    from pcpo.rewards import REWARDS
    from pcpo.trainer import Trainer

    REWARDS.register("zz_constant", lambda **_: (lambda images, prompts, metadata: (torch.ones(len(images)), {})),
                     overwrite=True)
    cfg = load_config(world["cfg"], {"reward": {"name": "zz_constant"}})
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="pcpo"):
        Trainer(cfg, "dancegrpo", 0, out, progress=False).run()
    rows = read_rows(out / "metrics.csv")
    assert [r["zero_grad"] for r in rows] == ["1", "1"]
    assert json.loads((out / "DONE").read_text()) == {"epochs": 2, "zero_grad_epochs": 2}
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("every one of the 2 epochs had a zero gradient" in m for m in warn), warn


def test_disk_full_is_recognised_through_the_libraries_wrappers():
    from pcpo.utils import disk_full

    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    except RuntimeError as e:
        assert disk_full(e)
    assert disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not disk_full(RuntimeError("unexpected pos 576 vs 534"))


def test_output_lock_for_sample_and_evaluate_outputs(tmp_path):
    """The one-call lock `pcpo sample`/`pcpo evaluate` take on their --out: a second holder fails
    naming the first's PID and host; it is free again once the first exits, however it exits."""
    import sys

    from pcpo.runlock import RunLockedError, lock_output, release

    target = tmp_path / "samples"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pcpo.runlock import lock_output; "
                               f"lock_output({str(target)!r}); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"^--out: {re.escape(str(target))} is in use by PID {holder.pid} "
                                                 rf"on host {re.escape(socket.gethostname())}"):
            lock_output(target)
    finally:
        holder.kill()
        holder.wait()
    lk = lock_output(target)  # the kernel dropped the dead holder's lock
    assert json.loads((tmp_path / ".samples.lock").read_text())["pid"] == os.getpid()
    release(lk)
    assert (tmp_path / ".samples.lock").read_text() == ""


def test_a_reward_declared_constant_is_refused_before_the_model_loads(world, tmp_path):
    import torch

    from pcpo.config import ConfigError, load_config
    from pcpo.rewards import REWARDS
    from pcpo.trainer import Trainer

    def factory(**_):
        def fn(images, prompts, metadata):
            return torch.zeros(len(images)), {}
        fn.constant = True
        return fn

    REWARDS.register("zz_declared_constant", factory, overwrite=True)
    cfg = load_config(world["cfg"], {"reward": {"name": "zz_declared_constant"}, "model": {"path": NO_MODEL}})
    with pytest.raises(ConfigError, match=r"^reward\.name: the reward 'zz_declared_constant'.*every advantage would be 0"):
        Trainer(cfg, "dancegrpo", 0, tmp_path / "o", progress=False)
    _nothing_written(tmp_path / "o")
