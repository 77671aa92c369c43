"""Jobs: adding them, reading them, and moving them from one status to the next.

Every accepted job is committed before :meth:`JobsPart.add_jobs_at` returns; every
status change is a row in ``transitions`` with its time; the GPU fractions in use
are derived from the running jobs (:meth:`JobsPart.allocation`), never kept in a
counter.  Each write moves the global revision on (see :mod:`.feed`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ..allocation import booked_share
from ..errors import UnknownJobError
from ..jobs import Job, JobSpec, JobStatus, can_transition
from ..launch import SubmitterEnv
from . import deps, rows
from .adding import Added, Make, add_rows
from .connection import StorePart, bump_rev
from .memory import learn_charges
from .rows import parse_job_id

#: Bound parameters per statement, under SQLite's limit (999 in old builds).
_CHUNK = 500
T = TypeVar("T")

_INSERT_TRANSITION = "INSERT INTO transitions (job_seq, old, new, at, reason) VALUES (?,?,?,?,?)"


def _status_filter(statuses: Iterable[JobStatus] | None) -> tuple[list[str], list[Any]]:
    """(WHERE conditions, their parameters) for jobs in one of ``statuses`` (any: none)."""
    if statuses is None:
        return [], []
    vals = [JobStatus(s).value for s in statuses]
    return [f"status IN ({','.join('?' * len(vals)) or 'NULL'})"], vals


def _environment_id(conn: sqlite3.Connection, environment: SubmitterEnv) -> int:
    """The number of ``environment``'s row, added if no submission stored it before."""
    conn.execute(
        "INSERT OR IGNORE INTO environments (hash, json) VALUES (?, ?)",
        (environment.key, environment.text),
    )
    found = conn.execute("SELECT id FROM environments WHERE hash = ?", (environment.key,))
    return int(found.fetchone()[0])


def _marks(n: int) -> str:
    return ",".join("?" * n)


class JobsPart(StorePart):
    """Adding, reading and moving jobs."""

    #: environment hash -> its row's number, for the rows this store's commits stored
    _environments: dict[str, int]

    def add_jobs_at(
        self,
        specs: Iterable[JobSpec],
        *,
        owner_uid: int,
        executor: str,
        skip_hash_statuses: Iterable[JobStatus] | None = None,
        now: float | None = None,
        environment: SubmitterEnv | None = None,
    ) -> tuple[int, list[Job | None]]:
        """Insert ``specs`` as queued jobs in one transaction; committed on return.
        Returns the revision the new rows were written at (what
        :meth:`~.feed.FeedPart.changes_since` reports for them until they change) and
        the jobs, in the order of ``specs``.

        With ``skip_hash_statuses``, a spec whose ``hash`` matches a job in one of
        those statuses (or, if they include ``queued``, an earlier spec of the same
        call) is not inserted: its place in the result is ``None``.

        ``specs`` are read, checked and inserted :data:`~.adding.ROWS` at a time, so
        that a sweep's 100,000 need not all be encoded (or even made) before the first
        is stored.

        ``environment``: the submitter's, which the jobs start from; stored once (a
        row of ``environments``, found by its hash), whatever the number of jobs, and
        named in each job's row by its number (a sweep's 100,000 rows stay small).
        """
        now = time.time() if now is None else now

        def whole(env_key: int | None) -> Make[Job]:
            new_job = rows.new_jobs(now, owner_uid, executor, env_key)
            return lambda rev, seq, spec: new_job(seq, spec)

        rev, added = self._add(
            specs, whole, owner_uid, executor, skip_hash_statuses, now, environment
        )
        if not added.groups:
            return rev, added.made
        changes = {
            after: {
                "dep_group": group,
                "waiting": waits,
                "reason": deps.waits_reason(after) if waits else None,
            }
            for after, (group, waits) in added.groups.items()
        }
        return rev, [
            j if j is None or not a else j.evolve(**changes[a])
            for j, a in zip(added.made, added.afters, strict=True)
        ]

    def add_made_at(
        self,
        specs: Iterable[JobSpec],
        make: Make[T],
        *,
        owner_uid: int,
        executor: str,
        skip_hash_statuses: Iterable[JobStatus] | None = None,
        environment: SubmitterEnv | None = None,
    ) -> tuple[int, list[T | None], list[bool]]:
        """:meth:`add_jobs_at`, keeping of each job only ``make(rev, seq, spec)`` (made
        as its chunk is stored) instead of a whole :class:`Job`: a big submission's
        specs are then not all kept until it returns.  Returns the revision, what was
        made (None for a spec skipped) and whether each job waits for a dependency."""
        now = time.time()
        rev, added = self._add(
            specs, lambda _: make, owner_uid, executor, skip_hash_statuses, now, environment
        )
        return rev, added.made, added.waiting()

    def _add(
        self,
        specs: Iterable[JobSpec],
        maker: Callable[[int | None], Make[T]],
        owner_uid: int,
        executor: str,
        skip_hash_statuses: Iterable[JobStatus] | None,
        now: float,
        environment: SubmitterEnv | None,
    ) -> tuple[int, Added[T]]:
        """Store ``specs`` (see :func:`.adding.add_rows`); ``maker(environment's number)``
        says what to keep of each."""
        skip = None if skip_hash_statuses is None else {JobStatus(s) for s in skip_hash_statuses}
        with self._db.write() as conn:
            rev = bump_rev(conn)
            env_key = None if environment is None else self._environment_id(conn, environment)
            shared = (now, owner_uid, executor, env_key)
            added = add_rows(conn, rev, specs, maker(env_key), skip, shared)
            learn_charges(conn, rev)  # (what earlier runs used: nbsched.gpus.peaks)
        if environment is not None and env_key is not None:
            self._environments[environment.key] = env_key  # (committed: safe to remember)
        return rev, added

    def _environment_id(self, conn: sqlite3.Connection, environment: SubmitterEnv) -> int:
        """The number of ``environment``'s row: remembered once a submission of this
        store committed it (rows of ``environments`` are never removed), else looked up
        or added (two statements: most of an ``add_command``'s time in the store)."""
        known = self._environments.get(environment.key)
        return _environment_id(conn, environment) if known is None else known

    def environment(self, number: int) -> str | None:
        """The stored submitter's environment ``number`` (:class:`SubmitterEnv` text)."""
        found = self._db.read("SELECT json FROM environments WHERE id = ?", (number,))
        return str(found[0][0]) if found else None

    def get(self, job_id: object) -> Job:
        seq = parse_job_id(job_id)
        found = self._db.read(f"SELECT {rows.JOB_SQL} FROM jobs WHERE seq = ?", (seq,))
        if not found:
            raise UnknownJobError(f"no job {job_id!r} in {self.path}")
        return rows.decode_job(found[0])

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
            where.append(f"seq IN ({_marks(len(seqs)) or 'NULL'})")
            params += seqs
        for column, value in (("sweep", sweep), ("hash", hash)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        found = self._select(rows.JOB_SQL, where, params, limit, newest)
        return [rows.decode_job(r) for r in found]

    def table(
        self,
        *,
        statuses: Iterable[JobStatus] | None = None,
        ids: Iterable[object] | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[tuple[Any, ...]]:
        """What a jobs table shows (:data:`~.rows.TABLE_COLUMNS`, raw), in submission order.

        :meth:`find` without building a :class:`Job` per row or decoding the columns no
        table shows (``env``, ``params``, ...): a table of 10,000 jobs costs a fraction
        of what the same jobs decoded would.  ``ids`` unknown here are left out.
        """
        where, params = _status_filter(statuses)
        if ids is None:
            return self._select(rows.TABLE_SQL, where, params, limit, newest)
        found = self._read_by_seq(rows.TABLE_SQL, {parse_job_id(i) for i in ids}, where, params)
        if limit is not None:
            n = max(0, int(limit))
            found = found[len(found) - n :] if newest else found[:n]
        return found

    def _select(
        self, columns: str, where: list[str], params: list[Any], limit: int | None, newest: bool
    ) -> list[tuple[Any, ...]]:
        """``columns`` of the jobs matching ``where``, in submission order; with
        ``limit``, the first (the last, with ``newest``) of them."""
        sql = f"SELECT {columns} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, max(0, int(limit))]
        found = self._db.read(sql, params)
        return found[::-1] if newest else found

    def get_many(self, ids: Iterable[object]) -> list[Job]:
        """The jobs with these ids (unknown ones left out), in submission order."""
        seqs = {parse_job_id(i) for i in ids}
        return [rows.decode_job(r) for r in self._read_by_seq(rows.JOB_SQL, seqs)]

    def existing(self, seqs: set[int]) -> set[int]:
        """Those of the job numbers ``seqs`` that exist (reads one indexed column)."""
        return {r[0] for r in self._read_by_seq("seq", seqs)}

    def _read_by_seq(
        self,
        columns: str,
        seqs: Iterable[int],
        where: Sequence[str] = (),
        params: Sequence[Any] = (),
    ) -> list[tuple[Any, ...]]:
        """``columns`` of the jobs numbered ``seqs`` (and matching ``where``), in
        submission order: read a chunk at a time, under SQLite's bound-parameter limit."""
        ordered = sorted(seqs)
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(ordered), _CHUNK):
            chunk = ordered[start : start + _CHUNK]
            cond = " AND ".join([*where, f"seq IN ({_marks(len(chunk))})"])
            found += self._db.read(
                f"SELECT {columns} FROM jobs WHERE {cond} ORDER BY seq", [*params, *chunk]
            )
        return found

    def status_counts(self, seqs: set[int]) -> dict[str, int]:
        """Jobs per status among the job numbers ``seqs`` (for progress displays)."""
        if not seqs:
            return {}
        found = self._db.read(
            f"SELECT status, COUNT(*) FROM jobs WHERE seq IN ({_marks(len(seqs))}) GROUP BY status",
            list(seqs),
        )
        return {status: n for status, n in found}

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        """Jobs per status; of a sweep, its newest job per combination (hash)."""
        if sweep is None:
            found = self._db.read("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        else:
            found = self._db.read(
                "SELECT status, COUNT(*) FROM jobs WHERE seq IN "
                "(SELECT MAX(seq) FROM jobs WHERE sweep = ? GROUP BY COALESCE(hash, seq)) "
                "GROUP BY status",
                (sweep,),
            )
        out = {s.value: 0 for s in JobStatus}
        out.update({status: n for status, n in found})
        return out

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
        """Move a job to ``new`` and set ``fields`` (of :data:`~.rows.SETTABLE`; another
        keyword raises :class:`TypeError`), atomically.

        Returns ``None`` (and changes nothing) when the job is no longer in one of
        the ``expect`` statuses, or ``guard`` says no: another thread or process
        got there first.  ``reason`` is kept in the job's ``reason`` column and in
        its transition row.
        """
        seq = parse_job_id(job_id)
        values = rows.encode_fields(fields)
        now = time.time() if now is None else now
        with self._db.write() as conn:
            row = conn.execute(f"SELECT {rows.JOB_SQL} FROM jobs WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                raise UnknownJobError(f"no job {job_id!r} in {self.path}")
            job = rows.decode_job(row)
            if expect is not None and job.status not in set(expect):
                return None
            if job.status != new and not can_transition(job.status, new):
                return None
            if guard is not None and not guard(job):
                return None
            cols = {"status": new.value, "rev": bump_rev(conn), **values}
            changes = rows.normalized(fields)
            if reason is not None or new != job.status:
                cols["reason"] = changes["reason"] = reason
            assignments = ", ".join(f"{k} = ?" for k in cols)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE seq = ?", (*cols.values(), seq))
            if new != job.status:
                conn.execute(_INSERT_TRANSITION, (seq, job.status.value, new.value, now, reason))
                deps.settle(conn, cols["rev"], [seq], now)  # (its dependents, if any)
                if job.status.ended and new == JobStatus.QUEUED:
                    deps.reattach(conn, job)  # (a retry waits for its dependencies again)
        return job.evolve(status=new, **changes)

    def update(self, job_id: object, **fields: Any) -> None:
        """Set ``fields`` (of :data:`~.rows.SETTABLE`) of a job without changing its
        status (e.g. its pid once spawned)."""
        seq = parse_job_id(job_id)
        values = rows.encode_fields(fields)
        with self._db.write() as conn:
            cols = {"rev": bump_rev(conn), **values}
            assignments = ", ".join(f"{k} = ?" for k in cols)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE seq = ?", (*cols.values(), seq))

    def change_queued(
        self,
        job_id: object,
        *,
        held: bool | None = None,
        priority: int | None = None,
        reason: str | None = None,
    ) -> bool:
        """Hold or release a queued job (setting its ``reason``), or give it another
        ``priority``, atomically: False (nothing changed) when it is no longer queued.
        The new revision brings the change to every dispatcher's queue."""
        seq = parse_job_id(job_id)
        cols: dict[str, Any] = {}
        if held is not None:
            cols["held"], cols["reason"] = int(held), reason
        if priority is not None:
            cols["priority"] = priority
        with self._db.write() as conn:
            queued = conn.execute(
                "SELECT waiting, after FROM jobs WHERE seq = ? AND status = 'queued'", (seq,)
            ).fetchone()
            if queued is None:
                return False
            if held is False and queued[0]:
                cols["reason"] = deps.waits_reason(queued[1])  # (released: still waits)
            cols["rev"] = bump_rev(conn)
            assignments = ", ".join(f"{k} = ?" for k in cols)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE seq = ?", (*cols.values(), seq))
        return True

    def allocation(self) -> dict[int, float]:
        """GPU index -> fraction booked by running jobs, derived from the jobs table."""
        alloc: dict[int, float] = {}
        for gpus_json, required in self._db.read(
            "SELECT gpus, required_gpus FROM jobs WHERE status = 'running'"
        ):
            gpus = json.loads(gpus_json)
            share = booked_share(required, len(gpus))
            for g in gpus:
                alloc[g] = alloc.get(g, 0.0) + share
        return alloc
