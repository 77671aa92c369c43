"""The direct executor: each job a subprocess, in a session of its own, under the launcher.

The job's stdout and stderr go to its log file (mode 0600, appended to across
attempts).  Nothing goes through a shell except a command job's own ``bash -c``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..jobs import Job
from .base import (
    LAUNCHER,
    Exit,
    Launch,
    OnExit,
    Started,
    kill_tree,
    process_start_time,
    read_exit_file,
    same_process_alive,
)
from .watcher import ProcessWatcher


def open_log(path: Path) -> int:
    """Open (create 0600) a job's log for appending; returns the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


class LocalProcessExecutor:
    """What the direct and screen executors share: watching, adopting, killing."""

    name = "local"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._watcher = ProcessWatcher()
        self._popens: dict[int, subprocess.Popen[bytes]] = {}

    def is_available(self) -> bool:
        return True

    def watch(self, job: Job, on_exit: OnExit) -> None:
        popen = self._popens.pop(job.pid, None) if job.pid is not None else None
        exit_file = self.run_dir / f"{job.token}.exit"

        def ended(status: int | None) -> None:
            code = read_exit_file(exit_file)
            if code is None and status is not None and status >= 0 and self.trust_status:
                code = status
            if code is not None:
                on_exit(job, Exit(code))
            else:
                why = "killed by a signal" if status is not None and status < 0 else "gone"
                on_exit(
                    job,
                    Exit(None, f"the job's process ended without recording an exit code ({why})"),
                )
            # The exit file stays until the end is committed; the dispatcher deletes it.

        if popen is None and not same_process_alive(job.pid, job.proc_start):
            ended(None)
            return
        assert job.pid is not None
        self._watcher.add(job.pid, ended, popen)

    #: Whether the launcher's own wait status is the job's exit code (true for direct).
    trust_status = True

    def kill(self, job: Job, grace_s: float) -> None:
        kill_tree(job.pid, job.proc_start, job.token, grace_s)

    def close(self) -> None:
        self._watcher.close()


class DirectExecutor(LocalProcessExecutor):
    name = "direct"

    def start(self, launch: Launch) -> Started:
        log_fd = open_log(launch.log_path)
        try:
            popen = subprocess.Popen(
                ["bash", "-c", LAUNCHER, "nbsched-job", str(launch.exit_path), *launch.argv],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=launch.cwd,
                env=dict(launch.env),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log_fd)
        self._popens[popen.pid] = popen
        return Started(pid=popen.pid, proc_start=process_start_time(popen.pid))
