"""A throwaway one-node Slurm cluster for tests (Debian 12, run as root).

`SlurmCluster.start()` brings up munge + slurmctld + slurmd on 127.0.0.1 and
`SlurmCluster.stop()` tears down exactly what `start()` brought up.

What it touches on the host:

* installs the Debian packages ``slurm-wlm`` and ``munge`` with apt-get when
  the Slurm/munge binaries are missing (set ``PCPO_SLURM_INSTALL=0`` to skip
  the test instead);
* creates ``/etc/munge/munge.key`` if there is none (left in place);
* writes ``/etc/slurm/slurm.conf`` only when no such file exists, or when the
  existing one carries our marker line (left over from an interrupted run).
  A slurm.conf written by anybody else means "real Slurm installation here":
  the cluster refuses to start (`ClusterUnavailable`, turned into a skip).
  The file has to sit at that fixed path because the executor plugin's job
  side drops ``SLURM_CONF`` from the environment. No cgroup.conf is needed:
  the config uses proctrack/linuxproc and task/none (no cgroups at all);
* writes ``/etc/slurm/gres.conf`` (same marker, removed with slurm.conf): the node advertises
  ``PCPO_SLURM_GPUS`` (default 2) GPUs backed by /dev/null, /dev/zero, ... so that jobs asking
  ``--gpus=N`` are scheduled; there is no CUDA device, and Slurm sets CUDA_VISIBLE_DEVICES only;
* keeps its state, spool, logs and pid files under ``PCPO_SLURM_STATE``
  (default ``/var/tmp/pcpo-slurm``).

Daemons are started in the foreground as children of this process, each in a
session of its own, and stopped by the pid recorded in their pid files. A
daemon left behind by an earlier, killed run of this helper is recognised by
our pid files and stopped before a new start. A munged that already works is
reused and never stopped.

Command line (used by scripts/slurm_local.sh)::

    python tests/slurm/cluster.py start|stop|status
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_PROFILE = REPO_ROOT / "profiles" / "slurm"
TEST_PROFILE = Path(__file__).resolve().parent / "profile"

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = SLURM_CONF.with_name("gres.conf")  # slurmd reads it next to slurm.conf
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET_DIR = Path("/run/munge")
MARKER = "# pcpo-test-cluster: written by tests/slurm/cluster.py, removed at teardown"

STATE_ROOT = Path(os.environ.get("PCPO_SLURM_STATE", "/var/tmp/pcpo-slurm"))
PACKAGES = ("slurm-wlm", "munge")
# binaries we need; all come from the two packages above
BINARIES = (
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
    "munged",
    "munge",
    "unmunge",
)
PARTITION = "debug"
CLUSTER_NAME = "pcpotest"
# The plugin only trusts `squeue` for status queries when MinJobAge is at
# least 3x its --slurm-init-seconds-before-status-checks (default 40 s);
# otherwise it silently falls back to `sacct`, which never sees jobs finish
# without slurmdbd.
MIN_JOB_AGE = 600
# The node advertises this many GPU generic resources, with no device files behind them, so a
# job that asks for GPUs (the paper-config rehearsal's two training processes: `--gpus=2`) is
# scheduled as its config asks; there is no CUDA device, the processes use gloo on the CPUs.
# slurmd counts a GPU per device file in gres.conf: /dev/null, /dev/zero, ... stand in for them
# (proctrack/linuxproc + task/none: nothing restricts access to them).
FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
FAKE_GPUS = int(os.environ.get("PCPO_SLURM_GPUS", "2"))

_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


class ClusterUnavailable(Exception):
    """The host cannot run the test cluster; callers should skip."""


class ClusterStartError(RuntimeError):
    """Something went wrong bringing the cluster up (a real failure)."""


# --------------------------------------------------------------------------
# small helpers


def _log(msg: str) -> None:
    print(f"[slurm-cluster] {msg}", file=sys.stderr, flush=True)


def which(name: str) -> Optional[str]:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_EXTRA_PATH)
    return shutil.which(name, path=path)


def _require(name: str) -> str:
    exe = which(name)
    if exe is None:
        raise ClusterStartError(f"{name} not found on PATH or in /usr/sbin")
    return exe


def _run(
    cmd: Sequence[str],
    timeout: float = 30,
    check: bool = False,
    env: Optional[Mapping[str, str]] = None,
    input: Optional[str] = None,
) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            input=input,
        )
    except subprocess.TimeoutExpired as e:
        out = e.output.decode() if isinstance(e.output, bytes) else (e.output or "")
        raise ClusterStartError(
            f"command timed out after {timeout}s: {shlex.join(cmd)}\n{_tail_text(out)}"
        ) from None
    if check and proc.returncode != 0:
        raise ClusterStartError(
            f"command failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
            f"{_tail_text(proc.stdout)}"
        )
    return proc


def _tail_text(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return f"--- last {lines} lines of {path} ---\n{_tail_text(text, lines)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still "exists"; treat it as dead
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _session_members(sid: int) -> list[int]:
    """Pids of all live processes whose session id is `sid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields after the comm: state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _wait_until(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate_pid(pid: int, name: str, timeout: float = 20) -> None:
    """SIGTERM `pid`, wait, then SIGKILL; only if it still runs `name`."""
    if not _pid_alive(pid):
        return
    comm = _proc_comm(pid)
    if comm and not name.startswith(comm) and not comm.startswith(name[:15]):
        _log(f"pid {pid} runs {comm!r}, not {name!r}; leaving it alone")
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_until(lambda: not _pid_alive(pid), timeout, 0.2):
        _log(f"{name} (pid {pid}) ignored SIGTERM for {timeout}s; sending SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_until(lambda: not _pid_alive(pid), 10, 0.2)


# --------------------------------------------------------------------------
# packages


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if which(b) is None]


def ensure_packages(install: Optional[bool] = None, timeout: float = 1200) -> float:
    """Install slurm-wlm + munge if any binary is missing.

    Returns the seconds spent in apt-get (0.0 when nothing was needed).
    """
    missing = missing_binaries()
    if not missing:
        return 0.0
    if install is None:
        install = os.environ.get("PCPO_SLURM_INSTALL", "1") != "0"
    if not install:
        raise ClusterUnavailable(
            f"Slurm/munge binaries missing ({', '.join(missing)}) and "
            "PCPO_SLURM_INSTALL=0"
        )
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            f"Slurm/munge binaries missing ({', '.join(missing)}); installing "
            "them needs root"
        )
    apt = which("apt-get")
    if apt is None:
        raise ClusterUnavailable("Slurm/munge missing and no apt-get on this host")

    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="a")
    install_cmd = [
        apt,
        "-o", "DPkg::Lock::Timeout=300",
        "-o", "Dpkg::Options::=--force-confdef",
        "-o", "Dpkg::Options::=--force-confold",
        "install", "-y", "-q", "--no-install-recommends",
        *PACKAGES,
    ]  # fmt: skip
    # Keep maintainer scripts from starting munge/slurm services: we start
    # (and stop) our own daemons. policy-rc.d is Debian's switch for that;
    # only add it if the host has none, and remove it afterwards.
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# temporary, tests/slurm/cluster.py\nexit 101\n")
        policy.chmod(0o755)
        added_policy = True
    t0 = time.monotonic()
    try:
        _log(f"installing {' '.join(PACKAGES)} with apt-get (missing: {missing})")
        try:
            proc = _run(install_cmd, timeout=timeout, env=env)
        except ClusterStartError:
            proc = None
        if proc is None or proc.returncode != 0:
            _log("apt-get install failed; running apt-get update and retrying")
            _run([apt, "-o", "DPkg::Lock::Timeout=300", "update", "-q"],
                 timeout=600, env=env, check=True)  # fmt: skip
            _run(install_cmd, timeout=timeout, env=env, check=True)
    finally:
        if added_policy:
            policy.unlink(missing_ok=True)
    elapsed = time.monotonic() - t0
    _log(f"apt-get install took {elapsed:.1f}s")
    still = missing_binaries()
    if still:
        raise ClusterStartError(f"still missing after apt-get install: {still}")
    return elapsed


# --------------------------------------------------------------------------
# the cluster


def _node_resources() -> tuple[int, int]:
    cpus = os.cpu_count() or 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    mem_mb = 1024
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
                break
    # leave headroom for the OS (slurmd drains a node whose RealMemory is
    # above what it finds)
    real_mem = max(256, int(mem_mb * 0.9) - 256)
    return cpus, real_mem


def _is_ours(path: Path) -> bool:
    try:
        with path.open(errors="replace") as f:
            return f.readline().rstrip("\n") == MARKER
    except OSError:
        return False


def render_slurm_conf(
    nodename: str, cpus: int, real_memory_mb: int, state: Path, gpus: int = FAKE_GPUS
) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus > 0 else ""
    return f"""{MARKER}
# Single-node test cluster on 127.0.0.1. Not for production use.
ClusterName={CLUSTER_NAME}
SlurmctldHost={nodename}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/run/slurmctld.pid
SlurmdPidFile={state}/run/slurmd.pid
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
KillWait=5
MailProg=/bin/true
GresTypes=gpu
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={nodename} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory_mb}{gres} State=UNKNOWN
PartitionName={PARTITION} Nodes={nodename} Default=YES MaxTime=INFINITE State=UP
"""


@dataclasses.dataclass
class _Daemon:
    name: str
    pid_file: Path
    log_file: Path
    proc: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> Optional[int]:
        if self.proc is not None:
            return self.proc.pid
        return _read_pid(self.pid_file)

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        pid = self.pid
        return pid is not None and _pid_alive(pid)


class SlurmCluster:
    """Single-node Slurm cluster on 127.0.0.1 (see module docstring)."""

    def __init__(self, state_root: Path = STATE_ROOT, nodename: Optional[str] = None):
        self.state = Path(state_root)
        self.nodename = nodename or socket.gethostname().split(".")[0]
        self.cpus, self.real_memory_mb = _node_resources()
        self.apt_seconds = 0.0
        self.startup_seconds = 0.0
        self.wrote_slurm_conf = False
        run, log = self.state / "run", self.state / "log"
        self.munged = _Daemon("munged", run / "munge" / "munged.pid", log / "munged.out")
        self.slurmctld = _Daemon("slurmctld", run / "slurmctld.pid", log / "slurmctld.log")
        self.slurmd = _Daemon("slurmd", run / "slurmd.pid", log / "slurmd.log")
        self.started_munged = False
        # True when start() found a cluster left running on purpose by
        # `cluster.py start` (scripts/slurm_local.sh): use it, never stop it
        self.attached = False

    # ---------------------------------------------------------------- public

    def start(self, timeout: float = 90) -> "SlurmCluster":
        """Install if needed, then start munge/slurmctld/slurmd; wait for idle."""
        if sys.platform != "linux":
            raise ClusterUnavailable("the test cluster needs Linux")
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster must run as root")
        self._check_conf_is_ours_or_absent()
        if self._attach_to_detached():
            return self
        self.apt_seconds = ensure_packages()
        # apt may not create a slurm.conf, but check again to be sure
        self._check_conf_is_ours_or_absent()
        t0 = time.monotonic()
        self._stop_stale_daemons()
        self._prepare_dirs()
        try:
            self._write_conf()
            self._start_munge(timeout=30)
            self._start_slurmctld(timeout=timeout)
            self._start_slurmd(timeout=timeout)
            self._wait_node_idle(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        _log(
            f"cluster up in {self.startup_seconds:.1f}s: node {self.nodename}, "
            f"{self.cpus} CPUs, {self.real_memory_mb} MB"
        )
        self._write_state_record()
        return self

    def stop(self) -> None:
        """Cancel jobs, stop the daemons we started, remove our config files."""
        if self.attached:
            self.attached = False
            return
        errors = []
        if self.slurmctld.running():
            try:
                self._cancel_all_jobs(timeout=30)
            except Exception as e:  # keep tearing down
                errors.append(f"cancelling jobs: {e}")
        for d in (self.slurmd, self.slurmctld):
            self._stop_daemon(d)
        self._kill_job_leftovers()
        if self.started_munged:
            self._stop_daemon(self.munged)
            self.started_munged = False
        self._remove_conf()
        (self.state / "cluster.json").unlink(missing_ok=True)
        if errors:
            _log("teardown problems: " + "; ".join(errors))

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, lines: int = 40) -> str:
        """Tails of the daemon logs, for error messages."""
        return "\n".join(
            tail(p, lines)
            for p in (
                self.slurmctld.log_file,
                self.slurmd.log_file,
                self.state / "log" / "slurmctld.out",
                self.state / "log" / "slurmd.out",
            )
            if p.exists()
        )

    def run_snakemake(self, *args, **kwargs) -> subprocess.CompletedProcess:
        """Same as the module-level `run_snakemake_on_slurm`."""
        return run_snakemake_on_slurm(*args, **kwargs)

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` fields of a job (kept MinJobAge s after its end)."""
        p = _run(
            [_require("scontrol"), "show", "job", "--oneliner", str(job_id)],
            env=_client_env(),
            check=True,
        )
        info = {}
        for item in p.stdout.split():
            key, sep, value = item.partition("=")
            if sep and key not in info:
                info[key] = value
        return info

    # --------------------------------------------------------------- startup

    def _check_conf_is_ours_or_absent(self) -> None:
        if SLURM_CONF.exists() or SLURM_CONF.is_symlink():
            first = ""
            try:
                with SLURM_CONF.open(errors="replace") as f:
                    first = f.readline().rstrip("\n")
            except OSError:
                pass
            if first != MARKER:
                raise ClusterUnavailable(
                    f"{SLURM_CONF} exists and was not written by this test helper "
                    "(a real Slurm installation?); not touching it"
                )

    def _stop_stale_daemons(self) -> None:
        """Stop daemons a previous, interrupted run of this helper left behind."""
        for d in (self.slurmd, self.slurmctld, self.munged):
            pid = _read_pid(d.pid_file)
            if pid is not None and _pid_alive(pid) and _proc_comm(pid) == d.name:
                _log(f"stopping stale {d.name} (pid {pid}) from an earlier run")
                terminate_pid(pid, d.name)
                for member in _session_members(pid):
                    terminate_pid(member, _proc_comm(member) or "?", timeout=5)
            d.pid_file.unlink(missing_ok=True)
        self._kill_job_leftovers()

    def _prepare_dirs(self) -> None:
        # fresh controller state and spool: no jobs from earlier runs
        for sub in ("ctld", "spool"):
            shutil.rmtree(self.state / sub, ignore_errors=True)
        for sub in ("ctld", "spool", "run", "log"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        for log in (self.state / "log").iterdir():
            log.unlink(missing_ok=True)
        self.state.chmod(0o755)

    def _write_conf(self) -> None:
        self._check_conf_is_ours_or_absent()
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        gpus = min(FAKE_GPUS, len(FAKE_GPU_FILES))
        if GRES_CONF.exists() and not _is_ours(GRES_CONF):
            raise ClusterUnavailable(f"{GRES_CONF} exists and was not written by this test helper")
        gres = GRES_CONF.with_name(GRES_CONF.name + ".pcpo-tmp")
        gres.write_text(MARKER + "\n" + "".join(f"Name=gpu File={f}\n" for f in FAKE_GPU_FILES[:gpus]))
        gres.chmod(0o644)
        os.replace(gres, GRES_CONF)
        text = render_slurm_conf(self.nodename, self.cpus, self.real_memory_mb, self.state, gpus)
        tmp = SLURM_CONF.with_name(SLURM_CONF.name + ".pcpo-tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, SLURM_CONF)
        self.wrote_slurm_conf = True

    def _remove_conf(self) -> None:
        if self.wrote_slurm_conf:
            try:
                with SLURM_CONF.open() as f:
                    ours = f.readline().rstrip("\n") == MARKER
            except OSError:
                ours = False
            if ours:
                SLURM_CONF.unlink(missing_ok=True)
            if _is_ours(GRES_CONF):
                GRES_CONF.unlink(missing_ok=True)
            self.wrote_slurm_conf = False

    def _munge_works(self) -> bool:
        munge, unmunge = which("munge"), which("unmunge")
        if not munge or not unmunge:
            return False
        try:
            cred = subprocess.run(
                [munge, "-n"], capture_output=True, text=True, timeout=10
            )
            if cred.returncode != 0:
                return False
            dec = subprocess.run(
                [unmunge], input=cred.stdout, capture_output=True, text=True, timeout=10
            )
            return dec.returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _start_munge(self, timeout: float) -> None:
        if self._munge_works():
            _log("reusing the munged that is already running")
            return
        import pwd

        try:
            pw = pwd.getpwnam("munge")
        except KeyError:
            raise ClusterStartError("no 'munge' user; is the munge package installed?")
        if not MUNGE_KEY.exists():
            mungekey = which("mungekey")
            if mungekey:
                _run([mungekey, "--create", f"--keyfile={MUNGE_KEY}"], check=True)
            else:
                MUNGE_KEY.write_bytes(os.urandom(1024))
            _log(f"created {MUNGE_KEY}")
        os.chown(MUNGE_KEY, pw.pw_uid, pw.pw_gid)
        MUNGE_KEY.chmod(0o400)
        for d in (MUNGE_SOCKET_DIR, Path("/var/lib/munge"), Path("/var/log/munge")):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, pw.pw_uid, pw.pw_gid)
            d.chmod(0o755 if d == MUNGE_SOCKET_DIR else 0o700)
        # munged writes its pid file itself, as user munge
        munge_pid_dir = self.munged.pid_file.parent
        munge_pid_dir.mkdir(parents=True, exist_ok=True)
        os.chown(munge_pid_dir, pw.pw_uid, pw.pw_gid)
        cmd = [
            _require("munged"),
            "--foreground",
            f"--pid-file={self.munged.pid_file}",
        ]
        self.munged.proc = self._spawn(cmd, self.munged.log_file, user=pw.pw_name)
        self.started_munged = True
        if not _wait_until(
            lambda: self._munge_works() or not self.munged.running(), timeout
        ) or not self.munged.running():
            raise ClusterStartError(
                f"munged did not come up within {timeout}s\n"
                + tail(self.munged.log_file)
                + "\n"
                + tail(Path("/var/log/munge/munged.log"))
            )

    def _spawn(self, cmd: list[str], out: Path, user: Optional[str] = None):
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab") as f:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                user=user,
                env=_daemon_env(),
            )

    def _start_slurmctld(self, timeout: float) -> None:
        cmd = [_require("slurmctld"), "-D", "-c", "-i"]
        self.slurmctld.proc = self._spawn(cmd, self.state / "log" / "slurmctld.out")

        def up():
            if not self.slurmctld.running():
                return True
            p = subprocess.run(
                [_require("scontrol"), "ping"],
                capture_output=True, text=True, timeout=15, env=_client_env(),
            )  # fmt: skip
            return p.returncode == 0 and "UP" in p.stdout

        ok = _wait_until(up, timeout, 0.5)
        if not self.slurmctld.running():
            raise ClusterStartError(
                f"slurmctld exited with code {self.slurmctld.proc.returncode}\n"
                + self.logs()
            )
        if not ok:
            raise ClusterStartError(
                f"slurmctld did not answer `scontrol ping` within {timeout}s\n"
                + self.logs()
            )

    def _start_slurmd(self, timeout: float) -> None:
        cmd = [_require("slurmd"), "-D", "-N", self.nodename]
        self.slurmd.proc = self._spawn(cmd, self.state / "log" / "slurmd.out")
        # slurmd exits quickly on configuration errors
        time.sleep(1)
        if not self.slurmd.running():
            raise ClusterStartError(
                f"slurmd exited with code {self.slurmd.proc.returncode}\n" + self.logs()
            )

    def node_state(self) -> str:
        p = subprocess.run(
            [_require("sinfo"), "-h", "-N", "-n", self.nodename, "-o", "%T"],
            capture_output=True, text=True, timeout=15, env=_client_env(),
        )  # fmt: skip
        return p.stdout.strip() if p.returncode == 0 else f"<sinfo failed: {p.stdout}>"

    def _wait_node_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        resumed = False
        state = ""
        while time.monotonic() < deadline:
            if not self.slurmd.running() or not self.slurmctld.running():
                raise ClusterStartError(
                    "a Slurm daemon exited while waiting for the node\n" + self.logs()
                )
            state = self.node_state()
            if state.startswith("idle"):
                return
            if not resumed and any(s in state for s in ("down", "drain", "fail")):
                # e.g. left DOWN by controller state; ReturnToService=2
                # usually handles it, this is a fallback
                _run(
                    [_require("scontrol"), "update", f"NodeName={self.nodename}",
                     "State=RESUME"], env=_client_env(),
                )  # fmt: skip
                resumed = True
            time.sleep(0.5)
        reason = _run(
            [_require("sinfo"), "-R", "-h"], env=_client_env()
        ).stdout.strip()
        raise ClusterStartError(
            f"node {self.nodename} not idle after {timeout}s (state {state!r}, "
            f"reason {reason!r})\n" + self.logs()
        )

    def _read_state_record(self) -> dict:
        try:
            return json.loads((self.state / "cluster.json").read_text())
        except (OSError, ValueError):
            return {}

    def _attach_to_detached(self) -> bool:
        record = self._read_state_record()
        if not record.get("detached") or not SLURM_CONF.exists():
            return False
        for d in (self.slurmctld, self.slurmd):
            pid = _read_pid(d.pid_file)
            if pid is None or not _pid_alive(pid) or _proc_comm(pid) != d.name:
                return False
        self.nodename = record.get("nodename", self.nodename)
        try:
            state = self.node_state()
        except (subprocess.TimeoutExpired, ClusterStartError):
            return False
        if not state.startswith(("idle", "mixed", "allocated", "completing")):
            return False
        _log(f"using the running test cluster started by `cluster.py start` "
             f"(node {self.nodename}: {state}); it stays up afterwards")  # fmt: skip
        self.attached = True
        self.cpus = record.get("cpus", self.cpus)
        self.real_memory_mb = record.get("real_memory_mb", self.real_memory_mb)
        return True

    def _write_state_record(self, detached: bool = False) -> None:
        record = {
            "detached": detached,
            "nodename": self.nodename,
            "cpus": self.cpus,
            "real_memory_mb": self.real_memory_mb,
            "started_munged": self.started_munged,
            "wrote_slurm_conf": self.wrote_slurm_conf,
            "apt_seconds": round(self.apt_seconds, 1),
            "startup_seconds": round(self.startup_seconds, 1),
        }
        (self.state / "cluster.json").write_text(json.dumps(record, indent=2) + "\n")

    # -------------------------------------------------------------- teardown

    def _cancel_all_jobs(self, timeout: float) -> None:
        # The cluster is ours alone: every job on it came from the tests.
        env = _client_env()
        squeue = _require("squeue")

        def live_jobs() -> list[str]:
            p = subprocess.run(
                [squeue, "-h", "-o", "%i", "-t",
                 "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED"],
                capture_output=True, text=True, timeout=15, env=env,
            )  # fmt: skip
            return p.stdout.split() if p.returncode == 0 else []

        jobs = live_jobs()
        if not jobs:
            return
        _log(f"cancelling leftover jobs: {' '.join(jobs)}")
        _run([_require("scancel"), *jobs], env=env)
        if not _wait_until(lambda: not live_jobs(), timeout, 0.5):
            _log(f"jobs still listed after {timeout}s: {live_jobs()}")

    def _job_leftovers(self) -> list[int]:
        """Processes of this test cluster's jobs that outlived slurmd.

        slurmstepd detaches into a session of its own, so it is found by the
        slurmd log file it keeps open (under our state dir); job tasks by
        SLURM_CLUSTER_NAME=<our cluster name> in their environment.
        """
        skip = set()
        pid = os.getpid()
        while pid > 1:  # never ourselves or our ancestors
            skip.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        marker = f"SLURM_CLUSTER_NAME={CLUSTER_NAME}".encode()
        state = str(self.state) + os.sep
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in skip:
                continue
            try:
                if _proc_comm(int(entry.name)) == "slurmstepd":
                    fds = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
                    if any(f.startswith(state) for f in fds):
                        found.append(int(entry.name))
                elif marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def _kill_job_leftovers(self) -> None:
        leftovers = self._job_leftovers()
        if leftovers:
            _log(f"stopping leftover job processes: {leftovers}")
        # job tasks first; slurmstepd ignores SIGTERM, so it gets little time
        leftovers.sort(key=lambda pid: _proc_comm(pid) == "slurmstepd")
        for pid in leftovers:
            comm = _proc_comm(pid) or "?"
            terminate_pid(pid, comm, timeout=1 if comm == "slurmstepd" else 5)

    def _stop_daemon(self, d: _Daemon) -> None:
        pid = d.proc.pid if d.proc is not None else None
        file_pid = _read_pid(d.pid_file)
        if pid is None:
            pid = file_pid
        elif file_pid is not None and file_pid != pid:
            _log(f"{d.name}: pid file says {file_pid}, we started {pid}")
        if pid is not None and _pid_alive(pid):
            terminate_pid(pid, d.name)
        if d.proc is not None:
            try:
                d.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # job steps (slurmstepd) and their children stay in slurmd's session
        if pid is not None:
            for member in _session_members(pid):
                terminate_pid(member, _proc_comm(member) or "?", timeout=5)
        d.pid_file.unlink(missing_ok=True)
        d.proc = None


def _client_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = env.get("PATH", "") + os.pathsep + os.pathsep.join(_EXTRA_PATH)
    return env


def _daemon_env() -> dict:
    env = _client_env()
    # don't let daemons inherit pytest/virtualenv python settings
    for k in ("PYTHONPATH", "PYTHONHOME"):
        env.pop(k, None)
    return env


# --------------------------------------------------------------------------
# running snakemake


def snakemake_command(
    snakefile: Path,
    workdir: Path,
    configfile: Optional[Path] = None,
    extra_args: Iterable[str] = (),
    profiles: Optional[Sequence[Path]] = None,
) -> list[str]:
    """The command line `run_snakemake_on_slurm` runs."""
    if profiles is None:
        profiles = (BASE_PROFILE, TEST_PROFILE)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile)]
    cmd += ["--directory", str(workdir)]
    for p in profiles:
        cmd += ["--profile", str(p)]
    cmd += ["--cores", "all"]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += [str(a) for a in extra_args]
    return cmd


def run_snakemake_on_slurm(
    workdir: Path,
    snakefile: Path,
    configfile: Optional[Path] = None,
    extra_args: Iterable[str] = (),
    *,
    profiles: Optional[Sequence[Path]] = None,
    cwd: Optional[Path] = None,
    timeout: float = 600,
    env: Optional[Mapping[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Run snakemake with the Slurm profile stack (profiles/slurm, then the
    test profile) against the running test cluster.

    stdout and stderr are merged into ``.stdout``. Runs in `cwd` (default:
    `workdir`); note that Snakemake applies ``profiles/default`` as workflow
    profile when it exists under `cwd` or next to the Snakefile, and that it
    overrides the --profile keys (pass ``--workflow-profile none`` in
    `extra_args` to avoid that). On timeout, snakemake gets SIGINT (it
    cancels its Slurm jobs), then SIGKILL; the result has returncode 124.
    """
    cmd = snakemake_command(Path(snakefile), Path(workdir), configfile, extra_args, profiles)
    run_env = _client_env()
    if env:
        run_env.update(env)
    _log("running: " + shlex.join(cmd))
    proc = subprocess.Popen(
        cmd,
        cwd=str(cwd or workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=run_env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, None)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        out = (out or "") + f"\n[run_snakemake_on_slurm: timed out after {timeout}s]\n"
        return subprocess.CompletedProcess(cmd, 124, out, None)


# --------------------------------------------------------------------------
# CLI for shell use (scripts/slurm_local.sh)


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("start", "stop", "status", "install"):
        print(__doc__, file=sys.stderr)
        print("usage: cluster.py start|stop|status|install", file=sys.stderr)
        return 2
    action = argv[0]
    if action == "install":
        secs = ensure_packages(install=True)
        print(f"apt-get: {secs:.1f}s")
        return 0
    cluster = SlurmCluster()
    if action == "start":
        try:
            cluster.start()
        except ClusterUnavailable as e:
            print(f"cannot start test cluster: {e}", file=sys.stderr)
            return 3
        if cluster.attached:
            print("already running")
            return 0
        # The daemons are our children; detach from them so they survive
        # this process. `stop` finds them through the pid files, and
        # SlurmCluster.start() in pytest attaches to them instead of
        # restarting them.
        for d in (cluster.munged, cluster.slurmctld, cluster.slurmd):
            d.proc = None
        cluster._write_state_record(detached=True)
        print(json.dumps({"apt_seconds": round(cluster.apt_seconds, 1),
                          "startup_seconds": round(cluster.startup_seconds, 1)}))  # fmt: skip
        return 0
    record_path = STATE_ROOT / "cluster.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if action == "status":
        print(json.dumps(record, indent=2) if record else "not running (no state record)")
        for d in (cluster.munged, cluster.slurmctld, cluster.slurmd):
            print(f"{d.name}: {'running' if d.running() else 'not running'}")
        return 0
    # stop: rebuild what `start` did from the record written there
    cluster.started_munged = bool(record.get("started_munged"))
    cluster.wrote_slurm_conf = bool(record.get("wrote_slurm_conf"))
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
