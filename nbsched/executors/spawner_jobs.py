"""The spawner's children: starting a job, reaping it, ending what it left behind, and
keeping its end until an engine has recorded it (see :mod:`nbsched.executors.spawner`
for why each is done so).

Like the spawner, this module imports nothing but the standard library.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import messages as msg
    from .environ import environ_value
else:  # run by its path, from spawner.py (which put this folder on sys.path)
    import messages as msg
    from environ import environ_value

#: The signals a job must have set back to their default disposition: those ignored
#: here (Python ignores SIGPIPE and SIGXFSZ), since an ignored signal stays ignored
#: across exec; a handled one is reset by exec itself.
DEFAULT_SIGNALS = tuple(
    s
    for s in signal.valid_signals()
    if s not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(s) == signal.SIG_IGN
)
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND  # no O_CLOEXEC: it becomes fd 1


class _Job:
    __slots__ = ("token", "pid", "exit_path", "end_fds")

    def __init__(self, token: str, pid: int, exit_path: str, end_fd: int) -> None:
        self.token = token
        self.pid = pid
        self.exit_path = exit_path
        self.end_fds = [end_fd]


class _Ended:
    """An end told to the engines, kept until one acknowledges it; ``at``: when the job
    was reaped (the wall clock), its end time for an engine that learns of it later."""

    __slots__ = ("exit_path", "code", "at", "written")

    def __init__(self, exit_path: str, code: int, at: float) -> None:
        self.exit_path = exit_path
        self.code = code
        self.at = at
        self.written = False  # its exit file is written


class Children:
    """The jobs this spawner started and has not reaped, and the ends it keeps."""

    def __init__(self) -> None:
        self.jobs: dict[int, _Job] = {}  # by pid
        self.by_token: dict[str, _Job] = {}
        self.ended: dict[str, _Ended] = {}  # by token: told, not yet acknowledged
        self._group = os.getpgid(0)
        #: Where this process's children are listed, if orphans come to it (see the
        #: spawner's doc); None: only the jobs' process groups are ended.
        self._children = _subreaper()

    def start(self, req: msg.Start, env: dict[str, str], end_fd: int) -> dict[str, Any]:
        """Start the job ``req`` asks for; the reply to it."""
        token, exit_path, log = req["token"], req["exit"], req["log"]
        argv, cwd = list(req["argv"]), req["cwd"]
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
            self._tell(token, exit_path, [end_fd], msg.START_FAILED, time.time(), reason)
            return {"ok": False, "error": reason}
        os.chdir("/")  # (holds no folder of a user's between jobs)
        job = _Job(token, pid, exit_path, end_fd)
        self.jobs[pid] = job
        self.by_token[token] = job
        return {"ok": True, "pid": pid, "born": born}

    def watch(self, token: str, end_fd: int) -> int | None:
        """Give the job ``token`` one more end descriptor: its pid, or None (then the
        descriptor is closed) if it has ended, or is not known; an ended one's exit
        file is written then, for the asker to read."""
        job = self.by_token.get(token)
        if job is not None:
            job.end_fds.append(end_fd)
            return job.pid
        close(end_fd)
        end = self.ended.get(token)
        if end is not None and not end.written:
            end.written = _write_exit(end.exit_path, end.code, end.at)
        return None

    def reap(self) -> None:
        """Reap the children that have exited, and tell the ends of the jobs among them."""
        orphan_reaped = False
        while True:
            pid = _exited_child()
            if pid is None:
                if orphan_reaped:
                    # Its own children (in a session of their own) came to this process
                    # as it died: end them too.
                    self.end_leftovers()
                return
            if pid in self.jobs:
                # Its process group first, while the job's main process is a zombie:
                # until it is reaped, no new process or group can take its id.
                _kill_group(pid)
            try:
                _, status = os.waitpid(pid, 0)  # (it has exited: this does not block)
            except ChildProcessError:
                continue
            at = time.time()
            job = self.jobs.pop(pid, None)
            if job is None:
                orphan_reaped = True  # (a leftover that was ended: an orphan it adopted)
                continue
            self.by_token.pop(job.token, None)
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            self.end_leftovers()  # before the GPUs can go to another job
            self._tell(job.token, job.exit_path, job.end_fds, code, at)

    def _tell(
        self,
        token: str,
        exit_path: str,
        end_fds: list[int],
        code: int,
        at: float,
        reason: str = "",
    ) -> None:
        """Tell a job's end (its ``code``, at time ``at``) to the engines (it is kept
        until one acknowledges it), or, if none could be told, keep it on disk for the
        next one."""
        told = [_end(fd, code, at, reason) for fd in end_fds]
        if any(told):
            self.ended[token] = _Ended(exit_path, code, at)
        else:
            _write_exit(exit_path, code, at)

    def end_leftovers(self) -> int:
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

    def ack(self, tokens: list[str]) -> None:
        """Those jobs' ends are in the database: forget them (and their exit files)."""
        for token in tokens:
            end = self.ended.pop(token, None)
            if end is not None and end.written:
                try:
                    os.unlink(end.exit_path)
                except OSError:
                    pass

    def write_ended(self) -> None:
        """Write the exit file of every end not acknowledged yet."""
        for end in self.ended.values():
            if not end.written:
                end.written = _write_exit(end.exit_path, end.code, end.at)


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
    return environ_value(pid, "NBSCHED_JOB_TOKEN")


def _end(fd: int, code: int, at: float, reason: str = "") -> bool:
    """Tell an engine how a job ended (also when the disk is full), and close its end
    descriptor.  False if it could not be told (it is gone)."""
    try:
        os.write(fd, msg.encode_end(code, at, reason))
        told = True
    except OSError:  # (that engine is gone)
        told = False
    close(fd)
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


def _write_exit(path: str, code: int, at: float) -> bool:
    """Write a job's exit file (False if it could not be written)."""
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, msg.encode_exit(code, at))
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return True
    except OSError as exc:  # (a full disk, or the state directory was removed)
        log(f"could not write {path}: {exc}")
        return False


def log(message: str) -> None:
    """A line to the spawner's log (its stderr); never raises (the disk may be full)."""
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} nbsched spawner: {message}", file=sys.stderr)
    except Exception:
        pass


def close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
