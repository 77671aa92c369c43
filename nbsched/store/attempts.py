"""Attempts: marking queued jobs running, writing their pids, recording how they ended.

The dispatcher writes all of one turn in one transaction: the pids of the attempts
it started before, the ends it learnt, then its new starts (so GPUs the ends free
may be booked by the starts).  Each write applies only to the attempt it names
(the job still in the status, with the token, it was read with): another process
that got there first wins, and the write reports it did not apply.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from typing import Any

from ..gpus.oom import retry_room_sql
from ..jobs import Job, JobStatus
from . import deps, durations, rows
from .connection import StorePart, bump_rev

#: A started attempt's pid and the like: ``(job number, attempt token, fields)``.
PidRecord = tuple[int, str, dict[str, Any]]

_INSERT_TRANSITION = "INSERT INTO transitions (job_seq, old, new, at, reason) VALUES (?,?,?,?,?)"


@dataclasses.dataclass(frozen=True)
class AttemptStart:
    """A queued job to mark running (see :meth:`AttemptsPart.record_attempts`)."""

    job: Job
    gpus: tuple[int, ...]
    token: str
    log_path: str


@dataclasses.dataclass(frozen=True)
class AttemptEnd:
    """How a running attempt (``job.token``) ended (see :meth:`AttemptsPart.record_attempts`).

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
    #: When the attempt ended, where the executor said (None: when it is recorded).
    at: float | None = None
    #: A retry after running out of GPU memory: the most memory (MiB) its charge may
    #: grow to (0: unknown); see :mod:`nbsched.gpus.oom`.
    oom_room: float | None = None


class AttemptsPart(StorePart):
    """The dispatcher's writes of attempts starting and ending."""

    def record_starts(self, items: Sequence[PidRecord]) -> set[int]:
        """Set the fields (pid, ...) of each job still running attempt ``token`` with no
        cancel requested, in one transaction.  Returns the job numbers that were not
        recorded (not running that attempt any more, or cancelled meanwhile)."""
        missed: set[int] = set()
        if not items:
            return missed
        with self._db.write() as conn:
            # (the revision moves only if a row is written)
            rev = int(conn.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()[0]) + 1
            for seq, token, fields in items:
                if not _apply_pid(conn, rev, seq, token, fields):
                    missed.add(seq)
            if len(missed) < len(items):
                conn.execute("UPDATE meta SET value = ? WHERE key = 'rev'", (str(rev),))
        return missed

    def record_attempts(
        self,
        ends: Sequence[AttemptEnd],
        starts: Sequence[AttemptStart],
        now: float,
        pids: Sequence[PidRecord] = (),
        moved: list[int] | None = None,
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
        starts.  The jobs that dependencies on these starts and ends released or
        cancelled (:func:`.deps.settle`, in the same transaction) are added to ``moved``.
        """
        if not ends and not starts:
            return [], [], self.record_starts(pids)
        missed: set[int] = set()
        with self._db.write() as conn:
            rev = bump_rev(conn)
            for seq, token, fields in pids:
                if not _apply_pid(conn, rev, seq, token, fields):
                    missed.add(seq)
            ended = [_apply_end(conn, rev, end, now) for end in ends]
            started = [_apply_start(conn, rev, start, now) for start in starts]
            touched = [e.job.seq for e, st in zip(ends, ended, strict=True) if st and st.ended]
            changed = deps.settle(conn, rev, touched + [j.seq for j in started if j], now)
        if moved is not None:
            moved += changed
        return ended, started, missed


def _apply_pid(
    conn: sqlite3.Connection, rev: int, seq: int, token: str, fields: dict[str, Any]
) -> bool:
    cols = rows.encode_fields(fields)
    assignments = "".join(f"{k} = ?, " for k in cols)
    cur = conn.execute(
        f"UPDATE jobs SET {assignments}rev = ? WHERE seq = ? AND status = 'running' "
        "AND token = ? AND cancel_requested = 0",
        (*cols.values(), rev, seq, token),
    )
    return bool(cur.rowcount)


def _apply_end(conn: sqlite3.Connection, rev: int, end: AttemptEnd, now: float) -> JobStatus | None:
    """Record ``end`` if its attempt still runs: as a retry, else as it ended, else (a
    cancel was requested) as cancelled.  The status recorded; None: not its attempt."""
    seq, token = end.job.seq, end.job.token
    attempt = "seq = ? AND status = 'running' AND token = ?"
    tries: list[tuple[JobStatus, str | None, str]] = []
    if end.status == JobStatus.QUEUED:
        tries.append((JobStatus.QUEUED, end.retry_reason, " AND cancel_requested = 0"))
    final = JobStatus.FAILED if end.status == JobStatus.QUEUED else end.status
    tries.append((final, end.reason, " AND cancel_requested = 0"))
    tries.append((JobStatus.CANCELLED, "cancelled", " AND cancel_requested = 1"))
    ended = now if end.at is None else end.at
    for status, reason, cond in tries:
        extra = ", not_before = ?, pid = NULL" if status == JobStatus.QUEUED else ""
        params: tuple[Any, ...] = (status.value, rev, reason, end.exit_code, ended)
        if status == JobStatus.QUEUED:
            params += (end.not_before,)
        cur = conn.execute(
            "UPDATE jobs SET status = ?, rev = ?, reason = ?, exit_code = ?, ended = ?"
            f"{extra} WHERE {attempt}{cond}",
            (*params, seq, token),
        )
        if cur.rowcount:
            conn.execute(
                _INSERT_TRANSITION, (seq, JobStatus.RUNNING.value, status.value, ended, reason)
            )
            if status == JobStatus.SUCCEEDED:
                durations.record(conn, end.job, ended)
            if status == JobStatus.QUEUED and end.oom_room is not None:
                _more_room(conn, seq, end.oom_room)
            return status
    return None


def _apply_start(conn: sqlite3.Connection, rev: int, start: AttemptStart, now: float) -> Job | None:
    """Mark ``start``'s job running if it is still queued; the job as written, or None."""
    job = start.job
    attempts = job.attempts + 1
    cur = conn.execute(
        "UPDATE jobs SET status = 'running', rev = ?, reason = NULL, gpus = ?, started = ?, "
        "ended = NULL, exit_code = NULL, attempts = ?, token = ?, pid = NULL, "
        "proc_start = NULL, node = NULL, log_path = ?, not_before = NULL, "
        "cancel_requested = 0 WHERE seq = ? AND status = 'queued'",
        (rev, rows.dumps(list(start.gpus)), now, attempts, start.token, start.log_path, job.seq),
    )
    if not cur.rowcount:
        return None
    conn.execute(
        _INSERT_TRANSITION, (job.seq, JobStatus.QUEUED.value, JobStatus.RUNNING.value, now, None)
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


def _more_room(conn: sqlite3.Connection, seq: int, limit: float) -> None:
    """A retry after running out of GPU memory: charged more (see :mod:`nbsched.gpus.oom`)."""
    conn.execute(
        f"UPDATE jobs SET oom_retried = 1, gpu_memory_learned = {retry_room_sql()} "
        "WHERE seq = :seq",
        {"limit": limit, "seq": seq},
    )
