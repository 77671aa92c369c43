"""One process's connections to ``state.db``: a write transaction, per-thread
readers, waiting out another process's lock, and SQLite's errors in nbsched's words.

Several processes open the same file.  Writes that read first use ``BEGIN
IMMEDIATE``; a database another process has locked is retried (:func:`retry_locked`,
the one retry loop), so no "database is locked" reaches the user.  Reads go through
a connection of their own per thread and take no lock: in WAL mode a reader sees
the last commit and never waits for a writer.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ClosedError, StateDirError
from . import schema
from .statedir import create_private_file

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a write waits for another process's lock, and a read (or the switch of a
#: new database to WAL) for one, before giving up.
WRITE_WAIT_S = 60.0
READ_WAIT_S = 30.0


def retry_locked(op: Callable[[], T], timeout_s: float, path: Path) -> T:
    """Run ``op``, retrying while another process holds the database's lock.

    SQLite answers "database is locked" at once, without its busy handler, to a
    ``BEGIN IMMEDIATE`` while another writer commits, to a reader while another
    process recovers the WAL after a crash, and to the switch of a new database to
    WAL while several processes open a fresh state directory together: each must
    wait, not fail.  Other errors are raised as they are.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            return op()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise StateDirError(f"{path} stayed locked for {timeout_s:g} s") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def is_storage_error(exc: BaseException) -> bool:
    """An error of the database file (locked, full, corrupt...), not of nbsched's SQL."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def storage_error(path: Path, exc: sqlite3.Error) -> StateDirError:
    """``exc`` as the user should read it: what is wrong with which file, what to do."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorname", "") or ""
    if code.startswith(("SQLITE_FULL", "SQLITE_IOERR")) or (
        "disk" in text and ("full" in text or "I/O" in text)
    ):
        return StateDirError(
            f"cannot write {path}: the disk is full or failing ({text}); nothing was "
            f"changed. Free space and try again."
        )
    if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        return StateDirError(
            f"the state database {path} is damaged ({text}); nbsched will not reset it. "
            f"Move it aside to start afresh, or restore it from a backup."
        )
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return StateDirError(
            f"the state database {path} cannot be read ({text}); nbsched will not reset it. "
            f"Move it aside to start afresh, or restore it from a backup."
        )
    return StateDirError(f"cannot use {path}: {text}")


def bump_rev(conn: sqlite3.Connection) -> int:
    """Move the global revision on (inside a write transaction); the new revision."""
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rev'")
    return int(conn.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()[0])


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    return sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )


class Database:
    """The write connection (one writer at a time in this process) and one read
    connection per thread, on ``path``; rows come as plain tuples."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self._lock = threading.RLock()  # the write connection's
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()  # each thread's read connection (see _reader)
        self._readers: dict[threading.Thread, sqlite3.Connection] = {}
        self._readers_lock = threading.Lock()
        self._closed = False
        if not path.exists():
            create_private_file(path)
        try:
            self._conn = _connect(path, busy_timeout_s)
            self._setup()
        except BaseException as exc:
            if hasattr(self, "_conn"):
                self._conn.close()
            if not isinstance(exc, sqlite3.DatabaseError):
                raise
            raise StateDirError(
                f"the state database {path} cannot be read ({exc}); nbsched will not "
                f"reset it. Move it aside to start afresh, or restore it from a backup."
            ) from exc
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists() and (side.stat().st_mode & 0o077):
                os.chmod(side, 0o600)

    def _setup(self) -> None:
        """WAL mode, the schema, and a refusal of a layout newer than this code's."""
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        wal = lambda: str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])  # noqa: E731
        if retry_locked(wal, self._busy_timeout_s, self.path).lower() != "wal":
            raise StateDirError(f"{self.path}: cannot switch the database to WAL mode")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self.write():
            schema.create(conn)
        found = schema.version(conn)
        if found > schema.SCHEMA_VERSION:
            raise StateDirError(
                f"{self.path} was written by a newer nbsched (schema {found}); upgrade nbsched"
            )

    def close(self) -> None:
        with self._lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
            for conn in self._readers.values():
                conn.close()
            self._readers.clear()

    def check_open(self) -> None:
        if self._closed:  # (not "cannot be read": the database is fine)
            raise ClosedError(f"{self.path}: this store is closed (close() was called)")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, retried while another process holds the lock.

        Any failure rolls back (if SQLite has not already done so itself, as it does
        on a full disk) and is raised as a :class:`StateDirError` naming the file.
        """
        with self._lock:
            self.check_open()
            try:
                retry_locked(lambda: self._conn.execute("BEGIN IMMEDIATE"), WRITE_WAIT_S, self.path)
            except sqlite3.DatabaseError as exc:
                raise storage_error(self.path, exc) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error) and is_storage_error(exc):
                    raise storage_error(self.path, exc) from exc
                raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.warning("rolling back a transaction on %s failed", self.path)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query on this thread's own read connection (one statement: one
        consistent snapshot); rows as plain tuples.

        Reads take no lock, so a thread reading (a ``wait()``, a status display) does
        not hold up the dispatcher's writes, nor the other way round.
        """
        conn = self._reader()
        try:
            return retry_locked(
                lambda: conn.execute(sql, params).fetchall(), READ_WAIT_S, self.path
            )
        except sqlite3.DatabaseError as exc:
            if not is_storage_error(exc):
                raise
            raise storage_error(self.path, exc) from exc

    def _reader(self) -> sqlite3.Connection:
        self.check_open()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._readers_lock:
            self.check_open()
            try:
                conn = _connect(self.path, self._busy_timeout_s)
            except sqlite3.DatabaseError as exc:
                raise storage_error(self.path, exc) from exc
            # Connections of threads that have ended are closed here (one per thread).
            for thread in [t for t in self._readers if not t.is_alive()]:
                self._readers.pop(thread).close()
            self._readers[threading.current_thread()] = conn
        self._local.conn = conn
        return conn


class StorePart:
    """What each part of :class:`~nbsched.store.Store` works through."""

    path: Path
    _db: Database
