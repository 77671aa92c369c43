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
    """A started attempt.  A local process's ``pid`` and ``proc_start`` are left None
    only where the caller asked for that (``DirectExecutor.defer_identity``) and reads
    them itself."""

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
