"""Who dispatches: one process per state directory, chosen by an OS file lock.

``flock`` on ``state_dir/dispatcher.lock`` is held by the dispatching process and
released by the kernel when that process dies, however it dies; a standby
process then takes it.  Other processes reach the dispatcher through a FIFO,
``state_dir/wake.fifo``: after committing a change they write a byte to it, which
wakes the dispatcher at once (no polling on that path).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from ..errors import StateDirError


class DispatcherLease:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "dispatcher.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def holder_pid(self) -> int | None:
        """The pid written by the current holder, if any process holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = os.read(fd, 32).decode(errors="replace").strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


class WakeChannel:
    """The FIFO through which any process wakes the dispatcher."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "wake.fifo"

    def ensure(self) -> None:
        try:
            os.mkfifo(self.path, 0o600)
        except FileExistsError:
            st = os.lstat(self.path)
            if not stat.S_ISFIFO(st.st_mode):
                raise StateDirError(f"{self.path} exists and is not a FIFO") from None
        os.chmod(self.path, 0o600)

    def open_reader(self) -> int:
        """For the dispatcher: a non-blocking descriptor that is readable when poked."""
        self.ensure()
        # O_RDWR keeps a writer open ourselves, so the FIFO never reports end-of-file.
        return os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def poke(self) -> None:
        """Wake the dispatcher, if one is listening; never blocks, never raises."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # no FIFO yet, or nobody reading it
        try:
            os.write(fd, b"x")
        except OSError:
            pass  # full: the dispatcher has wake-ups pending anyway
        finally:
            os.close(fd)
