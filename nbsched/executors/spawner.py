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
* reaps it, ends what it left running (below), and writes ``CODE[ REASON]`` (128+N
  for a job killed by signal N, as a shell reports it) to the *end descriptors*
  engines gave it for that job, and closes them.  It keeps the code until an engine
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

Protocol: a Unix stream socket ``run/spawner.sock`` (the ``run`` folder is 0700), one
JSON request per line, one JSON reply line each, descriptors attached to the request
they belong to:

* ``{"op": "hello", "version": 2, "env": {...}}`` -> ``{"ok": true, "pid": P}``:
  the environment the connection's jobs start from.  Version 1 (an engine of an older
  nbsched) is served too: its jobs' exit files are written at once, as it expects;
* ``{"op": "start", "token", "argv", "env", "unset", "cwd", "log", "exit"}`` plus
  one end descriptor -> ``{"ok": true, "pid": P, "born": NS}`` or ``{"ok": false,
  "error": "..."}``; ``born`` is ``CLOCK_BOOTTIME`` in ns just before the spawn (where
  the clock exists): the start time ``/proc/P/stat`` gives, to its 10 ms tick, so an
  engine need not read it;
  ``env`` and ``unset`` are the job's differences from the hello environment.  A job
  that cannot start (a missing program or folder) ends at once: exit code 127, the
  reason in its log, its exit file and its end descriptors, like any other end.  An
  engine may send several starts before it reads their replies;
* ``{"op": "watch", "token"}`` plus one end descriptor -> ``{"ok": true, "pid": P}``
  for a job still running, ``{"ok": true, "pid": null}`` for one that has ended (its
  exit file is then written) or that it does not know;
* ``{"op": "ack", "tokens": [...]}`` (no reply): those jobs' ends are recorded; their
  codes are dropped, and their exit files removed if they were written.

This file imports nothing but the standard library and runs by its path
(``python -I -S spawner.py RUN_DIR``), so starting it imports neither nbsched nor
anything installed.  A second spawner for the same folder sees the first one's lock
(``run/spawner.lock``), says ``exists`` and exits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any

VERSION = 2
#: The protocol versions served (1: exit files written at each end, no ``ack``).
VERSIONS = (1, 2)
SOCKET_NAME = "spawner.sock"
LOCK_NAME = "spawner.lock"
LOG_NAME = "spawner.log"
#: How long the spawner stays with no engine connected and no job running.
IDLE_EXIT_S = 2.0
#: The signals a job must have set back to their default disposition: those ignored
#: here (Python ignores SIGPIPE and SIGXFSZ), since an ignored signal stays ignored
#: across exec; a handled one is reset by exec itself.
DEFAULT_SIGNALS = tuple(
    s
    for s in signal.valid_signals()
    if s not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(s) == signal.SIG_IGN
)
_MAX_REQUEST = 16 << 20
#: The requests that come with one end descriptor each.
_WITH_FD = ("start", "watch")
#: The exit code of a job that could not be started (as a shell's "command not found").
START_FAILED = 127


class _Job:
    __slots__ = ("token", "pid", "exit_path", "end_fds", "acked")

    def __init__(self, token: str, pid: int, exit_path: str, end_fd: int, acked: bool) -> None:
        self.token = token
        self.pid = pid
        self.exit_path = exit_path
        self.end_fds = [end_fd]
        self.acked = acked  # every engine told of its end acknowledges it (version 2)


class _Ended:
    """An end told to the engines, kept until one acknowledges it."""

    __slots__ = ("exit_path", "code", "written")

    def __init__(self, exit_path: str, code: int) -> None:
        self.exit_path = exit_path
        self.code = code
        self.written = False  # its exit file is written


class _Conn:
    __slots__ = ("sock", "buf", "fds", "env", "gone", "version")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fds: list[int] = []
        self.env: dict[str, str] = {}
        self.gone = False  # the engine no longer reads the replies
        self.version = 1


class Spawner:
    def __init__(self, run_dir: str, listener: socket.socket) -> None:
        self.run_dir = run_dir
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.jobs: dict[int, _Job] = {}  # by pid
        self.by_token: dict[str, _Job] = {}
        self.ended: dict[str, _Ended] = {}  # by token: told, not yet acknowledged
        self.conns: dict[int, _Conn] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "child")
        self._group = os.getpgid(0)
        #: Where this process's children are listed, if orphans come to it (see the
        #: module doc); None: only the jobs' process groups are ended.
        self._children = _subreaper()

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        idle_since: float | None = None
        while True:
            if self.conns or self.jobs:
                idle_since = None
                timeout = None
            else:
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= IDLE_EXIT_S:
                    if not self._end_leftovers():
                        return
                    idle_since = now  # (leftovers: ended and reaped first, not left to init)
                timeout = IDLE_EXIT_S - (now - idle_since)
            try:
                for key, _ in self.sel.select(timeout):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "child":
                        _drain(self._wake_r)
                        self._reap()
                    else:
                        self._read(key.data)
                self._reap()  # (a SIGCHLD that came while a request was served)
            except Exception:  # never end with jobs whose exit codes are still to come
                _log(traceback.format_exc())
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
            _close(fd)
        conn.fds.clear()
        # Its engine may have died before recording the ends it was told: keep them
        # on disk for the next one.  (The others' too: one write each, once.)
        self.write_ended()

    def write_ended(self) -> None:
        """Write the exit file of every end not acknowledged yet."""
        for end in self.ended.values():
            if not end.written:
                end.written = _write_exit(end.exit_path, end.code)

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
        if len(conn.buf) > _MAX_REQUEST:
            self._drop(conn)
            return
        while b"\n" in conn.buf:
            line, conn.buf = conn.buf.split(b"\n", 1)
            taken: list[int] = []
            try:
                req = json.loads(line)
                if req.get("op") == "ack":
                    self._ack(req["tokens"])
                    continue  # (no reply)
                if req.get("op") in _WITH_FD and conn.fds:
                    # (one read may bring several requests, each with its descriptor)
                    taken.append(conn.fds.pop(0))
                reply = self._serve(conn, req, taken)
            except Exception as exc:  # a bad request must not end the spawner
                _log(traceback.format_exc())
                for fd in taken:  # (a request that raised kept no descriptor)
                    _close(fd)
                reply = {"ok": False, "error": str(exc) or type(exc).__name__}
            if conn.gone:
                continue
            try:
                conn.sock.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                # The engine is gone (killed, say).  What it sent before still counts:
                # its jobs are marked running in the store, so they must start.
                conn.gone = True

    # -- requests ---------------------------------------------------------------------

    def _serve(self, conn: _Conn, req: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op = req.get("op")
        if op == "hello":
            for fd in fds:
                _close(fd)
            if req.get("version") not in VERSIONS:
                accepted = " or ".join(map(str, VERSIONS))
                return {"ok": False, "error": f"protocol version {accepted} only"}
            conn.env = dict(req["env"])
            conn.version = int(req["version"])
            return {"ok": True, "pid": os.getpid(), "version": conn.version}
        if op not in _WITH_FD:
            raise ValueError(f"unknown op {op!r}")
        if len(fds) != 1:
            raise ValueError(f"{op!r} needs an end descriptor, sent with it")
        if op == "start":
            return self._start(conn, req, fds[0])
        if op == "watch":
            job = self.by_token.get(req["token"])
            if job is None:
                _close(fds[0])
                end = self.ended.get(req["token"])
                if end is not None and not end.written:  # (the asker reads the file)
                    end.written = _write_exit(end.exit_path, end.code)
                return {"ok": True, "pid": None}
            job.end_fds.append(fds[0])
            job.acked = job.acked and conn.version >= 2
            return {"ok": True, "pid": job.pid}
        raise AssertionError(op)

    def _start(self, conn: _Conn, req: dict[str, Any], end_fd: int) -> dict[str, Any]:
        token, exit_path, log = req["token"], req["exit"], req["log"]
        argv, cwd = list(req["argv"]), req["cwd"]
        env = dict(conn.env)
        env.update(req["env"])
        for name in req["unset"]:
            env.pop(name, None)
        if token in self.by_token:  # (the caller closes end_fd)
            raise ValueError(f"a job with token {token} is running already")
        try:
            os.chdir(cwd)  # (this process has one thread: nothing else sees it)
            born = _boottime_ns()
            pid = os.posix_spawn(
                _resolve(argv[0], env),
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, log, _LOG_FLAGS, 0o600),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
                setsid=True,
                setsigdef=DEFAULT_SIGNALS,
                setsigmask=(),
            )
        except Exception as exc:  # (OSError mostly: a missing program or folder)
            # The job ends at once, as a shell's "command not found" would: code 127,
            # the reason in its log and to the engines.
            os.chdir("/")
            if isinstance(exc, OSError) and exc.filename is not None:
                reason = f"could not start: {exc.strerror}: {exc.filename!r}"
            else:
                reason = f"could not start: {exc}"
            _append(log, f"nbsched: the job {reason}\n")
            if conn.version < 2:
                _write_exit(exit_path, START_FAILED)
                _end(end_fd, START_FAILED, reason)
            elif _end(end_fd, START_FAILED, reason):
                self.ended[token] = _Ended(exit_path, START_FAILED)
            else:
                _write_exit(exit_path, START_FAILED)
            return {"ok": False, "error": reason}
        os.chdir("/")  # (holds no folder of a user's between jobs)
        job = _Job(token, pid, exit_path, end_fd, acked=conn.version >= 2)
        self.jobs[pid] = job
        self.by_token[token] = job
        return {"ok": True, "pid": pid, "born": born}

    # -- ends -------------------------------------------------------------------------

    def _reap(self) -> None:
        orphan_reaped = False
        while True:
            pid = _exited_child()
            if pid is None:
                if orphan_reaped:
                    # Its own children (in a session of their own) came to this process
                    # as it died: end them too.
                    self._end_leftovers()
                return
            if pid in self.jobs:
                # Its process group first, while the job's main process is a zombie:
                # until it is reaped, no new process or group can take its id.
                _kill_group(pid)
            try:
                _, status = os.waitpid(pid, 0)  # (it has exited: this does not block)
            except ChildProcessError:
                continue
            job = self.jobs.pop(pid, None)
            if job is None:
                orphan_reaped = True  # (a leftover that was ended: an orphan it adopted)
                continue
            self.by_token.pop(job.token, None)
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            self._end_leftovers()  # before the GPUs can go to another job
            if not job.acked:  # (an engine of version 1 reads the file: it comes first)
                _write_exit(job.exit_path, code)
            told = [_end(fd, code) for fd in job.end_fds]  # the engines learn of it now
            if job.acked:
                if any(told):
                    self.ended[job.token] = _Ended(job.exit_path, code)  # until acknowledged
                else:  # no engine could be told: keep it on disk for the next one
                    _write_exit(job.exit_path, code)

    def _end_leftovers(self) -> int:
        """SIGKILL the orphans that came to this subreaper from ended jobs (a job's own
        process group is ended before its main process is reaped); returns how many
        children that are not jobs it has (those just killed included).

        Called at each job's end, whenever such an orphan is reaped (its own children
        came here as it died), and before the spawner exits."""
        if self._children is None:
            return 0
        try:
            with open(self._children, "rb") as fh:
                orphans = [int(p) for p in fh.read().split() if int(p) not in self.jobs]
        except (OSError, ValueError):
            return 0
        running = {job.pid for job in self.jobs.values()}
        for orphan in orphans:
            token = _token_of(orphan)
            if token is None:
                # An environment of its own (env -i): whose it is cannot be told while
                # any job runs, so it is ended once none does.
                if running:
                    continue
            elif token in self.by_token:
                continue  # its job still runs
            try:
                group = os.getpgid(orphan)
                if group != self._group and group not in running:
                    _kill_group(group)
                os.kill(orphan, signal.SIGKILL)
            except OSError:  # (gone meanwhile)
                pass
        return len(orphans)

    def _ack(self, tokens: list[str]) -> None:
        """Those jobs' ends are in the database: forget them (and their exit files)."""
        for token in tokens:
            end = self.ended.pop(token, None)
            if end is not None and end.written:
                try:
                    os.unlink(end.exit_path)
                except OSError:
                    pass


def _subreaper() -> str | None:
    """Make this process the child subreaper of what it starts (Linux); the file that
    lists its children, or None where that cannot be done."""
    children = f"/proc/self/task/{os.getpid()}/children"
    if not os.path.exists(children):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return children


_PR_SET_CHILD_SUBREAPER = 36


def _exited_child() -> int | None:
    """The pid of a child that has exited, left unreaped (None if none has)."""
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return None if info is None else info.si_pid


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:  # (none left, or not ours)
        pass


def _token_of(pid: int) -> str | None:
    """The ``NBSCHED_JOB_TOKEN`` in process ``pid``'s environment, if any."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:
        return None
    for entry in env.split(b"\0"):
        if entry.startswith(b"NBSCHED_JOB_TOKEN="):
            return entry[len(b"NBSCHED_JOB_TOKEN=") :].decode("ascii", "replace")
    return None


def _end(fd: int, code: int, reason: str = "") -> bool:
    """Tell an engine how a job ended (``CODE[ REASON]``; also when the disk is full),
    and close its end descriptor.  False if it could not be told (it is gone)."""
    try:
        os.write(fd, f"{code} {reason}".strip().encode("utf-8", "replace") + b"\n")
        told = True
    except OSError:  # (that engine is gone)
        told = False
    _close(fd)
    return told


def _append(path: str, text: str) -> None:
    try:
        fd = os.open(path, _LOG_FLAGS | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode("utf-8", "replace"))
        finally:
            os.close(fd)
    except OSError:
        pass


def _boottime_ns() -> int | None:
    """``CLOCK_BOOTTIME`` in ns (None where there is none): the clock the kernel
    stamps a new process's start with."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return None if clock is None else time.clock_gettime_ns(clock)


def _resolve(name: str, env: dict[str, str]) -> str:
    """The program ``name`` as the job's own shell would find it: on the job's PATH.

    Remembered, as bash remembers the commands it ran (``hash``), for a PATH of
    absolute folders only, and looked up again if the file is no longer there.
    """
    if "/" in name:
        return name
    search = env.get("PATH", os.defpath)
    key = (name, search)
    path = _FOUND.get(key)
    if path is not None and os.access(path, os.X_OK):
        return path
    folders = search.split(os.pathsep)
    for folder in folders:
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            if all(os.path.isabs(f) for f in folders):  # (else it depends on cwd)
                if len(_FOUND) > 256:
                    _FOUND.clear()
                _FOUND[key] = path
            return path
    raise FileNotFoundError(errno.ENOENT, "not found on the job's PATH", name)


#: (program, PATH) -> where it was found (see _resolve).
_FOUND: dict[tuple[str, str], str] = {}


def _write_exit(path: str, code: int) -> bool:
    """Write a job's exit file (False if it could not be written)."""
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"%d\n" % code)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return True
    except OSError as exc:  # (a full disk, or the state directory was removed)
        _log(f"could not write {path}: {exc}")
        return False


def _log(message: str) -> None:
    """A line to the spawner's log (its stderr); never raises (the disk may be full)."""
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} nbsched spawner: {message}", file=sys.stderr)
    except Exception:
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND  # no O_CLOEXEC: it becomes fd 1


def main(argv: list[str]) -> int:
    """Start a spawner for ``RUN_DIR`` in the background.

    Prints ``ready`` once it accepts connections (or ``exists`` when one already
    runs for that folder), then the first process exits and the spawner, forked off,
    goes on: its parent is then init, not the engine, so it never lingers as a zombie.
    """
    (run_dir,) = argv
    run_dir = os.path.abspath(run_dir)
    lock_fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("exists", flush=True)
        return 0
    path = os.path.join(run_dir, SOCKET_NAME)
    try:
        os.unlink(path)  # a dead spawner's: nobody else holds the lock
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.chdir(run_dir)  # (bound by a relative name: a socket's path is limited to 107 bytes)
    listener.bind(SOCKET_NAME)
    os.chdir("/")
    os.chmod(path, 0o600)  # (the folder is 0700 already; every file of ours is 0600)
    listener.listen(64)
    if os.fork():
        os._exit(0)  # the child keeps the lock and the socket
    try:
        spawner = Spawner(run_dir, listener)
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
