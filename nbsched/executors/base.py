"""The executor protocol, and what local executors share.

An executor starts a job's command and reports, exactly once, how it ended.

Local executors (direct, screen) run each job under a tiny bash *launcher*::

    bash -c 'exit_file=$1; shift; "$@"; rc=$?;
             umask 077; printf "%d\\n" "$rc" > "$exit_file"; exit "$rc"'

in a session of its own (outside the kernel's process group, so a kernel restart
does not kill it).  The launcher writes the job's exit code to
``state_dir/run/<token>.exit`` when the job ends, whether or not an engine is alive
to see it; the next engine reads it.  A job is identified by its launcher's pid
*and* that process's start time, so a reused pid is never taken for the job.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from ..jobs import Job

logger = logging.getLogger(__name__)

#: ``umask 077`` after the job, so the exit file is 0600 whatever umask the engine has.
LAUNCHER = (
    'exit_file=$1; shift; "$@"; rc=$?; umask 077; printf "%d\\n" "$rc" > "$exit_file"; exit "$rc"'
)


@dataclass(frozen=True)
class Launch:
    """Everything an executor needs to start one attempt of a job."""

    job: Job
    gpus: tuple[int, ...]
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    log_path: Path
    exit_path: Path


@dataclass(frozen=True)
class Started:
    pid: int | None
    proc_start: float | None
    node: str | None = None


@dataclass(frozen=True)
class Exit:
    """How an attempt ended: its exit code, or ``None`` with the reason it is unknown."""

    code: int | None
    reason: str | None = None


OnExit = Callable[[Job, Exit], None]


class Executor(Protocol):
    name: str

    def is_available(self) -> bool: ...

    def start(self, launch: Launch) -> Started:
        """Start the attempt; raise with a clear message if it cannot start."""
        ...

    def watch(self, job: Job, on_exit: OnExit) -> None:
        """Call ``on_exit`` exactly once when ``job`` (started, or adopted) ends."""
        ...

    def kill(self, job: Job, grace_s: float) -> None:
        """End the job's whole process tree: SIGTERM, then SIGKILL after ``grace_s``."""
        ...

    def close(self) -> None: ...


def exit_path(run_dir: Path, token: str) -> Path:
    return run_dir / f"{token}.exit"


def read_exit_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def same_process_alive(pid: int | None, proc_start: float | None) -> bool:
    """True if ``pid`` is alive, not a zombie, and started at ``proc_start``."""
    if pid is None or proc_start is None:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - proc_start) < 0.05
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def find_by_token(token: str) -> list[psutil.Process]:
    """Processes of this user whose environment carries ``NBSCHED_JOB_TOKEN=token``."""
    uid = os.getuid()
    needle = f"NBSCHED_JOB_TOKEN={token}".encode()
    found = []
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        if needle in data.split(b"\0"):
            try:
                proc = psutil.Process(pid)
                if proc.uids().real == uid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
    return found


def kill_tree(pid: int | None, proc_start: float | None, token: str | None, grace_s: float) -> None:
    """SIGTERM the job's launcher, its descendants, its process group and every process
    carrying its token (also ones that called ``setsid``); SIGKILL what is left after
    ``grace_s``."""

    def collect() -> dict[int, psutil.Process]:
        procs: dict[int, psutil.Process] = {}
        if same_process_alive(pid, proc_start):
            assert pid is not None
            try:
                root = psutil.Process(pid)
                procs[root.pid] = root
                for child in root.children(recursive=True):
                    procs[child.pid] = child
            except psutil.NoSuchProcess:
                pass
        if token:
            for proc in find_by_token(token):
                procs[proc.pid] = proc
        return procs

    procs = collect()
    for proc in procs.values():
        _signal(proc, signal.SIGTERM)
    if pid is not None and pid in procs:
        try:
            os.killpg(pid, signal.SIGTERM)  # the launcher leads its own session and group
        except (ProcessLookupError, PermissionError):
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for _ in range(3):
        for proc in alive:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=1.0)
        # A process may have forked while we were signalling: look once more.
        alive = list(collect().values())
        if not alive:
            return
    logger.warning("job %s: processes %s survived SIGKILL", token, [p.pid for p in alive])


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
