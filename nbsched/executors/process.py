"""A job's local processes: who they are, whether they still run, how to end them.

A local job is known by its process's pid *and* that process's start time, so a
reused pid is never taken for the job; its processes carry ``NBSCHED_JOB_TOKEN`` in
their environment, so those that left its session (``setsid``) are found too.  Its
exit code is in ``state_dir/run/<token>.exit`` when no engine was told it: written by
the spawner for the direct executor where an engine may need it
(:mod:`nbsched.executors.spawner`: it tells the engine through a pipe, and keeps the
code until the end is committed), by a wrapper shell in the session for screen at
each end.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)


def open_log(path: Path) -> int:
    """Open (create 0600) a job's log for appending; returns the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def read_exit_file(path: Path) -> int | None:
    """The exit code in a job's exit file (None: no file, or none in it)."""
    found = read_exit(path)
    return None if found is None else found[0]


def read_exit(path: Path) -> tuple[int, float] | None:
    """The exit code in a job's exit file and when the job ended: the time written
    after the code (the spawner's ``CODE TIME``), else the file's own (a wrapper shell
    writes ``CODE`` as the job ends)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("ascii", "replace")
            mtime = os.fstat(fh.fileno()).st_mtime
    except OSError:
        return None
    try:
        code, _, at = text.strip().partition(" ")
        return int(code), float(at) if at else mtime
    except ValueError:
        return None


def process_start_time(pid: int) -> float | None:
    """The start time psutil reports for ``pid`` (``create_time()``), read cheaply.

    On Linux this parses ``/proc/PID/stat`` directly (a process start is on the
    dispatcher's hot path; ``psutil.Process`` costs ~0.4 ms more here), with psutil's
    own formula: boot time + start ticks / clock ticks per second.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        ticks = int(data[data.rindex(b")") + 2 :].split()[19])  # field 22, starttime
        return _boot_time() + ticks / _CLOCK_TICKS
    except FileNotFoundError:
        if _HAS_PROC:
            return None  # the process is gone (and reaped)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def start_time_at(boottime_ns: int) -> float:
    """:func:`process_start_time` of a process created when ``CLOCK_BOOTTIME`` read
    ``boottime_ns``, without reading ``/proc``: the kernel stamps a new process with
    that clock, and ``/proc/PID/stat`` gives it in clock ticks (so a reading taken
    just before the fork is the same tick, or, across a tick's edge, one tick early:
    well within :func:`same_process_alive`'s 0.05 s)."""
    return _boot_time() + (boottime_ns * _CLOCK_TICKS // 1_000_000_000) / _CLOCK_TICKS


def _boot_time() -> float:
    """The boot time psutil adds to a process's start ticks, as it is now: the
    ``btime`` of ``/proc/stat``, which the kernel works out at each read as the wall
    clock less the time since boot, in whole seconds.  Not kept: as the wall clock is
    adjusted it moves by a second now and then (a value kept from earlier put start times
    a second off those psutil reported).  Worked out the kernel's way from two clock
    reads (~1 us; the file costs ~25 us, more on a machine of many CPUs)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None or not _HAS_PROC:
        return float(psutil.boot_time())
    return float((time.time_ns() - time.clock_gettime_ns(clock)) // 1_000_000_000)


_HAS_PROC = os.path.isdir("/proc/self")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def same_process_alive(pid: int | None, proc_start: float | None) -> bool:
    """True if ``pid`` is alive, not a zombie, and started at ``proc_start``."""
    if pid is None or proc_start is None:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # (a second apart too: the boot time psutil adds moves by whole seconds as the
        # wall clock is adjusted, see _boot_time; a pid reused a second later is
        # vanishingly unlikely)
        off = abs(proc.create_time() - proc_start)
        return off < 0.05 or abs(off - 1.0) < 0.05
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


def find_job_process(token: str) -> tuple[int, float] | None:
    """(pid, start time) of the oldest live process carrying ``token`` that leads its
    session (the job's own process, unless it ended and left children), or None."""
    found = []
    for proc in find_by_token(token):
        start = process_start_time(proc.pid)
        if start is not None:
            found.append((_sid(proc.pid) != proc.pid, start, proc.pid))
    if not found:
        return None
    _, start, pid = min(found)
    return pid, start


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def kill_tree(pid: int | None, proc_start: float | None, token: str | None, grace_s: float) -> None:
    """SIGTERM the job's process, its descendants, its process group and every process
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
            os.killpg(pid, signal.SIGTERM)  # the job's process leads its session and group
        except (ProcessLookupError, PermissionError):
            pass
    alive = _wait_ended(list(procs.values()), timeout=grace_s)
    for _ in range(3):
        for proc in alive:
            _signal(proc, signal.SIGKILL)
        _wait_ended(alive, timeout=1.0)
        # A process may have forked while we were signalling: look once more.
        alive = list(collect().values())
        if not alive:
            return
    logger.warning("job %s: processes %s survived SIGKILL", token, [p.pid for p in alive])


def _wait_ended(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until ``procs`` have ended; returns those still running after ``timeout``.

    A zombie counts as ended: its parent may be an init that reaps late (containers),
    and ``psutil.wait_procs`` would wait for the reaping."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        procs = [p for p in procs if _running(p)]
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass


#: For the executors: wait for processes to end; send one a signal (gone: nothing).
wait_ended = _wait_ended
signal_process = _signal
