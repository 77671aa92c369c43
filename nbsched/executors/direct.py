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
import select
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..jobs import Job
from . import spawner as _spawner
from .base import (
    Executor,
    Exit,
    Launch,
    OnExit,
    Started,
    find_job_process,
    kill_tree,
    process_start_time,
    read_exit_file,
    same_process_alive,
    start_time_at,
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
                code = read_exit_file(self.run_dir / f"{token}.exit")
                exit = Exit(code) if code is not None else None
            if exit is not None:
                on_exit(job, exit)
                return
            # The spawner went before the job's end: the job may still run, an orphan.
            orphan = job
            if job.pid is None:  # (not identified yet when it was watched)
                pid = self._spawner.pid_of(token) or _job_pid(token)
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
        # (not acknowledged: an older spawner, which wrote each file, or none connected)
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
    spawner that does not send it) from ``/proc``."""
    return start_time_at(born) if born is not None else process_start_time(pid)


def _read_end(fd: int) -> Exit | None:
    """How the spawner said a job ended, from its end descriptor (None if it said
    nothing: it was killed)."""
    try:
        code, _, reason = os.read(fd, 4096).decode("utf-8", "replace").strip().partition(" ")
        return Exit(int(code), reason or None)
    except (OSError, ValueError):
        return None


def _orphaned(exit: Exit) -> Exit:
    return exit if exit.code is not None else Exit(None, SPAWNER_GONE)


class SpawnerError(RuntimeError):
    """The spawner could not be started or reached."""


class SpawnerClient:
    """An engine's connection to the spawner of one run folder.

    The connection is made, and the spawner started if none runs, at the first job; a
    spawner found gone is replaced at the next one.  Starts are pipelined: their
    replies (pids) are read when asked for (:meth:`pid_of`), or before the reply of
    any later request; other requests are synchronous.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._path = str(run_dir / _spawner.SOCKET_NAME)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buf = b""  # what was received of the replies not read yet
        self._base: dict[str, str] = {}
        self._pending: deque[str] = deque()  # tokens of starts whose replies are unread
        self._pids: dict[str, int | None] = {}  # replies read, not yet asked for
        self._born: dict[str, int] = {}  # CLOCK_BOOTTIME at each spawn, by token
        self._errors: dict[str, str] = {}  # why a start was refused, by token
        self.version = _spawner.VERSION  # the protocol the connected spawner speaks
        #: Called with each new connection's socket (an event loop may watch it).
        self.on_connect: Callable[[socket.socket], None] | None = None

    def start(self, launch: Launch, cwd: str, end_fd: int) -> None:
        """Send the spawner ``launch`` (with ``end_fd``); its pid comes with :meth:`pid_of`."""
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
                    self._send(request, end_fd)
                except (OSError, ValueError) as exc:
                    # Not sent (a spawner that left when idle, or was killed): a new one.
                    self._lose_connection()
                    if attempt == 2:
                        raise SpawnerError(f"nbsched's spawner stopped answering: {exc}") from exc
                    continue
                self._pending.append(token)
                return

    def pid_of(self, token: str) -> int | None:
        """The pid of the job ``token`` sent to :meth:`start` (reads its reply if it is
        not read yet); None if it could not start."""
        return self.result_of(token)[0]

    def result_of(self, token: str) -> tuple[int | None, int | None, str | None]:
        """(pid, born, None) of the job ``token`` sent to :meth:`start`, or (None, None,
        why) if it could not start (reads its reply if it is not read yet); ``born``:
        ``CLOCK_BOOTTIME`` ns at the spawn, if the spawner said."""
        with self._lock:
            while token in self._pending:
                self._read_reply()
            return (
                self._pids.pop(token, None),
                self._born.pop(token, None),
                self._errors.pop(token, None),
            )

    def read_ready(self) -> None:
        """Read the replies that have come, without waiting (for an event loop that
        watches the socket: afterwards it is not readable, unless more came)."""
        with self._lock:
            if self._sock is None:
                return
            while self._pending and self._reply_ready():
                self._read_reply()
            if not self._pending and self._sock is not None:
                try:
                    data = os.read(self._sock.fileno(), 65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data = b""
                if data:
                    self._buf += data  # (nothing is expected: kept for the next read)
                else:
                    self._gone(None)

    def has_reply(self, token: str) -> bool:
        """Whether :meth:`pid_of` would answer for ``token`` without waiting."""
        with self._lock:
            while token in self._pending and self._reply_ready():
                self._read_reply()
            return token not in self._pending

    def watch(self, token: str) -> tuple[int, int] | None:
        """(pid, a new end descriptor) of the job ``token``, or None if the spawner (if
        any runs) does not have it: then the job has ended, or is not its child."""
        read_end, write_end = os.pipe()
        try:
            with self._lock:
                if self._connect(start=False):
                    self._send({"op": "watch", "token": token}, write_end)
                    while self._pending:
                        self._read_reply()
                    reply = self._reply()
                    if reply.get("ok") and reply.get("pid") is not None:
                        return int(reply["pid"]), read_end
        except (OSError, ValueError):
            with self._lock:
                self._lose_connection()
        finally:
            os.close(write_end)
        os.close(read_end)
        return None

    def ack(self, tokens: list[str]) -> bool:
        """Tell the spawner these jobs' ends are recorded (it forgets them, and removes
        their exit files if it wrote any); False if it was not told: a spawner of
        protocol version 1 (it wrote each exit file at the end), or none connected."""
        with self._lock:
            if self._sock is None or self.version < 2:
                return False
            try:
                self._send({"op": "ack", "tokens": tokens})
                return True
            except (OSError, ValueError):
                self._lose_connection()
                return False

    def close(self) -> None:
        with self._lock:
            self._lose_connection()

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
                _connect_unix(sock, self._path)
                self._sock, self._buf = sock, b""
                base = dict(os.environ)
                for version in (_spawner.VERSION, 1):
                    # (1: a spawner of an older nbsched, still running its jobs)
                    self._send({"op": "hello", "version": version, "env": base})
                    reply = self._reply()
                    if reply.get("ok"):
                        break
                if not reply.get("ok"):
                    raise SpawnerError(f"nbsched's spawner refused: {reply.get('error')}")
                self.version = int(reply.get("version") or 1)
                self._base = base
                if self.on_connect is not None:
                    self.on_connect(sock)
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

    def _read_reply(self) -> None:
        """Read the reply to the oldest pending start."""
        token = self._pending[0]
        try:
            reply = self._reply()
        except (OSError, ValueError) as exc:
            self._gone(exc)
            return
        self._pending.popleft()
        self._pids[token] = reply.get("pid") if reply.get("ok") else None
        if isinstance(reply.get("born"), int):
            self._born[token] = reply["born"]
        if not reply.get("ok"):
            self._errors[token] = str(reply.get("error"))

    def _gone(self, exc: Exception | None) -> None:
        """The connection ended under us: the spawner was killed (it never leaves while
        an engine is connected).  Said in the engine's log: its running jobs' exit
        codes are lost (each job says so when it ends)."""
        logger.warning(
            "nbsched's spawner for %s ended while this engine was connected (%s); the jobs "
            "it was running go on, but their exit codes will be unknown",
            self.run_dir,
            exc or "end of file",
        )
        self._lose_connection()

    def _lose_connection(self) -> None:
        """The spawner is gone: did it start the jobs whose replies never came?  (Then
        they run, orphans: their pids are found by their tokens; never start them twice.)"""
        self._disconnect()
        for token in self._pending:
            self._pids[token] = _job_pid(token)
        self._pending.clear()

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buf = None, b""

    def _send(self, request: Mapping[str, Any], fd: int | None = None) -> None:
        if self._sock is None:
            raise ConnectionResetError("not connected to the spawner")
        data = json.dumps(request).encode() + b"\n"
        sent = socket.send_fds(self._sock, [data], [fd]) if fd is not None else 0
        if sent < len(data):
            self._sock.sendall(data[sent:])

    def _reply_ready(self) -> bool:
        """Whether a whole reply line has come (reads what has, without waiting)."""
        while b"\n" not in self._buf and self._sock is not None:
            try:
                # (os.read: a socket with a timeout is non-blocking underneath, and its
                # own recv would wait for data up to that timeout, whatever the flags)
                data = os.read(self._sock.fileno(), 65536)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True  # (the next read reports the failure)
            if not data:
                return True
            self._buf += data
        return True

    def _reply(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            data = self._sock.recv(65536) if self._sock is not None else b""
            if not data:
                raise ConnectionResetError("the spawner closed the connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply


def _connect_unix(sock: socket.socket, path: str) -> None:
    """``sock.connect(path)``, also for a path longer than a socket address holds (107
    bytes): then through ``/proc/self/fd`` and a descriptor of the folder."""
    if len(os.fsencode(path)) < 100:
        sock.connect(path)
        return
    folder, name = os.path.split(path)
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


def _job_pid(token: str) -> int | None:
    """The pid of the job's own process, found by its token, if it runs."""
    found = find_job_process(token)
    return found[0] if found is not None else None
