"""Whose is each process on a GPU: an nbsched job's, or someone else's.

A process belongs to a job when it is the job's process, a descendant of it, or
carries the job's ``NBSCHED_JOB_TOKEN`` in its environment (how processes that left
the job's session are found, see :mod:`nbsched.executors.process`).  Any other
process is someone else's, shown with its user name and command line; one this user
may not read (another user's under ``hidepid``, or gone) is shown as unreadable, not
dropped: its memory still counts as someone else's.

What the operating system says of a pid is cached between passes while the pid stays
on a GPU, so a pass over the same processes costs a dict lookup each.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import psutil

from ..executors.environ import environ_value
from .base import GpuSnapshot

#: Shown for what cannot be read of another user's process.
UNREADABLE = "(not readable)"
TOKEN_VARIABLE = "NBSCHED_JOB_TOKEN"
_MAX_COMMAND = 300


@dataclass(frozen=True)
class JobProcess:
    """A running job as attribution needs it: its id, root pid and token."""

    id: str
    pid: int | None
    token: str | None


@dataclass(frozen=True)
class Attributed:
    """One process on one GPU, with whose it is (``job``: the nbsched job's id, or
    ``None``: someone else's)."""

    gpu: int
    pid: int | None
    user: str | None
    command: str | None
    used_mb: float | None
    job: str | None
    readable: bool = True


@dataclass(frozen=True)
class _Seen:
    """What the OS said of a pid: its ancestors' pids, token, user and command."""

    lineage: tuple[int, ...]
    token: str | None
    user: str | None
    command: str | None
    readable: bool
    #: Worth keeping: its command line was read (a process still starting has none yet).
    final: bool = True


class Attributor:
    """Attributes the processes of GPU readings to jobs (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, _Seen] = {}

    def attribute(
        self, reading: Sequence[GpuSnapshot], jobs: Iterable[JobProcess]
    ) -> list[Attributed]:
        """Every process of ``reading``, attributed (GPUs whose processes the provider
        cannot list contribute none)."""
        by_pid: dict[int, str] = {}
        by_token: dict[str, str] = {}
        for j in jobs:
            if j.pid is not None:
                by_pid[j.pid] = j.id
            if j.token:
                by_token[j.token] = j.id
        out: list[Attributed] = []
        with self._lock:
            present: set[int] = set()
            for gpu in reading:
                for p in gpu.processes or ():
                    if p.pid is None or p.user is not None or p.command is not None:
                        # (described by the provider itself: a simulated GPU's file)
                        job = by_pid.get(p.pid) if p.pid is not None else None
                        out.append(Attributed(p.gpu, p.pid, p.user, p.command, p.used_mb, job))
                        continue
                    present.add(p.pid)
                    seen = self._seen.get(p.pid)
                    if seen is None:
                        seen = _look(p.pid)
                        if seen.final:
                            self._seen[p.pid] = seen
                    job = _job_of(p.pid, seen, by_pid, by_token)
                    out.append(
                        Attributed(
                            p.gpu, p.pid, seen.user, seen.command, p.used_mb, job, seen.readable
                        )
                    )
            for pid in [pid for pid in self._seen if pid not in present]:
                del self._seen[pid]
        return out


def _job_of(
    pid: int, seen: _Seen, by_pid: Mapping[int, str], by_token: Mapping[str, str]
) -> str | None:
    found = by_pid.get(pid)
    if found is not None:
        return found
    for parent in seen.lineage:
        found = by_pid.get(parent)
        if found is not None:
            return found
    return by_token.get(seen.token) if seen.token else None


def _look(pid: int) -> _Seen:
    """What the OS says of ``pid`` (never raises)."""
    try:
        proc = psutil.Process(pid)
        lineage = tuple(p.pid for p in proc.parents())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return _Seen((), None, None, UNREADABLE, False)
    except psutil.AccessDenied:
        lineage = ()
    user: str | None
    try:
        user = proc.username()
    except (psutil.Error, KeyError):
        try:
            user = str(proc.uids().real)
        except psutil.Error:
            user = None
    readable, final = True, True
    try:
        command = " ".join(proc.cmdline())
        if not command:  # (not yet exec'd, or a kernel thread: ask again next pass)
            command, final = proc.name(), False
    except psutil.Error:
        command, readable = UNREADABLE, False
    return _Seen(lineage, _token(pid), user, command[:_MAX_COMMAND], readable, final)


def _token(pid: int) -> str | None:
    return environ_value(pid, TOKEN_VARIABLE)


def memory_by_job(rows: Iterable[Attributed]) -> dict[str, float]:
    """Job id -> the most MiB its processes hold on one of its GPUs (a job on two GPUs
    holding 10 GiB on each uses 10 GiB, as a request is per GPU)."""
    per_gpu: dict[tuple[str, int], float] = {}
    for r in rows:
        if r.job is not None and r.used_mb is not None:
            key = (r.job, r.gpu)
            per_gpu[key] = per_gpu.get(key, 0.0) + r.used_mb
    out: dict[str, float] = {}
    for (job, _), mb in per_gpu.items():
        out[job] = max(out.get(job, 0.0), mb)
    return out


def memory_by_gpu(rows: Iterable[Attributed]) -> dict[int, tuple[float, float]]:
    """GPU -> (MiB held by nbsched jobs, MiB held by others), of the processes listed."""
    out: dict[int, tuple[float, float]] = {}
    for r in rows:
        ours, theirs = out.get(r.gpu, (0.0, 0.0))
        mb = r.used_mb or 0.0
        out[r.gpu] = (ours + mb, theirs) if r.job is not None else (ours, theirs + mb)
    return out


def this_user() -> str:
    """This process's user name (for tests and displays)."""
    try:
        return psutil.Process(os.getpid()).username()
    except (psutil.Error, KeyError):
        return str(os.getuid())
