"""The spawner: one small process per state directory that starts the direct executor's
jobs, is their parent, and records how each one ended.

Why a process of its own: a job must outlive the kernel that started it, and its
exit code must be recorded even when no engine is alive to see it.  The spawner is
started by the first engine that needs it, in a session of its own (so restarting
the kernel does not kill it), and lives while an engine is connected or a job of
its runs.  For every job it:

* starts the command with ``posix_spawn`` in a new session (``setsid``), in the
  job's folder, stdin from ``/dev/null``, stdout and stderr to the job's log, every
  signal at its default disposition (a job's ``yes | head`` ends by ``SIGPIPE``, as
  in a terminal), and no other descriptor;
* reaps it, ends what it left running (below), and writes ``CODE TIME[ REASON]``
  (128+N for a job killed by signal N, as a shell reports it; the time it was reaped:
  the job's true end) to the *end descriptors* engines gave it for that job, and
  closes them.  It keeps the code until an engine
  *acknowledges* it (``ack``, sent once the end is in the database), and writes it
  to ``run/<token>.exit`` (atomically: a temporary file renamed) only where it may be
  needed: when no engine could be told, when a connection ends (its engine may have
  died before recording the end), when an engine asks for the job (``watch``), and
  before the spawner exits.  So a job
  costs one file (its log), not three more operations on the state directory (an
  exit file's create, rename and removal): on a slow or network file system those
  were most of the cost of a short job.

**What a job leaves behind** is ended with it: a job's main process may exit while
processes it started run on (``cmd &``, a data loader's workers, ``nohup``), and they
would hold the GPU the next job is given.  The spawner sends ``SIGKILL`` to the job's
process group (the session it started the job in) before it reaps the job's main
process (so the group's id cannot have gone to another) and tells its end.  Being a
*child subreaper* (``PR_SET_CHILD_SUBREAPER``: orphans below it come to it instead of
to init), it also kills each orphan of its own that belongs to no running job, at each
job's end and whenever an orphan it killed is reaped (that one's own children come to
it then): one that left the job's session (``setsid``, a daemon's double fork) is
known by the ``NBSCHED_JOB_TOKEN`` in its environment (one without it is ended once no
job runs: whose it is cannot be told).  It does not exit while such orphans remain.
(Where there is no ``/proc`` or no subreaper, only the process group is ended.)

An engine learns of a job's end from its end descriptor: the write end of a pipe it
passed to the spawner (``SCM_RIGHTS``), whose read end it waits on as on a pidfd, in
the dispatcher's own ``select``.  It reads the exit code from the pipe (so it needs
no file read, and has the code even when a full disk kept the file from being
written); a pipe closed with nothing in it means the spawner died.  A restarted
engine asks for a new end descriptor of each job it finds running (``watch``); a
job the spawner does not know has ended, and its exit file is already written.

If the spawner itself is killed, its pipes close, the engines find no exit file,
and they watch the jobs (now orphans) by pid; their exit codes are lost, and they
are recorded as failed with that reason.  The next job starts a new spawner.  (An end
already written to an engine's pipe is still read from it: the spawner's death loses
it only if that engine also dies before recording it.)

The protocol (requests, replies, the end descriptors' lines) is defined in
:mod:`nbsched.executors.messages`, which the engine's client
(:mod:`nbsched.executors.spawner_client`) imports too; the children's side (starting,
reaping, ending what a job left behind) is in :mod:`nbsched.executors.spawner_jobs`.

These files import nothing but the standard library, and the spawner runs by its path
(``python -I -S spawner.py RUN_DIR``), so starting it imports neither nbsched nor
anything installed.  A second spawner for the same folder sees the first one's lock
(``run/spawner.lock``), says ``exists`` and exits.  It leaves once no engine is
connected and no job of its runs for :data:`~nbsched.executors.messages.IDLE_EXIT_S`
seconds (or what ``NBSCHED_SPAWNER_IDLE_EXIT_S`` in its environment says).
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING or __package__:
    from . import messages as msg
    from .spawner_jobs import Children, close, log
else:  # run by its path: its folder is not on sys.path (-I); after the standard library
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    import messages as msg
    from spawner_jobs import Children, close, log


class _Conn:
    __slots__ = ("sock", "buf", "fds", "env", "gone")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fds: list[int] = []
        self.env: dict[str, str] = {}
        self.gone = False  # the engine no longer reads the replies


class Spawner:
    """The server: engines' connections and their requests, and the loop that also
    reaps the children when they exit."""

    def __init__(
        self, run_dir: str, listener: socket.socket, idle_exit_s: float = msg.IDLE_EXIT_S
    ) -> None:
        self.run_dir = run_dir
        self.listener = listener
        self.idle_exit_s = idle_exit_s
        self.sel = selectors.DefaultSelector()
        self.children = Children()
        self.conns: dict[int, _Conn] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "child")

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        idle_since: float | None = None
        while True:
            if self.conns or self.children.jobs:
                idle_since = None
                timeout = None
            else:
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= self.idle_exit_s:
                    if not self.children.end_leftovers():
                        return
                    idle_since = now  # (leftovers: ended and reaped first, not left to init)
                timeout = self.idle_exit_s - (now - idle_since)
            try:
                for key, _ in self.sel.select(timeout):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "child":
                        _drain(self._wake_r)
                        self.children.reap()
                    else:
                        self._read(key.data)
                self.children.reap()  # (a SIGCHLD that came while a request was served)
            except Exception:  # never end with jobs whose exit codes are still to come
                log(traceback.format_exc())
                time.sleep(0.1)  # (not a busy loop, if it happens again at once)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        conn = _Conn(sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        for fd in conn.fds:
            close(fd)
        conn.fds.clear()
        # Its engine may have died before recording the ends it was told: keep them
        # on disk for the next one.  (The others' too: one write each, once.)
        self.children.write_ended()

    def _read(self, conn: _Conn) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(conn.sock, 65536, 64)
        except OSError:
            data, fds = b"", []
        for fd in fds:
            os.set_inheritable(fd, False)
        conn.fds.extend(fds)
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        if len(conn.buf) > msg.MAX_REQUEST:
            self._drop(conn)
            return
        while b"\n" in conn.buf:
            line, conn.buf = conn.buf.split(b"\n", 1)
            reply = self._request(conn, line)
            if reply is None or conn.gone:
                continue
            try:
                conn.sock.sendall(msg.encode(reply))
            except OSError:
                # The engine is gone (killed, say).  What it sent before still counts:
                # its jobs are marked running in the store, so they must start.
                conn.gone = True

    def _request(self, conn: _Conn, line: bytes) -> dict[str, Any] | None:
        """Serve one request line; its reply (None: it has none)."""
        taken: list[int] = []
        try:
            req = msg.decode(line)
            if req.get("op") == msg.ACK:
                self.children.ack(cast(msg.Ack, req)["tokens"])
                return None
            if req.get("op") in msg.WITH_FD and conn.fds:
                # (one read may bring several requests, each with its descriptor)
                taken.append(conn.fds.pop(0))
            return self._serve(conn, req, taken)
        except Exception as exc:  # a bad request must not end the spawner
            log(traceback.format_exc())
            for fd in taken:  # (a request that raised kept no descriptor)
                close(fd)
            return {"ok": False, "error": str(exc) or type(exc).__name__}

    # -- requests ---------------------------------------------------------------------

    def _serve(self, conn: _Conn, req: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op = req.get("op")
        if op == msg.HELLO:
            for fd in fds:
                close(fd)
            hello = cast(msg.Hello, req)
            if hello.get("version") != msg.VERSION:
                return {"ok": False, "error": f"protocol version {msg.VERSION} only"}
            conn.env = dict(hello["env"])
            return {"ok": True, "pid": os.getpid(), "version": msg.VERSION}
        if op not in msg.WITH_FD:
            raise ValueError(f"unknown op {op!r}")
        if len(fds) != 1:
            raise ValueError(f"{op!r} needs an end descriptor, sent with it")
        if op == msg.START:
            start = cast(msg.Start, req)
            env = dict(conn.env)
            env.update(start["env"])
            for name in start["unset"]:
                env.pop(name, None)
            return self.children.start(start, env, fds[0])
        pid = self.children.watch(cast(msg.Watch, req)["token"], fds[0])
        return {"ok": True, "pid": pid}

    def write_ended(self) -> None:
        """Write the exit file of every end not acknowledged yet."""
        self.children.write_ended()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


def main(argv: list[str]) -> int:
    """Start a spawner for ``RUN_DIR`` in the background.

    Prints ``ready`` once it accepts connections (or ``exists`` when one already
    runs for that folder), then the first process exits and the spawner, forked off,
    goes on: its parent is then init, not the engine, so it never lingers as a zombie.
    """
    (run_dir,) = argv
    run_dir = os.path.abspath(run_dir)
    lock_fd = os.open(os.path.join(run_dir, msg.LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("exists", flush=True)
        return 0
    path = os.path.join(run_dir, msg.SOCKET_NAME)
    try:
        os.unlink(path)  # a dead spawner's: nobody else holds the lock
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.chdir(run_dir)  # (bound by a relative name: a socket's path is limited to 107 bytes)
    listener.bind(msg.SOCKET_NAME)
    os.chdir("/")
    os.chmod(path, 0o600)  # (the folder is 0700 already; every file of ours is 0600)
    listener.listen(64)
    if os.fork():
        os._exit(0)  # the child keeps the lock and the socket
    try:
        spawner = Spawner(run_dir, listener, msg.idle_exit_s(os.environ))
        print("ready", flush=True)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        spawner.run()
        spawner.write_ended()  # (none left, normally: each closed connection wrote them)
    finally:
        try:
            os.unlink(path)  # (before the lock goes: a new spawner may bind it then)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
