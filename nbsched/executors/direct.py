"""The direct executor: each job a process of its own, started by the spawner.

The jobs are children of the state directory's spawner
(:mod:`nbsched.executors.spawner`), not of the kernel, so they outlive it and their
exit codes are recorded whether or not an engine is alive.  Each job leads a
session of its own; its stdout and stderr go to its log file (mode 0600, appended
to across attempts).  Nothing goes through a shell except a command job's own
``bash -c``.

:class:`SpawnerClient` is an engine's connection to the spawner, which it starts
when none runs.  A job's end reaches the engine through a pipe: the spawner writes
the exit code to it once the code is on disk, and closes it; the engine waits on
that pipe in the dispatcher's own ``select``, like a pidfd.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..jobs import Job
from . import spawner as _spawner
from .base import (
    Exit,
    Launch,
    OnExit,
    Started,
    find_by_token,
    kill_tree,
    process_start_time,
    read_exit_file,
    same_process_alive,
)
from .watcher import ProcessWatcher

logger = logging.getLogger(__name__)

#: How long a request to the spawner may take before it is given up as hung.
SPAWNER_TIMEOUT_S = 60.0
SPAWNER_GONE = (
    "the job's process ended without recording an exit code (nbsched's spawner "
    "process, its parent, was killed while the job ran)"
)


def open_log(path: Path) -> int:
    """Open (create 0600) a job's log for appending; returns the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


class LocalProcessExecutor:
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
            code = read_exit_file(exit_file)
            if code is not None:
                on_exit(job, Exit(code))
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

    def close(self) -> None:
        self._watcher.close()


class DirectExecutor(LocalProcessExecutor):
    name = "direct"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self._spawner = SpawnerClient(run_dir)
        self._end_fds: dict[int, int] = {}  # pid -> the end descriptor of a job started here

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
        read_end, write_end = os.pipe()
        try:
            pid, watched = self._spawner.start(launch, cwd, write_end)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the spawner holds the only write end now
        if watched:
            self._end_fds[pid] = read_end
        else:
            os.close(read_end)
        if self.defer_start_time:
            return Started(pid=pid, proc_start=None)
        return Started(pid=pid, proc_start=process_start_time(pid))

    #: Leave ``Started.proc_start`` None for the caller to read (the dispatcher does,
    #: once all the jobs of its cycle are started).
    defer_start_time = False

    def watch(self, job: Job, on_exit: OnExit) -> None:
        fd = self._end_fds.pop(job.pid, None) if job.pid is not None else None
        if fd is None and job.token:
            fd = self._spawner.watch(job.token)  # a job a previous engine started
        if fd is None:
            # Not the spawner's (any more): an orphan whose spawner was killed, or a job
            # of an nbsched that still ran jobs under a launcher shell.  Watch its pid.
            super().watch(job, on_exit)
            return
        exit_file = self.run_dir / f"{job.token}.exit"

        def ended() -> None:
            code = _read_code(fd)
            if code is None:
                code = read_exit_file(exit_file)
            if code is not None:
                on_exit(job, Exit(code))
                return
            # The spawner went before the job's end: the job may still run, an orphan.
            orphan = job
            if job.pid is not None and job.proc_start is None:
                orphan = replace(job, proc_start=process_start_time(job.pid))
            super(DirectExecutor, self).watch(orphan, lambda j, e: on_exit(j, _orphaned(e)))

        self._watcher.add_fd(fd, ended)

    def close(self) -> None:
        super().close()
        for fd in self._end_fds.values():
            os.close(fd)
        self._end_fds.clear()
        self._spawner.close()


def _read_code(fd: int) -> int | None:
    """The exit code the spawner wrote to an end descriptor (None if it wrote none)."""
    try:
        return int(os.read(fd, 64))
    except (OSError, ValueError):
        return None


def _orphaned(exit: Exit) -> Exit:
    return exit if exit.code is not None else Exit(None, SPAWNER_GONE)


class SpawnerError(RuntimeError):
    """The spawner could not be started or reached."""


class SpawnerClient:
    """An engine's connection to the spawner of one run folder.

    Requests are synchronous (one line out, one line back).  The connection is made,
    and the spawner started if none runs, at the first job; a spawner found gone is
    replaced at the next one.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._path = str(run_dir / _spawner.SOCKET_NAME)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._base: dict[str, str] = {}

    def start(self, launch: Launch, cwd: str, end_fd: int) -> tuple[int, bool]:
        """Have the spawner start ``launch``; returns (pid, whether ``end_fd`` is the
        spawner's).  Raises with the spawner's reason when the job cannot start."""
        token = launch.job.token or ""
        with self._lock:
            for attempt in (1, 2):
                self._connect(start=True)
                base = self._base
                env = launch.env
                request = {
                    "op": "start",
                    "token": token,
                    "argv": list(launch.argv),
                    "env": {k: v for k, v in env.items() if base.get(k) != v},
                    "unset": [k for k in base if k not in env],
                    "cwd": cwd,
                    "log": str(launch.log_path),
                    "exit": str(launch.exit_path),
                }
                try:
                    reply = self._request(request, end_fd)
                except (OSError, ValueError) as exc:
                    self._disconnect()
                    # Did the spawner start the job before it went?  Then it runs, an
                    # orphan: never start it twice.
                    found = _session_leader(token)
                    if found is not None:
                        return found, False
                    if attempt == 2:
                        raise SpawnerError(f"nbsched's spawner stopped answering: {exc}") from exc
                    continue
                if not reply.get("ok"):
                    raise OSError(reply.get("error") or "the spawner refused the job")
                return int(reply["pid"]), True
        raise AssertionError("unreachable")

    def watch(self, token: str) -> int | None:
        """A new end descriptor of the running job ``token``, or None if the spawner
        (if any runs) does not have it: then the job has ended, or is not its child."""
        read_end, write_end = os.pipe()
        try:
            with self._lock:
                if self._connect(start=False):
                    reply = self._request({"op": "watch", "token": token}, write_end)
                    if reply.get("ok") and reply.get("pid") is not None:
                        return read_end
        except (OSError, ValueError):
            with self._lock:
                self._disconnect()
        finally:
            os.close(write_end)
        os.close(read_end)
        return None

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    # -- the connection ---------------------------------------------------------------

    def _connect(self, start: bool) -> bool:
        """Connect (starting a spawner if ``start`` and none runs); False if not."""
        if self._sock is not None:
            return True
        deadline = time.monotonic() + 10.0
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(SPAWNER_TIMEOUT_S)
                sock.connect(self._path)
                self._sock, self._reader = sock, sock.makefile("rb")
                base = dict(os.environ)
                reply = self._request({"op": "hello", "version": _spawner.VERSION, "env": base})
                if not reply.get("ok"):
                    raise SpawnerError(f"nbsched's spawner refused: {reply.get('error')}")
                self._base = base
                return True
            except (OSError, ValueError):
                # None runs, or one is just ending (it left when idle): start one.
                sock.close()
                self._disconnect()
                if not start:
                    return False
                if time.monotonic() > deadline:
                    raise SpawnerError(
                        f"could not reach nbsched's spawner at {self._path} "
                        f"(see {self.run_dir / _spawner.LOG_NAME})"
                    ) from None
                self._launch()

    def _launch(self) -> None:
        log = open_log(self.run_dir / _spawner.LOG_NAME)
        try:
            proc = subprocess.Popen(
                [sys.executable or "python3", "-I", "-S", _spawner.__file__, str(self.run_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        finally:
            os.close(log)
        assert proc.stdout is not None
        with proc.stdout:
            said = proc.stdout.readline().strip()
        proc.wait()  # (the first process only: the spawner forked off and goes on)
        if said == b"exists":
            time.sleep(0.01)  # another one runs, perhaps just ending: look again
        elif said != b"ready":
            raise SpawnerError(
                f"nbsched's spawner did not start (exit code {proc.returncode}; "
                f"see {self.run_dir / _spawner.LOG_NAME})"
            )

    def _disconnect(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None

    def _request(self, request: Mapping[str, Any], fd: int | None = None) -> dict[str, Any]:
        assert self._sock is not None
        data = json.dumps(request).encode() + b"\n"
        sent = socket.send_fds(self._sock, [data], [fd]) if fd is not None else 0
        if sent < len(data):
            self._sock.sendall(data[sent:])
        line = self._reader.readline()
        if not line:
            raise ConnectionResetError("the spawner closed the connection")
        reply: dict[str, Any] = json.loads(line)
        return reply


def _session_leader(token: str) -> int | None:
    """The pid of the process carrying ``token`` that leads its session, if any."""
    for proc in find_by_token(token):
        try:
            if os.getsid(proc.pid) == proc.pid:
                return proc.pid
        except OSError:
            continue
    return None
