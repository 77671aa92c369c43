"""The direct executor: each job a process of its own, started by the spawner.

The jobs are children of the state directory's spawner
(:mod:`nbsched.executors.spawner`), not of the kernel, so they outlive it and their
exit codes are recorded whether or not an engine is alive.  Each job leads a
session of its own; its stdout and stderr go to its log file (mode 0600, appended
to across attempts).  Nothing goes through a shell except a command job's own
``bash -c``.

The engine talks to the spawner through a
:class:`~nbsched.executors.spawner_client.SpawnerClient`.  A job's end reaches the
engine through a pipe: the spawner writes the exit code to it once it has reaped
the job, and closes it; the engine waits on that pipe in the dispatcher's own
``select``, like a pidfd.
"""

from __future__ import annotations

import logging
import os
import select
import socket
from collections.abc import Callable
from pathlib import Path

from ..jobs import Job
from . import messages as msg
from .base import Exit, Launch, OnExit, Started
from .local import LocalProcessExecutor
from .process import process_start_time, read_exit, start_time_at
from .spawner_client import SpawnerClient, job_pid

logger = logging.getLogger(__name__)

SPAWNER_GONE = (
    "the job's process ended without recording an exit code (nbsched's spawner "
    "process, its parent, was killed while the job ran)"
)


class DirectExecutor(LocalProcessExecutor):
    name = "direct"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self._spawner = SpawnerClient(run_dir)
        self._end_fds: dict[str, int] = {}  # token -> end descriptor of a job started here
        #: Jobs whose end the spawner told through their end descriptor, and keeps until
        #: it is acknowledged (see forget).
        self._told: set[str] = set()
        self._events: select.epoll | None = None  # see event_source

    def event_source(self) -> tuple[int, Callable[[], None]] | None:
        """Also wakes the loop when the spawner's replies (the pids) come."""
        fd = self._watcher.drive()
        if fd is None:
            return None
        events = self._events = select.epoll()
        events.register(fd, select.EPOLLIN)
        self._spawner.on_connect = self._watch_socket
        return events.fileno(), self._ready

    def _watch_socket(self, sock: socket.socket) -> None:
        assert self._events is not None
        try:
            self._events.register(sock, select.EPOLLIN)
        except FileExistsError:  # (a closed socket's number, reused)
            self._events.modify(sock, select.EPOLLIN)

    def _ready(self) -> None:
        self._spawner.read_ready()
        self._watcher.process_ready()

    def start(self, launch: Launch) -> Started:
        # A missing folder is refused here, with a clear reason, not in the job's log.
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
        token = launch.job.token or ""
        read_end, write_end = os.pipe()
        try:
            self._spawner.start(launch, cwd, write_end)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the spawner holds the only write end now
        self._end_fds[token] = read_end
        if self.defer_identity:
            return Started(pid=None, proc_start=None)
        pid, born, error = self._spawner.result_of(token)
        if pid is None:
            self._end_fds.pop(token, None)
            os.close(read_end)
            raise OSError(error or "the spawner did not start the job")
        return Started(pid=pid, proc_start=_start_time(pid, born))

    #: Return from :meth:`start` at once, with ``Started.pid`` and ``proc_start`` None,
    #: and leave the caller to ask :meth:`identify` later (the dispatcher does, before
    #: its next transaction): the next job's start then does not wait for this one's
    #: ``exec``.  A job that cannot start then ends with code 127 and the reason.
    defer_identity = False

    def identify(self, job: Job, wait: bool = True) -> tuple[int | None, float | None] | None:
        """(pid, start time) of a job :meth:`start` started; (None, None) if its process
        could not be started (its end, code 127, is then reported as any other); None
        if, without ``wait``, the spawner's reply has not come yet."""
        token = job.token or ""
        if not wait and not self._spawner.has_reply(token):
            return None
        pid, born, _ = self._spawner.result_of(token)
        return pid, (_start_time(pid, born) if pid is not None else None)

    def adopt(self, job: Job, on_exit: OnExit) -> int | None:
        """Watch ``job`` if the spawner still has it (it is running, or just ended and
        its end not yet reported): returns its pid, else None (then it has ended and
        its exit file is written, or it is no child of the spawner).  One question to
        the spawner, so there is no moment where a job that ended has no exit file yet."""
        if not job.token:
            return None
        found = self._spawner.watch(job.token)
        if found is None:
            return None
        pid, fd = found
        self._watch_end(job.evolve(pid=pid), fd, on_exit)
        return pid

    def watch(self, job: Job, on_exit: OnExit) -> None:
        token = job.token or ""
        fd = self._end_fds.pop(token, None)
        if fd is None and token:
            found = self._spawner.watch(token)  # a job a previous engine started
            fd = found[1] if found is not None else None
        if fd is None:
            # Not the spawner's (any more): an orphan whose spawner was killed, or a job
            # of an nbsched that still ran jobs under a launcher shell.  Watch its pid.
            super().watch(job, on_exit)
            return
        self._watch_end(job, fd, on_exit)

    def _watch_end(self, job: Job, fd: int, on_exit: OnExit) -> None:
        """Report ``job``'s end when its end descriptor ``fd`` says it ended."""
        token = job.token or ""

        def ended() -> None:
            exit = _read_end(fd)
            if exit is not None:
                self._told.add(token)
            else:
                found = read_exit(self.run_dir / f"{token}.exit")
                exit = Exit(found[0], at=found[1]) if found is not None else None
            if exit is not None:
                on_exit(job, exit)
                return
            # The spawner went before the job's end: the job may still run, an orphan.
            orphan = job
            if job.pid is None:  # (not identified yet when it was watched)
                pid = self._spawner.pid_of(token) or job_pid(token)
                orphan = job.evolve(pid=pid)
            if orphan.pid is None:
                on_exit(job, Exit(None, SPAWNER_GONE))
                return
            if orphan.proc_start is None:
                orphan = orphan.evolve(proc_start=process_start_time(orphan.pid))
            super(DirectExecutor, self).watch(orphan, lambda j, e: on_exit(j, _orphaned(e)))

        self._watcher.add_fd(fd, ended)

    def forget(self, jobs: list[Job]) -> None:
        """These jobs' ends are in the database: acknowledge those the spawner told (it
        keeps each until then, and wrote an exit file only if it had to); remove the
        exit files of the others (read from their files: a spawner that was killed, or
        an end recorded at recovery)."""
        told = {job.token for job in jobs if job.token in self._told}
        self._told -= told
        # (all of them: the spawner also keeps, until then, an end it had to write)
        acked = self._spawner.ack([job.token for job in jobs if job.token])
        # (not acknowledged: no spawner connected)
        super().forget([job for job in jobs if not (acked and job.token in told)])

    def close(self) -> None:
        super().close()
        for fd in self._end_fds.values():
            os.close(fd)
        self._end_fds.clear()
        self._spawner.close()
        if self._events is not None:
            self._events.close()


def _start_time(pid: int, born: int | None) -> float | None:
    """A job process's start time: from the spawner's clock reading at its spawn (no
    ``/proc`` read on the dispatcher's path, where it was ~10% of its time), else (a
    system without ``CLOCK_BOOTTIME``) from ``/proc``."""
    return start_time_at(born) if born is not None else process_start_time(pid)


def _read_end(fd: int) -> Exit | None:
    """How the spawner said a job ended, from its end descriptor (None if it said
    nothing: it was killed)."""
    try:
        code, reason, at = msg.decode_end(os.read(fd, 4096))
        return Exit(code, reason, at)
    except (OSError, ValueError):
        return None


def _orphaned(exit: Exit) -> Exit:
    return exit if exit.code is not None else Exit(None, SPAWNER_GONE)
