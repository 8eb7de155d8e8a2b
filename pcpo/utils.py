"""Small shared helpers: atomic file output, JSON, seeding."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    Readers never see a half-written file; a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        inject_disk_full(path)
        fsync_path(tmp)  # the data reach the disk before the name does (a power cut leaves old or new)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if disk_full(e) and not (isinstance(e, OSError) and e.filename == str(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a folder
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


#: fault injection for the tests: a file whose path contains this string "runs out of space"
#: when written (checkpoint files and atomic writes); unset in normal use
FAULT_DISK_FULL_ENV = "PCPO_FAULT_DISK_FULL"


def inject_disk_full(path: str | os.PathLike) -> None:
    what = os.environ.get(FAULT_DISK_FULL_ENV)
    if what and what in str(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a full disk or quota: an OSError
    ENOSPC/EDQUOT, torch.save's RuntimeError over one, or safetensors' "os error 28"."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        msg = str(err)
        if "No space left on device" in msg or "os error 28" in msg or "Disk quota exceeded" in msg:
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_torch_save(obj, path) -> None:
    with atomic_path(path) as tmp:
        torch_save(obj, tmp)


def torch_save(obj, path) -> None:
    """``torch.save`` through a Python file, so that a full disk surfaces as the OSError (ENOSPC)
    it is (saving to a path name reports only "unexpected pos")."""
    inject_disk_full(path)
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
