"""Dependencies: which jobs wait for which, kept with the jobs, indexed both ways.

The jobs of one submission that have the same ``after`` share one *group*
(``dep_groups``: how many of its dependencies are unmet).  Each dependency is an
edge (``dep_edges``: the group, the job it is on, its kind), indexed by that job while
unmet.  A job of a group that has unmet edges is ``waiting``: queued, but no
dispatcher's to start (as a held job is; the change feed says so).  A sweep of 1,000
jobs waiting for a sweep of 1,000 is thus 1,000 edges, not a million.

Everything happens inside the writes that make it true, so no crash can come between:

- :func:`attach`, in the transaction that inserts the jobs: every job named must
  exist (a sweep: its jobs now, the newest of each combination), none may be of the
  same submission (a cycle), and none may already have ended in a way that can never
  meet the dependency.  Those already met count as met;
- :func:`reattach`, in the transaction that queues an ended job again (``retry``):
  its dependencies judged afresh, as at submission;
- :func:`settle`, in the transaction that records a start or an end (the dispatcher's,
  a cancel's): the edges on those jobs are judged (:func:`~nbsched.formats.after.judge`);
  a group whose last edge is met is released (its jobs' revision moves on: every
  dispatcher's queue takes them in through the change feed), and a group with an edge
  that can never be met has its queued jobs cancelled with the reason, which is
  judged in turn (a chain is cancelled to its end in the same transaction).

A job that no dependency touches costs one indexed look-up (for all the starts and
ends of a dispatcher's turn together), and nothing in a turn that ends nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from ..errors import InvalidValueError, UnknownJobError
from ..formats.after import MEANING, failure, is_sweep, judge, parse_after, targets_text
from ..jobs import Job
from .connection import StorePart

STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS dep_groups "
    "(id INTEGER PRIMARY KEY, unmet INTEGER NOT NULL, after TEXT NOT NULL)",
    # state: 0 unmet, 1 met, 2 dropped (its group's jobs were cancelled)
    "CREATE TABLE IF NOT EXISTS dep_edges (grp INTEGER NOT NULL, on_seq INTEGER NOT NULL, "
    "kind TEXT NOT NULL, state INTEGER NOT NULL, PRIMARY KEY (grp, on_seq, kind)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS dep_edges_on ON dep_edges(on_seq) WHERE state = 0",
    "CREATE INDEX IF NOT EXISTS jobs_dep_group ON jobs(dep_group) WHERE dep_group IS NOT NULL",
)

_CHUNK = 500
_TRANSITION = (
    "INSERT INTO transitions (job_seq, old, new, at, reason) "
    "SELECT seq, 'queued', 'cancelled', ?, ? FROM jobs WHERE dep_group = ? AND status = 'queued'"
)


def create(conn: sqlite3.Connection) -> None:
    """The tables and indexes (after the jobs table has its columns)."""
    for statement in STATEMENTS:
        conn.execute(statement)


def waits_reason(after: str | None) -> str:
    """A waiting job's ``reason``: ``waits for 12, 13``."""
    return f"waits for {targets_text(after)}"


def attach(
    conn: sqlite3.Connection, first: int, by_after: Mapping[str, set[str | None]]
) -> dict[str, tuple[int, bool]]:
    """Give the new jobs (numbered from ``first`` on, in this transaction) their groups:
    ``by_after`` is each distinct ``after`` of theirs -> the sweeps of its jobs; returns
    ``after`` text -> (group, waiting).  Raises (the caller's transaction rolls back:
    nothing is stored) on an unknown job or sweep, a cycle, or a dependency that can
    never be met."""
    out = {}
    for after, sweeps in by_after.items():
        group, unmet = _group(conn, first, after, sweeps)
        conn.execute(
            "UPDATE jobs SET dep_group = ?, waiting = ?, reason = ? WHERE seq >= ? AND after = ?",
            (group, int(unmet > 0), waits_reason(after) if unmet else None, first, after),
        )
        out[after] = (group, unmet > 0)
    return out


def reattach(conn: sqlite3.Connection, job: Job) -> None:
    """An ended job queued again (``retry``): its dependencies judged afresh, in a group
    of its own (raises, as :func:`attach`, if one can never be met now)."""
    after = job.spec.after
    if not after:
        return
    group, unmet = _group(conn, job.seq, after, {job.spec.sweep})
    sets = ", reason = ?" if unmet else ""
    conn.execute(
        f"UPDATE jobs SET dep_group = ?, waiting = ?{sets} WHERE seq = ?",
        (group, int(unmet > 0), *([waits_reason(after)] if unmet else []), job.seq),
    )


def _group(
    conn: sqlite3.Connection, first: int, after: str, sweeps: set[str | None]
) -> tuple[int, int]:
    """A new group for jobs numbered from ``first`` on with ``after``: its number and
    how many of its dependencies are unmet (those met already count as met)."""
    edges = _edges(conn, first, after, sweeps)
    states = _states(conn, {seq for _, seq in edges})
    unmet = 0
    rows = []
    for kind, seq in edges:
        status, started = states[seq]
        verdict = judge(kind, status, started)
        if verdict is False:
            raise InvalidValueError(
                f"after={after!r}: job {seq} is {status}; it can no longer {MEANING[kind]} "
                "(retry it first, or wait for another job)"
            )
        unmet += verdict is None
        rows.append((seq, kind, 0 if verdict is None else 1))
    group = conn.execute(
        "INSERT INTO dep_groups (unmet, after) VALUES (?, ?)", (unmet, after)
    ).lastrowid
    assert group is not None
    conn.executemany(
        "INSERT INTO dep_edges (grp, on_seq, kind, state) VALUES (?, ?, ?, ?)",
        ((group, *row) for row in rows),
    )
    return group, unmet


def _edges(
    conn: sqlite3.Connection, first: int, after: str, sweeps: set[str | None]
) -> list[tuple[str, int]]:
    """The ``(kind, job number)`` of each dependency of ``after``, each once."""
    edges: dict[tuple[str, int], None] = {}
    for kind, target in parse_after(after):
        if is_sweep(target):
            if target in sweeps:
                raise InvalidValueError(
                    f"after={after!r}: a job of sweep {target} cannot wait for its own sweep "
                    "(a cycle)"
                )
            seqs = [
                r[0]
                for r in conn.execute(
                    "SELECT MAX(seq) FROM jobs WHERE sweep = ? AND seq < ? "
                    "GROUP BY COALESCE(hash, seq)",
                    (target, first),
                )
            ]
            if not seqs:
                raise UnknownJobError(f"after={after!r}: no sweep {target} (or it has no jobs)")
        else:
            seq = int(target)
            if seq >= first:
                if conn.execute("SELECT 1 FROM jobs WHERE seq = ?", (seq,)).fetchone() is None:
                    raise UnknownJobError(f"after={after!r}: no job {seq}")
                raise InvalidValueError(
                    f"after={after!r}: job {seq} is of this same submission (a job can only "
                    "wait for jobs submitted before it, so no cycle can form)"
                )
            seqs = [seq]
        edges.update(dict.fromkeys((kind, seq) for seq in seqs))
    return list(edges)


def _states(conn: sqlite3.Connection, seqs: set[int]) -> dict[int, tuple[str, bool]]:
    """Job number -> (status, whether it ever started); an unknown one raises."""
    found: dict[int, tuple[str, bool]] = {}
    ordered = sorted(seqs)
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(
            (seq, (status, started is not None))
            for seq, status, started in conn.execute(
                f"SELECT seq, status, started FROM jobs WHERE seq IN ({marks})", chunk
            )
        )
    missing = sorted(seqs - found.keys())
    if missing:
        raise UnknownJobError(f"after: no job {', '.join(map(str, missing[:5]))}")  # (deleted)
    return found


def settle(conn: sqlite3.Connection, rev: int, seqs: Sequence[int], now: float) -> list[int]:
    """Judge the unmet dependencies on the jobs ``seqs`` (just started or ended, in this
    transaction at revision ``rev``): release the groups now met, cancel those that
    can never be (and judge their jobs in turn).  The jobs released or cancelled."""
    changed: list[int] = []
    dead: set[int] = set()
    work = list(seqs)
    while work:
        found = _unmet_on(conn, work)
        work = []
        for grp, on_seq, kind, status, started in found:
            if grp in dead:
                continue
            verdict = judge(kind, status, started is not None)
            if verdict is None:
                continue
            if verdict:
                changed += _met(conn, rev, grp, on_seq, kind)
                continue
            dead.add(grp)
            cancelled = _cancel_group(conn, rev, grp, failure(kind, on_seq, status), now)
            changed += cancelled
            work += cancelled
    return changed


def _unmet_on(
    conn: sqlite3.Connection, seqs: Sequence[int]
) -> list[tuple[int, int, str, str, float | None]]:
    """The unmet edges on the jobs ``seqs``, with each job's status and start (none
    read when no edge is unmet anywhere: one probe of the partial index)."""
    if conn.execute("SELECT 1 FROM dep_edges WHERE state = 0 LIMIT 1").fetchone() is None:
        return []
    out = []
    for start in range(0, len(seqs), _CHUNK):
        chunk = seqs[start : start + _CHUNK]
        out += conn.execute(
            "SELECT e.grp, e.on_seq, e.kind, j.status, j.started FROM dep_edges e "
            "JOIN jobs j ON j.seq = e.on_seq "
            f"WHERE e.on_seq IN ({','.join('?' * len(chunk))}) AND e.state = 0",
            list(chunk),
        ).fetchall()
    return out


def _met(conn: sqlite3.Connection, rev: int, grp: int, on_seq: int, kind: str) -> list[int]:
    """Mark one edge met; release its group's jobs if it was the last.  Those released."""
    conn.execute(
        "UPDATE dep_edges SET state = 1 WHERE grp = ? AND on_seq = ? AND kind = ?",
        (grp, on_seq, kind),
    )
    conn.execute("UPDATE dep_groups SET unmet = unmet - 1 WHERE id = ?", (grp,))
    if conn.execute("SELECT unmet FROM dep_groups WHERE id = ?", (grp,)).fetchone()[0] > 0:
        return []
    seqs = [
        r[0]
        for r in conn.execute(
            "SELECT seq FROM jobs WHERE dep_group = ? AND status = 'queued' AND waiting = 1",
            (grp,),
        )
    ]
    # (every job of the group: one cancelled while it waited, then retried, runs at once)
    conn.execute(
        "UPDATE jobs SET waiting = 0, rev = ?, "
        "reason = CASE WHEN status != 'queued' OR held THEN reason END "
        "WHERE dep_group = ? AND waiting = 1",
        (rev, grp),
    )
    return seqs


def _cancel_group(
    conn: sqlite3.Connection, rev: int, grp: int, reason: str, now: float
) -> list[int]:
    """Cancel the queued jobs of group ``grp`` with ``reason``; drop its edges."""
    seqs = [
        r[0]
        for r in conn.execute(
            "SELECT seq FROM jobs WHERE dep_group = ? AND status = 'queued'", (grp,)
        )
    ]
    conn.execute(_TRANSITION, (now, reason, grp))
    conn.execute(
        "UPDATE jobs SET status = 'cancelled', waiting = 0, reason = ?, ended = ?, rev = ? "
        "WHERE dep_group = ? AND status = 'queued'",
        (reason, now, rev, grp),
    )
    conn.execute("UPDATE jobs SET waiting = 0 WHERE dep_group = ? AND waiting = 1", (grp,))
    conn.execute("UPDATE dep_edges SET state = 2 WHERE grp = ? AND state = 0", (grp,))
    conn.execute("UPDATE dep_groups SET unmet = -1 WHERE id = ?", (grp,))
    return seqs


class DepsPart(StorePart):
    """Reading what a job waits for."""

    def unmet_dependencies(self, group: int) -> list[tuple[str, int]]:
        """The ``(kind, job number)`` of group ``group``'s unmet dependencies."""
        return [
            (kind, seq)
            for kind, seq in self._db.read(
                "SELECT kind, on_seq FROM dep_edges WHERE grp = ? AND state = 0 ORDER BY on_seq",
                (group,),
            )
        ]


__all__ = ["STATEMENTS", "DepsPart", "attach", "create", "reattach", "settle", "waits_reason"]
