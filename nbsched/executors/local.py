"""What the local executors (direct, screen) share: watching a job by its pid,
finding its exit code in its exit file, killing its whole tree."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..jobs import Job
from .base import Executor, Exit, OnExit
from .process import kill_tree, read_exit, same_process_alive
from .watcher import ProcessWatcher


class LocalProcessExecutor(Executor):
    """What the direct and screen executors share: watching by pid, adopting, killing."""

    name = "local"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._watcher = ProcessWatcher()

    def is_available(self) -> bool:
        return True

    def event_source(self) -> tuple[int, Callable[[], None]] | None:
        """For a dispatcher's event loop: ``(fd, handler)``, the descriptor readable when
        a watched job ended and what to call then; None if the watcher keeps a thread."""
        fd = self._watcher.drive()
        return None if fd is None else (fd, self._watcher.process_ready)

    def watch(self, job: Job, on_exit: OnExit) -> None:
        """Watch the job's process by its pid; its exit code is in its exit file."""
        exit_file = self.run_dir / f"{job.token}.exit"

        def ended() -> None:
            found = read_exit(exit_file)
            if found is not None:
                on_exit(job, Exit(found[0], at=found[1]))
            else:
                on_exit(job, Exit(None, "the job's process ended without recording an exit code"))
            # The exit file stays until the end is committed; the dispatcher deletes it.

        if not same_process_alive(job.pid, job.proc_start):
            ended()
            return
        assert job.pid is not None
        self._watcher.add(job.pid, ended)

    def kill(self, job: Job, grace_s: float) -> None:
        kill_tree(job.pid, job.proc_start, job.token, grace_s)

    def forget(self, jobs: list[Job]) -> None:
        """These jobs' ends are in the database: their exit files are read by nobody."""
        for job in jobs:
            if job.token:
                try:
                    os.unlink(self.run_dir / f"{job.token}.exit")
                except OSError:
                    pass

    def close(self) -> None:
        self._watcher.close()
