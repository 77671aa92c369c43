"""The executor protocol: what the dispatcher asks of an executor.

An executor starts a job's command and reports, exactly once, how it ended.  What the
local executors (direct, screen) share about a job's processes is in
:mod:`nbsched.executors.process`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..jobs import Job

logger = logging.getLogger(__name__)


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
    """A started attempt: where it runs, as far as it is known.

    A local process's ``pid`` and ``proc_start`` are left None only where the caller
    asked for that (:attr:`Executor.defer_identity`) and asks :meth:`Executor.identify`
    later.  An executor whose jobs begin later than :meth:`Executor.start` returns
    (a Ray task waits for its worker) leaves them None and reports them through
    :meth:`Executor.report_starts`, with ``began``: when the job really began.
    """

    pid: int | None
    proc_start: float | None
    node: str | None = None
    #: Wall-clock time the job began, where that is later than its start (else None).
    began: float | None = None
    #: The GPUs it was given, where its executor learns them only once it runs (Slurm
    #: tells which GPUs a job got); None: as it was started.
    gpus: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Exit:
    """How an attempt ended: its exit code, or ``None`` with the reason it is unknown;
    ``at``: when it ended (the wall clock), where the executor knows it (the spawner
    does: the job's true end also when the engine that records it learns of it later);
    None: when the engine learns of it."""

    code: int | None
    reason: str | None = None
    at: float | None = None


OnExit = Callable[[Job, Exit], None]
#: Called with a started attempt (``job.token`` names it) and where it turned out to run.
OnStarted = Callable[[Job, Started], None]
#: ``(fd, handler)``: a descriptor readable when a watched job ended, and what to call then.
EventSource = tuple[int, Callable[[], None]]


class Executor(Protocol):
    """Every ability the dispatcher uses, with its default.

    Concrete executors subclass this explicitly and override what they can do; the
    methods with ``...`` bodies are required (mypy refuses an executor without them).
    The dispatcher never asks what an executor can do: the defaults here say it.
    """

    name: str
    #: Whether the job's processes run on this machine: recovery then checks their pids
    #: in ``/proc`` and their exit files.  False (Ray): recovery only calls :meth:`watch`.
    local_processes: bool = True
    #: Set by a dispatcher that handles this executor's ends in its own thread (see
    #: :meth:`event_source`): :meth:`start` may then return before the process's pid is
    #: known, with ``Started.pid`` None, and the dispatcher asks :meth:`identify` later
    #: (the next job's start does not wait for this one's ``exec``).  An executor that
    #: cannot defer ignores it and returns the pid.
    defer_identity: bool = False

    #: Whether :meth:`start_many` hands several attempts over at once (Slurm: one job
    #: array): the dispatcher then gives it the attempts of a turn together.
    batches: bool = False

    def is_available(self) -> bool: ...

    def start_many(self, launches: list[Launch]) -> list[Started | Exception]:
        """Start several attempts; for each, how it started or why it could not.
        Default: :meth:`start` for each."""
        out: list[Started | Exception] = []
        for launch in launches:
            try:
                out.append(self.start(launch))
            except Exception as exc:
                out.append(exc)
        return out

    def start(self, launch: Launch) -> Started:
        """Start the attempt; raise with a clear message if it cannot start."""
        ...

    def watch(self, job: Job, on_exit: OnExit) -> None:
        """Call ``on_exit`` exactly once when ``job`` (started, or adopted) ends."""
        ...

    def kill(self, job: Job, grace_s: float) -> None:
        """End the job's whole process tree: SIGTERM, then SIGKILL after ``grace_s``."""
        ...

    def close(self) -> None:
        """Release what the executor holds (its jobs go on running).  Default: nothing."""
        return None  # (a body: mypy takes a bare docstring for an abstract method)

    def event_source(self) -> EventSource | None:
        """For a dispatcher's event loop: ``(fd, handler)``, the descriptor readable when
        a watched job ended and what to call then.  None (the default): the executor
        reports ends from a thread of its own."""
        return None

    def identify(self, job: Job, wait: bool = True) -> tuple[int | None, float | None] | None:
        """(pid, start time) of a job :meth:`start` left unidentified (see
        :attr:`defer_identity`); (None, None) if its process could not be started (its
        end is reported as any other); None if, without ``wait``, it is not known yet.
        Default: what the job carries (an executor that never defers knows it at start)."""
        return job.pid, job.proc_start

    def report_starts(self, on_started: OnStarted) -> None:
        """Where to report a job's pid, node and start time when they are learned after
        :meth:`start` returned (a Ray task begins when a worker takes it).  The
        dispatcher records them.  Default: never called (start returns them)."""
        return None  # (a body: mypy takes a bare docstring for an abstract method)

    def adopt(self, job: Job, on_exit: OnExit) -> int | None:
        """At recovery: watch ``job`` if this executor still holds its process, and return
        its pid; None (the default) if it cannot tell (recovery then checks the pid and
        the exit file itself)."""
        return None

    def never_started(self, job: Job) -> bool:
        """At recovery, for an executor whose jobs run elsewhere (``local_processes``
        False): whether ``job``, marked running, certainly never reached it (it is then
        queued again).  Default: False (it is watched)."""
        return False

    def forget(self, jobs: list[Job]) -> None:
        """These jobs' ends are committed: drop what was kept for them (exit files, ends
        kept for a next engine).  Default: nothing is kept."""
        return None  # (a body: mypy takes a bare docstring for an abstract method)
