"""The SQLite store: jobs, their state transitions, GPU pauses and notices.

The database (``state_dir/state.db``, WAL mode) is the one source of truth.  Every
accepted job is committed before ``add_jobs`` returns; every status change is a
row in ``transitions`` with its time; which GPU fractions are in use is derived
from the running jobs (:meth:`Store.allocation`), never kept in a counter.

Several processes open the same file.  Writes that read first use
``BEGIN IMMEDIATE`` and a busy timeout, and a locked database is retried, so no
``database is locked`` reaches the user.  Each write bumps a global revision;
:meth:`Store.changed_since` returns only the jobs written after a revision, so a
dispatcher's work is proportional to what changed, not to the queue length.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .errors import ClosedError, StateDirError, UnknownJobError
from .jobs import Job, JobSpec, JobStatus, can_transition

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rev INTEGER NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    kind TEXT NOT NULL,
    script TEXT,
    args TEXT NOT NULL,
    command TEXT,
    conda_env TEXT,
    required_gpus REAL NOT NULL,
    allowed_gpus TEXT,
    max_retries INTEGER NOT NULL,
    launcher TEXT,
    gpu_arg TEXT,
    cwd TEXT,
    env TEXT NOT NULL,
    name TEXT,
    sweep TEXT,
    params TEXT,
    hash TEXT,
    submitted REAL NOT NULL,
    started REAL,
    ended REAL,
    exit_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    gpus TEXT NOT NULL DEFAULT '[]',
    pid INTEGER,
    proc_start REAL,
    token TEXT,
    log_path TEXT,
    reason TEXT,
    owner_uid INTEGER,
    executor TEXT,
    node TEXT,
    not_before REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, priority, seq);
CREATE INDEX IF NOT EXISTS jobs_rev ON jobs(rev);
CREATE INDEX IF NOT EXISTS jobs_hash ON jobs(hash);
CREATE INDEX IF NOT EXISTS jobs_sweep ON jobs(sweep);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    job_seq INTEGER NOT NULL,
    old TEXT,
    new TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions(job_seq);
CREATE TABLE IF NOT EXISTS gpu_pauses (gpu INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    level TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
"""

_JOB_COLUMNS = (
    "seq, status, priority, kind, script, args, command, conda_env, required_gpus, "
    "allowed_gpus, max_retries, launcher, gpu_arg, cwd, env, name, sweep, params, hash, "
    "submitted, started, ended, exit_code, attempts, gpus, pid, proc_start, token, log_path, "
    "reason, owner_uid, executor, node, not_before, cancel_requested"
)

assert len(_JOB_COLUMNS.split(",")) == 35  # _row_to_job unpacks them by position

#: The columns :meth:`Store.table` returns, in this order (:mod:`nbsched.frames` makes
#: them into the table users see).
TABLE_COLUMNS = (
    "seq", "status", "priority", "kind", "script", "args", "command", "conda_env",
    "required_gpus", "gpus", "submitted", "started", "ended", "exit_code", "attempts",
    "log_path", "name", "sweep", "node", "reason",
)  # fmt: skip
_TABLE_SQL = ", ".join(TABLE_COLUMNS)

#: Sweep ids look like ``sw3``; job ids are the decimal row number.
SWEEP_PREFIX = "sw"


def prepare_state_dir(path: Path) -> Path:
    """Create ``path`` (0700) or check that an existing one is safe to use.

    A symlink, or a folder other users may write to, is refused: another user
    could then plant files the engine would trust.
    """
    try:
        if path.is_symlink():
            raise StateDirError(
                f"state directory {path} is a symbolic link; point state_dir at the real "
                f"folder ({os.path.realpath(path)})"
            )
        if not path.exists():
            old = os.umask(0o077)
            try:
                path.mkdir(parents=True, mode=0o700, exist_ok=True)
            finally:
                os.umask(old)
        st = path.stat()
    except StateDirError:
        raise
    except OSError as exc:
        raise StateDirError(f"state directory {path} cannot be used: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {path} is not a folder")
    if st.st_uid != os.getuid():
        raise StateDirError(f"state directory {path} belongs to uid {st.st_uid}, not to you")
    if st.st_mode & 0o022:
        raise StateDirError(
            f"state directory {path} is writable by other users (mode {st.st_mode & 0o777:o}); "
            f"run: chmod 700 {path}"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    for sub in ("logs", "run"):
        p = path / sub
        if p.is_symlink():
            raise StateDirError(f"{p} is a symbolic link; nbsched refuses to use it")
        p.mkdir(mode=0o700, exist_ok=True)
        os.chmod(p, 0o700)
    return path


def create_private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 whatever the umask (no-op if it exists)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _status_filter(statuses: Iterable[JobStatus] | None) -> tuple[list[str], list[Any]]:
    """(WHERE conditions, their parameters) for jobs in one of ``statuses`` (any: none)."""
    if statuses is None:
        return [], []
    vals = [JobStatus(s).value for s in statuses]
    return [f"status IN ({','.join('?' * len(vals)) or 'NULL'})"], vals


def _row_to_job(row: Sequence[Any]) -> Job:
    # By position (in _JOB_COLUMNS order): a Row looked up by name compares the name
    # with each column in turn, which made decoding a row ~3x slower.
    (seq, status, priority, kind, script, args, command, conda_env, required_gpus,
     allowed_gpus, max_retries, launcher, gpu_arg, cwd, env, name, sweep, params, hash_,
     submitted, started, ended, exit_code, attempts, gpus, pid, proc_start, token, log_path,
     reason, owner_uid, executor, node, not_before, cancel_requested) = tuple(row)[:35]  # fmt: skip
    allowed = _loads(allowed_gpus)
    spec = JobSpec(
        kind=kind,
        required_gpus=required_gpus,
        priority=priority,
        script=script,
        args=tuple(json.loads(args)),
        command=command,
        conda_env=conda_env,
        allowed_gpus=tuple(allowed) if allowed is not None else None,
        max_retries=max_retries,
        launcher=launcher,
        gpu_arg=gpu_arg,
        cwd=cwd,
        env=json.loads(env),
        name=name,
        sweep=sweep,
        params=_loads(params),
        hash=hash_,
    )
    return Job(
        id=str(seq),
        seq=seq,
        status=JobStatus(status),
        spec=spec,
        submitted=submitted,
        started=started,
        ended=ended,
        exit_code=exit_code,
        attempts=attempts,
        gpus=tuple(json.loads(gpus)),
        pid=pid,
        proc_start=proc_start,
        token=token,
        log_path=log_path,
        reason=reason,
        owner_uid=owner_uid,
        executor=executor,
        node=node,
        not_before=not_before,
        cancel_requested=bool(cancel_requested),
    )


def parse_job_id(job_id: object) -> int:
    """The row number behind a job id (``"17"`` or ``17``)."""
    if isinstance(job_id, bool):
        raise UnknownJobError(f"no job {job_id!r}: job ids are numbers like '17'")
    if isinstance(job_id, int):
        return job_id
    if isinstance(job_id, str) and job_id.strip().isdigit():
        return int(job_id.strip())
    raise UnknownJobError(f"no job {job_id!r}: job ids are numbers like '17'")


class Store:
    """One connection to ``state.db``, shared by the threads of one process."""

    def __init__(self, db_path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = db_path
        self._lock = threading.RLock()  # the write connection's
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()  # each thread's read connection (see _read)
        self._readers: dict[threading.Thread, sqlite3.Connection] = {}
        self._readers_lock = threading.Lock()
        self._closed = False
        existed = db_path.exists()
        try:
            if not existed:
                create_private_file(db_path)
            self._conn = sqlite3.connect(
                db_path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            mode = _retry_locked(
                lambda: self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0],
                busy_timeout_s,
            )
            if mode.lower() != "wal":
                raise StateDirError(f"{db_path}: cannot switch the database to WAL mode")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._write():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?), ('rev', '0')",
                    (str(SCHEMA_VERSION),),
                )
            version = int(self._meta("schema"))
        except BaseException as exc:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
            if not isinstance(exc, sqlite3.DatabaseError):
                raise
            raise StateDirError(
                f"the state database {db_path} cannot be read ({exc}); nbsched will not "
                f"reset it. Move it aside to start afresh, or restore it from a backup."
            ) from exc
        if version > SCHEMA_VERSION:
            raise StateDirError(
                f"{db_path} was written by a newer nbsched (schema {version}); upgrade nbsched"
            )
        for suffix in ("-wal", "-shm"):
            side = Path(str(db_path) + suffix)
            if side.exists() and (side.stat().st_mode & 0o077):
                os.chmod(side, 0o600)

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
            for conn in self._readers.values():
                conn.close()
            self._readers.clear()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, retried while another process holds the lock.

        Any failure rolls back (if SQLite has not already done so itself, as it does
        on a full disk) and is raised as a :class:`StateDirError` naming the file.
        """
        with self._lock:
            self._check_open()
            delay = 0.001
            deadline = time.monotonic() + 60.0
            while True:
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise _storage_error(self.path, exc) from exc
                    if time.monotonic() > deadline:
                        raise StateDirError(f"{self.path} stayed locked for 60 s") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                except sqlite3.DatabaseError as exc:
                    raise _storage_error(self.path, exc) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if _is_storage_error(exc):
                    assert isinstance(exc, sqlite3.Error)
                    raise _storage_error(self.path, exc) from exc
                raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.warning("rolling back a transaction on %s failed", self.path)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a query on this thread's own read connection (see :meth:`_read_tuples`)."""
        return self._read_tuples(sql, params, sqlite3.Row)  # type: ignore[return-value]

    def _read_tuples(
        self, sql: str, params: Sequence[Any] = (), row_factory: Any = None
    ) -> list[tuple[Any, ...]]:
        """Run a query on this thread's own read connection; rows as plain tuples.

        Reads take no lock: in WAL mode a reader sees the last commit and never waits
        for a writer, so a thread reading (a ``wait()``, a status display) does not hold
        up the dispatcher's writes, nor the other way round.
        """
        conn = self._reader()
        try:
            # (a reader can meet "locked" too, e.g. while another process recovers
            # the WAL after a crash: that waits, like a writer does)
            def fetch() -> list[Any]:
                cur = conn.cursor()
                cur.row_factory = row_factory
                return cur.execute(sql, params).fetchall()

            return _retry_locked(fetch, 30.0)
        except sqlite3.DatabaseError as exc:
            if not _is_storage_error(exc):
                raise
            raise _storage_error(self.path, exc) from exc

    def _check_open(self) -> None:
        if self._closed:  # (not "cannot be read": the database is fine)
            raise ClosedError(f"{self.path}: this store is closed (close() was called)")

    def _reader(self) -> sqlite3.Connection:
        self._check_open()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._readers_lock:
            self._check_open()
            try:
                conn = sqlite3.connect(
                    self.path, timeout=self._busy_timeout_s, isolation_level=None,
                    check_same_thread=False,
                )  # fmt: skip
                conn.row_factory = sqlite3.Row
            except sqlite3.DatabaseError as exc:
                raise _storage_error(self.path, exc) from exc
            # Connections of threads that have ended are closed here (one per thread).
            for thread in [t for t in self._readers if not t.is_alive()]:
                self._readers.pop(thread).close()
            self._readers[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    def _meta(self, key: str) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def _bump_rev(self, conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rev'")
        return int(conn.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()[0])

    def revision(self) -> int:
        """The revision of the last write; see :meth:`changed_since`."""
        return int(self._read("SELECT value FROM meta WHERE key = 'rev'")[0][0])

    # -- jobs -----------------------------------------------------------------------------

    def add_jobs(
        self,
        specs: Sequence[JobSpec],
        *,
        owner_uid: int,
        executor: str,
        skip_hash_statuses: Iterable[JobStatus] | None = None,
        now: float | None = None,
    ) -> list[Job | None]:
        """Insert ``specs`` as queued jobs in one transaction; committed on return.

        With ``skip_hash_statuses``, a spec whose ``hash`` matches a job in one of
        those statuses is not inserted (its place in the result is ``None``).
        """
        return self.add_jobs_at(
            specs,
            owner_uid=owner_uid,
            executor=executor,
            skip_hash_statuses=skip_hash_statuses,
            now=now,
        )[1]

    def add_jobs_at(
        self,
        specs: Sequence[JobSpec],
        *,
        owner_uid: int,
        executor: str,
        skip_hash_statuses: Iterable[JobStatus] | None = None,
        now: float | None = None,
    ) -> tuple[int, list[Job | None]]:
        """:meth:`add_jobs`, with the revision the new rows were written at (what
        :meth:`changes_since` reports for them until they change)."""
        now = time.time() if now is None else now
        skip = [s.value for s in skip_hash_statuses] if skip_hash_statuses is not None else None
        out: list[Job | None] = []
        with self._write() as conn:
            rev = self._bump_rev(conn)
            for spec in specs:
                if skip is not None and spec.hash is not None:
                    marks = ",".join("?" * len(skip)) or "''"
                    hit = conn.execute(
                        f"SELECT 1 FROM jobs WHERE hash = ? AND status IN ({marks}) LIMIT 1",
                        (spec.hash, *skip),
                    ).fetchone()
                    if hit:
                        out.append(None)
                        continue
                cur = conn.execute(
                    "INSERT INTO jobs (rev, status, priority, kind, script, args, command, "
                    "conda_env, required_gpus, allowed_gpus, max_retries, launcher, gpu_arg, cwd, "
                    "env, name, sweep, params, hash, submitted, owner_uid, executor) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        rev,
                        JobStatus.QUEUED.value,
                        spec.priority,
                        spec.kind,
                        spec.script,
                        _dumps(list(spec.args)),
                        spec.command,
                        spec.conda_env,
                        spec.required_gpus,
                        _dumps(list(spec.allowed_gpus)) if spec.allowed_gpus is not None else None,
                        spec.max_retries,
                        spec.launcher,
                        spec.gpu_arg,
                        spec.cwd,
                        _dumps(dict(spec.env)),
                        spec.name,
                        spec.sweep,
                        _dumps(dict(spec.params)) if spec.params is not None else None,
                        spec.hash,
                        now,
                        owner_uid,
                        executor,
                    ),
                )
                seq = cur.lastrowid
                assert seq is not None
                conn.execute(
                    "INSERT INTO transitions (job_seq, old, new, at, reason) VALUES (?,?,?,?,?)",
                    (seq, None, JobStatus.QUEUED.value, now, "submitted"),
                )
                out.append(
                    Job(
                        id=str(seq),
                        seq=seq,
                        status=JobStatus.QUEUED,
                        spec=spec,
                        submitted=now,
                        owner_uid=owner_uid,
                        executor=executor,
                    )
                )
        return rev, out

    def new_sweep(self, spec: dict[str, Any], now: float | None = None) -> str:
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO sweeps (created, spec) VALUES (?, ?)",
                (time.time() if now is None else now, _dumps(spec)),
            )
        return f"{SWEEP_PREFIX}{cur.lastrowid}"

    def sweep_spec(self, sweep_id: str) -> dict[str, Any] | None:
        if not sweep_id.startswith(SWEEP_PREFIX) or not sweep_id[2:].isdigit():
            return None
        rows = self._read("SELECT spec FROM sweeps WHERE seq = ?", (int(sweep_id[2:]),))
        return json.loads(rows[0]["spec"]) if rows else None

    def sweeps(self) -> list[tuple[str, float, dict[str, Any]]]:
        """Every sweep as ``(id, created, spec)``, oldest first."""
        rows = self._read("SELECT seq, created, spec FROM sweeps ORDER BY seq")
        return [(f"{SWEEP_PREFIX}{r['seq']}", r["created"], json.loads(r["spec"])) for r in rows]

    def get(self, job_id: object) -> Job:
        seq = parse_job_id(job_id)
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE seq = ?", (seq,))
        if not rows:
            raise UnknownJobError(f"no job {job_id!r} in {self.path}")
        return _row_to_job(rows[0])

    def find(
        self,
        *,
        statuses: Iterable[JobStatus] | None = None,
        ids: Iterable[object] | None = None,
        sweep: str | None = None,
        hash: str | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[Job]:
        """Jobs matching every filter given, in submission order.

        With ``limit``, only the first ``limit`` of them (the last, with ``newest``).
        """
        where, params = _status_filter(statuses)
        if ids is not None:
            seqs = [parse_job_id(i) for i in ids]
            where.append(f"seq IN ({','.join('?' * len(seqs)) or 'NULL'})")
            params += seqs
        if sweep is not None:
            where.append("sweep = ?")
            params.append(sweep)
        if hash is not None:
            where.append("hash = ?")
            params.append(hash)
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        jobs = [_row_to_job(r) for r in self._read_tuples(sql, params)]
        return jobs[::-1] if newest else jobs

    def table(
        self,
        *,
        statuses: Iterable[JobStatus] | None = None,
        ids: Iterable[object] | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[tuple[Any, ...]]:
        """What a jobs table shows (:data:`TABLE_COLUMNS`, raw), in submission order.

        :meth:`find` without building a :class:`Job` per row or decoding the columns no
        table shows (``env``, ``params``, ...): a table of 10,000 jobs costs a fraction
        of what the same jobs decoded would.  ``ids`` unknown here are left out.
        """
        where, params = _status_filter(statuses)
        base = f"SELECT {_TABLE_SQL} FROM jobs"
        if ids is None:
            sql = base + (" WHERE " + " AND ".join(where) if where else "")
            sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(max(0, int(limit)))
            rows = self._read_tuples(sql, params)
            return rows[::-1] if newest else rows
        rows = self._read_by_seq(_TABLE_SQL, {parse_job_id(i) for i in ids}, where, params)
        if limit is not None:
            n = max(0, int(limit))
            rows = rows[len(rows) - n :] if newest else rows[:n]
        return rows

    def active(self) -> list[Job]:
        """Queued and running jobs."""
        return self.find(statuses=(JobStatus.QUEUED, JobStatus.RUNNING))

    def changed_since(self, rev: int) -> tuple[int, list[Job]]:
        """``(current revision, jobs written after rev)``.

        The revision is read *before* the jobs: each statement is its own snapshot, so
        read the other way round a job committed between the two reads by another
        process would be covered by the revision returned, yet missing from the
        jobs, and never be seen.  This way such a job is returned now and, harmlessly,
        once more by the next call.
        """
        # The revision first: a commit between the two reads then shows up now *and*
        # next time (harmless), instead of never.
        current = self.revision()
        rows = self._read(f"SELECT {_JOB_COLUMNS}, rev FROM jobs WHERE rev > ?", (rev,))
        return current, [_row_to_job(r) for r in rows]

    def changes_since(self, rev: int) -> tuple[int, list[tuple[str, JobStatus, str | None, int]]]:
        """``(current revision, [(id, status, token, rev)] of the jobs written after
        rev)``: what :meth:`changed_since` says, without reading and decoding whole rows."""
        current, changes, _ = self.dispatch_view(rev)
        return current, changes

    def dispatch_view(
        self, rev: int
    ) -> tuple[int, list[tuple[str, JobStatus, str | None, int]], frozenset[int]]:
        """:meth:`changes_since` and :meth:`paused` in one statement (one read, one
        consistent snapshot): what the dispatcher reads at each turn."""
        rows = self._read_tuples(
            "SELECT 0, seq, status, token, rev FROM jobs WHERE rev > ? "
            "UNION ALL SELECT 1, NULL, NULL, NULL, CAST(value AS INTEGER) FROM meta "
            "WHERE key = 'rev' "
            "UNION ALL SELECT 2, gpu, NULL, NULL, NULL FROM gpu_pauses",
            (rev,),
        )
        current = rev
        changes = []
        paused = []
        for kind, seq, status, token, row_rev in rows:
            if kind == 0:
                changes.append((str(seq), JobStatus(status), token, row_rev))
            elif kind == 1:
                current = row_rev
            else:
                paused.append(seq)
        return current, changes, frozenset(paused)

    def get_many(self, ids: Iterable[object]) -> list[Job]:
        """The jobs with these ids (unknown ones left out), in submission order."""
        seqs = {parse_job_id(i) for i in ids}
        return [_row_to_job(r) for r in self._read_by_seq(_JOB_COLUMNS, seqs)]

    def _read_by_seq(
        self,
        columns: str,
        seqs: Iterable[int],
        where: Sequence[str] = (),
        params: Sequence[Any] = (),
    ) -> list[tuple[Any, ...]]:
        """``columns`` of the jobs numbered ``seqs`` (and matching ``where``), in
        submission order: read 500 at a time, under SQLite's bound-parameter limit."""
        ordered = sorted(seqs)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            cond = " AND ".join([*where, f"seq IN ({','.join('?' * len(chunk))})"])
            rows += self._read_tuples(
                f"SELECT {columns} FROM jobs WHERE {cond} ORDER BY seq", [*params, *chunk]
            )
        return rows

    def transition(
        self,
        job_id: object,
        new: JobStatus,
        *,
        expect: Iterable[JobStatus] | None = None,
        reason: str | None = None,
        now: float | None = None,
        guard: Callable[[Job], bool] | None = None,
        **fields: Any,
    ) -> Job | None:
        """Move a job to ``new`` and set ``fields``, atomically.

        Returns ``None`` (and changes nothing) when the job is no longer in one of
        the ``expect`` statuses, or ``guard`` says no: another thread or process
        got there first.  ``reason`` is kept in the job's ``reason`` column and in
        its transition row.
        """
        seq = parse_job_id(job_id)
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                raise UnknownJobError(f"no job {job_id!r} in {self.path}")
            job = _row_to_job(row)
            if expect is not None and job.status not in set(expect):
                return None
            if job.status != new and not can_transition(job.status, new):
                return None
            if guard is not None and not guard(job):
                return None
            rev = self._bump_rev(conn)
            cols = {"status": new.value, "rev": rev, **_encode_fields(fields)}
            if reason is not None or new != job.status:
                cols["reason"] = reason
            assignments = ", ".join(f"{k} = ?" for k in cols)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE seq = ?", (*cols.values(), seq))
            if new != job.status:
                conn.execute(
                    "INSERT INTO transitions (job_seq, old, new, at, reason) VALUES (?,?,?,?,?)",
                    (seq, job.status.value, new.value, now, reason),
                )
            after = _applied(job, new, fields, cols)
            if after is None:  # a field Job does not carry directly: read the row back
                row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE seq = ?", (seq,))
                after = _row_to_job(row.fetchone())
        return after

    def update(self, job_id: object, **fields: Any) -> None:
        """Set fields of a job without changing its status (e.g. its pid once spawned)."""
        seq = parse_job_id(job_id)
        with self._write() as conn:
            rev = self._bump_rev(conn)
            cols = {"rev": rev, **_encode_fields(fields)}
            assignments = ", ".join(f"{k} = ?" for k in cols)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE seq = ?", (*cols.values(), seq))

    def history(self, job_id: object) -> list[dict[str, Any]]:
        """Every transition of a job, oldest first."""
        seq = parse_job_id(job_id)
        rows = self._read(
            "SELECT old, new, at, reason FROM transitions WHERE job_seq = ? ORDER BY id", (seq,)
        )
        return [dict(r) for r in rows]

    def allocation(self) -> dict[int, float]:
        """GPU index -> fraction booked by running jobs, derived from the jobs table."""
        alloc: dict[int, float] = {}
        for row in self._read("SELECT gpus, required_gpus FROM jobs WHERE status = 'running'"):
            gpus = json.loads(row["gpus"])
            share = row["required_gpus"] if len(gpus) == 1 and row["required_gpus"] < 1 else 1.0
            for g in gpus:
                alloc[g] = alloc.get(g, 0.0) + share
        return alloc

    def unended_at(self, seqs: set[int] | None) -> tuple[int, set[int]]:
        """``(revision, those of the job numbers seqs still queued or running)`` (None:
        of all jobs), in one statement (one snapshot): every change after that revision
        is one :meth:`changes_since` reports.  Reads one indexed column, decodes nothing."""
        rev_sql = "SELECT 1, CAST(value AS INTEGER) FROM meta WHERE key = 'rev'"
        unended = "status IN ('queued', 'running')"
        params: list[int] = []
        if seqs is None or len(seqs) > 500:  # scan the covering status index
            sql = f"SELECT 0, seq FROM jobs WHERE {unended} UNION ALL {rev_sql}"
        elif not seqs:
            sql = rev_sql
        else:
            params = list(seqs)
            sql = (
                f"SELECT 0, seq FROM jobs WHERE seq IN ({','.join('?' * len(seqs))}) "
                f"AND {unended} UNION ALL {rev_sql}"
            )
        rev, found = 0, set()
        for kind, value in self._read_tuples(sql, params):
            if kind:
                rev = int(value)
            else:
                found.add(value)
        return rev, (found if seqs is None else seqs & found)

    def record_start(self, job_id: object, token: str, **fields: Any) -> bool:
        """Set ``fields`` (pid, ...) of a job still running attempt ``token`` with no cancel
        requested, in one statement.  False, and nothing written, if it is not."""
        return not self.record_starts([(parse_job_id(job_id), token, fields)])

    def record_starts(self, items: Sequence[tuple[int, str, dict[str, Any]]]) -> set[int]:
        """:meth:`record_start` for several ``(seq, token, fields)`` in one transaction.
        Returns the job numbers that were not recorded (not running that attempt any
        more, or cancelled meanwhile)."""
        missed: set[int] = set()
        if not items:
            return missed
        with self._write() as conn:
            # (the revision moves only if a row is written)
            rev = int(conn.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()[0]) + 1
            for seq, token, fields in items:
                if not self._apply_pid(conn, rev, seq, token, fields):
                    missed.add(seq)
            if len(missed) < len(items):
                conn.execute("UPDATE meta SET value = ? WHERE key = 'rev'", (str(rev),))
        return missed

    def record_attempts(
        self,
        ends: Sequence[AttemptEnd],
        starts: Sequence[AttemptStart],
        now: float,
        pids: Sequence[tuple[int, str, dict[str, Any]]] = (),
    ) -> tuple[list[JobStatus | None], list[Job | None], set[int]]:
        """Record started attempts' pids (as :meth:`record_starts`), how attempts ended,
        and mark queued jobs running, in one transaction.

        Each end applies only to the attempt it names (the job still ``running`` with
        that token); a job whose cancel was requested ends ``cancelled``; a retry
        (``status=QUEUED``) falls back to ``failed`` if it may not be queued again.
        Each start applies only to a job still ``queued``.  Returns, in order, the
        status each end was recorded with and the running job each start became
        (``None`` where it no longer applied: another process got there first), and
        the job numbers whose pids were not recorded.  The pids come first (an attempt
        may have ended already), then the ends, so GPUs they free may be booked by the
        starts.
        """
        ended: list[JobStatus | None] = []
        started: list[Job | None] = []
        if not ends and not starts:
            return ended, started, self.record_starts(pids)
        missed: set[int] = set()
        with self._write() as conn:
            rev = self._bump_rev(conn)
            for seq, token, fields in pids:
                if not self._apply_pid(conn, rev, seq, token, fields):
                    missed.add(seq)
            for end in ends:
                ended.append(self._apply_end(conn, rev, end, now))
            for start in starts:
                started.append(self._apply_start(conn, rev, start, now))
        return ended, started, missed

    def _apply_pid(
        self, conn: sqlite3.Connection, rev: int, seq: int, token: str, fields: dict[str, Any]
    ) -> bool:
        cols = _encode_fields(fields)
        assignments = "".join(f"{k} = ?, " for k in cols)
        cur = conn.execute(
            f"UPDATE jobs SET {assignments}rev = ? WHERE seq = ? AND status = 'running' "
            "AND token = ? AND cancel_requested = 0",
            (*cols.values(), rev, seq, token),
        )
        return bool(cur.rowcount)

    def _apply_end(
        self, conn: sqlite3.Connection, rev: int, end: AttemptEnd, now: float
    ) -> JobStatus | None:
        seq, token = end.job.seq, end.job.token
        attempt = "seq = ? AND status = 'running' AND token = ?"
        tries: list[tuple[JobStatus, str | None, str]] = []
        if end.status == JobStatus.QUEUED:
            tries.append((JobStatus.QUEUED, end.retry_reason, " AND cancel_requested = 0"))
        final = JobStatus.FAILED if end.status == JobStatus.QUEUED else end.status
        tries.append((final, end.reason, " AND cancel_requested = 0"))
        tries.append((JobStatus.CANCELLED, "cancelled", " AND cancel_requested = 1"))
        for status, reason, cond in tries:
            extra = ", not_before = ?, pid = NULL" if status == JobStatus.QUEUED else ""
            params: tuple[Any, ...] = (status.value, rev, reason, end.exit_code, now)
            if status == JobStatus.QUEUED:
                params += (end.not_before,)
            cur = conn.execute(
                "UPDATE jobs SET status = ?, rev = ?, reason = ?, exit_code = ?, ended = ?"
                f"{extra} WHERE {attempt}{cond}",
                (*params, seq, token),
            )
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO transitions (job_seq, old, new, at, reason) VALUES (?,?,?,?,?)",
                    (seq, JobStatus.RUNNING.value, status.value, now, reason),
                )
                return status
        return None

    def _apply_start(
        self, conn: sqlite3.Connection, rev: int, start: AttemptStart, now: float
    ) -> Job | None:
        job = start.job
        attempts = job.attempts + 1
        cur = conn.execute(
            "UPDATE jobs SET status = 'running', rev = ?, reason = NULL, gpus = ?, started = ?, "
            "ended = NULL, exit_code = NULL, attempts = ?, token = ?, pid = NULL, "
            "proc_start = NULL, node = NULL, log_path = ?, not_before = NULL, "
            "cancel_requested = 0 WHERE seq = ? AND status = 'queued'",
            (rev, _dumps(list(start.gpus)), now, attempts, start.token, start.log_path, job.seq),
        )
        if not cur.rowcount:
            return None
        conn.execute(
            "INSERT INTO transitions (job_seq, old, new, at, reason) VALUES (?,?,?,?,?)",
            (job.seq, JobStatus.QUEUED.value, JobStatus.RUNNING.value, now, None),
        )
        return job.evolve(
            status=JobStatus.RUNNING,
            reason=None,
            gpus=tuple(start.gpus),
            started=now,
            ended=None,
            exit_code=None,
            attempts=attempts,
            token=start.token,
            pid=None,
            proc_start=None,
            node=None,
            log_path=start.log_path,
            not_before=None,
            cancel_requested=False,
        )

    def existing(self, seqs: set[int]) -> set[int]:
        """Those of the job numbers ``seqs`` that exist (reads one indexed column)."""
        return {r[0] for r in self._read_by_seq("seq", seqs)}

    def status_counts(self, seqs: set[int]) -> dict[str, int]:
        """Jobs per status among the job numbers ``seqs`` (for progress displays)."""
        if not seqs:
            return {}
        rows = self._read(
            f"SELECT status, COUNT(*) AS n FROM jobs WHERE seq IN ({','.join('?' * len(seqs))}) "
            "GROUP BY status",
            list(seqs),
        )
        return {r["status"]: r["n"] for r in rows}

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        """Jobs per status; of a sweep, its newest job per combination (hash)."""
        if sweep is None:
            rows = self._read("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        else:
            rows = self._read(
                "SELECT status, COUNT(*) AS n FROM jobs WHERE seq IN "
                "(SELECT MAX(seq) FROM jobs WHERE sweep = ? GROUP BY COALESCE(hash, seq)) "
                "GROUP BY status",
                (sweep,),
            )
        out = {s.value: 0 for s in JobStatus}
        out.update({r["status"]: r["n"] for r in rows})
        return out

    # -- GPU pauses -----------------------------------------------------------------------

    def set_paused(self, gpu: int, paused: bool) -> None:
        with self._write() as conn:
            self._bump_rev(conn)
            if paused:
                conn.execute(
                    "INSERT OR IGNORE INTO gpu_pauses (gpu, at) VALUES (?, ?)", (gpu, time.time())
                )
            else:
                conn.execute("DELETE FROM gpu_pauses WHERE gpu = ?", (gpu,))

    def paused(self) -> frozenset[int]:
        return frozenset(r["gpu"] for r in self._read("SELECT gpu FROM gpu_pauses"))

    # -- notices (jobs-file errors and the like, shown in status) -------------------------

    def add_notice(self, source: str, message: str, level: str = "warning") -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO notices (at, level, source, message) VALUES (?,?,?,?)",
                (time.time(), level, source, message),
            )
            conn.execute("DELETE FROM notices WHERE id <= (SELECT MAX(id) FROM notices) - 1000")

    def notices(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT at, level, source, message FROM notices ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [dict(r) for r in reversed(rows)]

    def kv_get(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (f"kv:{key}",))
        return str(rows[0]["value"]) if rows else None

    def kv_set(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"kv:{key}", value),
            )


@dataclasses.dataclass(frozen=True)
class AttemptStart:
    """A queued job to mark running (see :meth:`Store.record_attempts`)."""

    job: Job
    gpus: tuple[int, ...]
    token: str
    log_path: str


@dataclasses.dataclass(frozen=True)
class AttemptEnd:
    """How a running attempt (``job.token``) ended (see :meth:`Store.record_attempts`).

    ``status`` is succeeded, failed, or queued for a retry: then ``not_before`` and
    ``retry_reason`` apply, and ``reason`` is the failure recorded if the job may not be
    queued again (its cancel was requested meanwhile).
    """

    job: Job
    status: JobStatus
    exit_code: int | None
    reason: str | None
    not_before: float | None = None
    retry_reason: str | None = None


_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job)) - {"id", "seq", "spec", "status"}


def _applied(job: Job, new: JobStatus, fields: dict[str, Any], cols: dict[str, Any]) -> Job | None:
    """The job as ``transition`` just wrote it, without reading it back (None: read it)."""
    if not fields.keys() <= _JOB_FIELDS:
        return None
    changes: dict[str, Any] = dict(fields)
    if "gpus" in changes:
        changes["gpus"] = tuple(changes["gpus"])
    if "cancel_requested" in changes:
        changes["cancel_requested"] = bool(changes["cancel_requested"])
    if "reason" in cols:
        changes["reason"] = cols["reason"]
    return dataclasses.replace(job, status=new, **changes)


def _encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key in ("gpus", "args"):
            value = _dumps(list(value))
        elif key == "cancel_requested":
            value = int(bool(value))
        out[key] = value
    return out


def _retry_locked(op: Callable[[], T], timeout_s: float) -> T:
    """Run ``op``, retrying while the database is locked by another process.

    Switching a new database to WAL needs an exclusive lock, and SQLite answers
    "database is locked" at once, without its busy handler, when several processes
    open a fresh state directory together: that must wait, not fail.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            return op()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _is_storage_error(exc: BaseException) -> bool:
    """An error of the database file (locked, full, corrupt...), not of nbsched's SQL."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _storage_error(path: Path, exc: sqlite3.Error) -> StateDirError:
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
