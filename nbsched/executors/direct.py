"""The direct executor: each job a subprocess, in a session of its own, under the launcher.

The job's stdout and stderr go to its log file (mode 0600, appended to across
attempts).  Nothing goes through a shell except a command job's own ``bash -c``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..jobs import Job
from .base import (
    LAUNCHER,
    LAUNCHER_SHELL,
    Exit,
    Launch,
    OnExit,
    Started,
    kill_tree,
    process_start_time,
    read_exit_file,
    same_process_alive,
)
from .watcher import Child, ProcessWatcher


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
        self._popens: dict[int, Child] = {}

    def is_available(self) -> bool:
        return True

    def event_source(self) -> tuple[int, Callable[[], None]] | None:
        """For a dispatcher's event loop: ``(fd, handler)``, the descriptor readable when
        a watched job ended and what to call then; None if the watcher keeps a thread."""
        fd = self._watcher.drive()
        return None if fd is None else (fd, self._watcher.process_ready)

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


class SpawnedChild:
    """A child started with ``os.posix_spawn``: the part of ``Popen`` the watcher uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class DirectExecutor(LocalProcessExecutor):
    name = "direct"

    def start(self, launch: Launch) -> Started:
        # posix_spawn (vfork + exec in the C library) instead of Popen: a kernel holding
        # gigabytes is never forked, and a start costs ~0.1 ms less CPU.  It has no cwd in
        # Python 3.11, so the launcher changes folder itself; a missing folder is refused
        # here, with a clear reason, rather than in the job's log.
        if launch.cwd is None:
            try:
                cwd = os.getcwd()
            except FileNotFoundError:
                raise FileNotFoundError(
                    "the engine's working folder no longer exists; give the job a cwd"
                ) from None
        elif not os.path.isdir(launch.cwd):
            raise FileNotFoundError(f"the job's folder {launch.cwd!r} no longer exists")
        else:
            cwd = launch.cwd
        argv = [LAUNCHER_SHELL, "-c", _CD + LAUNCHER, "nbsched-job", cwd]
        argv += [str(launch.exit_path), *launch.argv]
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(launch.log_path), _LOG_FLAGS, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawn(LAUNCHER_SHELL, argv, launch.env, file_actions=actions,
                             setsid=True)  # fmt: skip
        self._popens[pid] = SpawnedChild(pid)
        if self.defer_start_time:
            return Started(pid=pid, proc_start=None)
        return Started(pid=pid, proc_start=process_start_time(pid))

    #: Leave ``Started.proc_start`` None for the caller to read (the dispatcher does,
    #: once all the jobs of its cycle are spawned): read right after the spawn, it waits
    #: ~0.7 ms for the launcher's exec to finish.
    defer_start_time = False


#: Run by the launcher's shell before LAUNCHER: go to the job's folder ($1), then drop it.
_CD = 'cd -- "$1" || exit 126; shift; '
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND  # no O_CLOEXEC: it becomes fd 1
