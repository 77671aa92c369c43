"""An engine's connection to the spawner of its state directory
(:mod:`nbsched.executors.spawner`), which it starts when none runs.

The protocol is :mod:`nbsched.executors.messages`.  A job's end reaches the engine
through a pipe it hands the spawner with the job's start: the spawner writes the exit
code to it once it has reaped the job, and closes it; the engine waits on that pipe in
the dispatcher's own ``select``, like a pidfd (see
:class:`~nbsched.executors.direct.DirectExecutor`).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import messages as msg
from . import spawner as _spawner
from .base import Launch
from .process import find_job_process, open_log

logger = logging.getLogger(__name__)

#: How long a request to the spawner may take before it is given up as hung.
SPAWNER_TIMEOUT_S = 60.0


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
        self._path = str(run_dir / msg.SOCKET_NAME)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buf = b""  # what was received of the replies not read yet
        self._base: dict[str, str] = {}
        self._pending: deque[str] = deque()  # tokens of starts whose replies are unread
        self._pids: dict[str, int | None] = {}  # replies read, not yet asked for
        self._born: dict[str, int] = {}  # CLOCK_BOOTTIME at each spawn, by token
        self._errors: dict[str, str] = {}  # why a start was refused, by token
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
                request = msg.Start(
                    op=msg.START,
                    token=token,
                    argv=list(launch.argv),
                    env={k: v for k, v in env.items() if base.get(k) != v},
                    unset=[k for k in base if k not in env],
                    cwd=cwd,
                    log=str(launch.log_path),
                    exit=str(launch.exit_path),
                )
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
                    self._send(msg.watch(token), write_end)
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
        their exit files if it wrote any); False if it was not told (none connected)."""
        with self._lock:
            if self._sock is None:
                return False
            try:
                self._send(msg.ack(tokens))
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
                self._send(msg.hello(base))
                reply = self._reply()
                if not reply.get("ok"):
                    raise SpawnerError(f"nbsched's spawner refused: {reply.get('error')}")
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
                        f"(see {self.run_dir / msg.LOG_NAME})"
                    ) from None
                self._launch()

    def _launch(self) -> None:
        log = open_log(self.run_dir / msg.LOG_NAME)
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
                f"see {self.run_dir / msg.LOG_NAME})"
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
            self._pids[token] = job_pid(token)
        self._pending.clear()

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buf = None, b""

    def _send(self, request: Mapping[str, Any], fd: int | None = None) -> None:
        if self._sock is None:
            raise ConnectionResetError("not connected to the spawner")
        data = msg.encode(request)
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
        return msg.decode(line)


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


def job_pid(token: str) -> int | None:
    """The pid of the job's own process, found by its token, if it runs."""
    found = find_job_process(token)
    return found[0] if found is not None else None
