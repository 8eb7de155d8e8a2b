"""One writer per output: an exclusive ``fcntl.flock`` held for the whole command.

Two jobs writing into one run folder (a Slurm requeue beside a still-running job, a
retry, a job that outlived its killed Snakemake) would interleave their checkpoints
and logs silently.  Every ``pcpo`` command that writes a run folder or an output
first takes the folder's lock:

* ``pcpo train --out DIR`` locks ``DIR/.lock``;
* an output that is replaced as a whole (``pcpo sample --out DIR``, ``pcpo evaluate
  --out FILE.json``) locks the sibling ``.NAME.lock``, which survives the rename.

The lock is the kernel's: it is released when the process exits however it exits
(SIGKILL included), so a stale lock file never blocks a rerun.  Its content says
who holds it (PID, host, start time, command) for the one-line error of a second
writer and for a person checking that no job of a killed run is still alive.  On a
network file system ``flock`` locks only within one host unless the file system
supports it (NFSv4, Lustre with ``flock`` mounted); the content still names the host.

Usage (one call, held until the process exits)::

    from pcpo.runlock import lock_output
    lock_output(args.out)                 # raises RunLockedError naming the holder
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

_HELD: dict[str, "RunLock"] = {}


class RunLockedError(ValueError):
    """Another process holds the lock; the message names its PID and host.  (A ValueError
    with ``user_facing`` so ``pcpo`` prints it in one line.)"""

    user_facing = True


class OutputNotWritableError(ValueError):
    """The output folder cannot be written (read-only file system, permissions)."""

    user_facing = True


def lock_path_for(path: str | os.PathLike, inside: bool) -> Path:
    p = Path(path)
    return p / ".lock" if inside else p.parent / f".{p.name}.lock"


def describe_holder(lock_file: Path) -> str:
    """``PID 123 on host node7 (since 2026-12-07 20:01:02 UTC, pcpo train ...)`` from a lock file."""
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not written its PID yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("time", 0)))
    return f"PID {info.get('pid', '?')} on host {info.get('host', '?')} (since {since})"


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``lock_file``."""

    def __init__(self, lock_file: str | os.PathLike, field: str = "--out", target: str | os.PathLike | None = None):
        self.file = Path(lock_file)
        self.field = field
        self.target = Path(target) if target is not None else self.file.parent
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise not_writable(self.target, e, self.field) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{self.field}: {self.target} is in use by {describe_holder(self.file)}; wait for that job to "
                    f"finish or stop it, or write to another folder (lock file {self.file})") from None
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                "command": " ".join(sys.argv)[:500]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise not_writable(self.target, e, self.field) from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            # the file stays (removing it would race with a waiting locker); emptied, it names no holder
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def not_writable(target: Path, err: OSError, field: str = "--out") -> OutputNotWritableError:
    why = os.strerror(err.errno) if err.errno else str(err)
    return OutputNotWritableError(f"{field}: cannot write to {target} ({why}); choose a writable folder")


def _hold(lock_file: Path, field: str, target: Path) -> RunLock:
    key = str(lock_file.resolve())
    if key in _HELD:  # this process already holds it (a second call in one process is a no-op)
        return _HELD[key]
    lk = RunLock(lock_file, field, target).acquire()
    _HELD[key] = lk
    return lk


def lock_run_folder(folder: str | os.PathLike, field: str = "--out") -> RunLock:
    """Lock ``folder/.lock`` (creating the folder) until this process exits or :func:`release`."""
    folder = Path(folder)
    return _hold(lock_path_for(folder, inside=True), field, folder)


def lock_output(path: str | os.PathLike, field: str = "--out") -> RunLock:
    """Lock the output ``path`` (a file or a folder replaced as a whole) through the sibling
    ``.NAME.lock`` until this process exits or :func:`release`."""
    path = Path(path)
    return _hold(lock_path_for(path, inside=False), field, path)


def release(path_or_lock) -> None:
    """Release a lock taken with :func:`lock_run_folder`/:func:`lock_output` in this process."""
    if isinstance(path_or_lock, RunLock):
        lk = path_or_lock
    else:
        p = Path(path_or_lock)
        lk = _HELD.get(str(lock_path_for(p, p.is_dir() and (p / ".lock").exists()).resolve()))
    if lk is None:
        return
    _HELD.pop(str(lk.file.resolve()), None)
    lk.release()


__all__ = ["RunLock", "RunLockedError", "OutputNotWritableError", "lock_run_folder", "lock_output", "release",
           "describe_holder", "lock_path_for"]
