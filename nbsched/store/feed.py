"""The change feed: what was written since a revision, without reading whole rows.

Each write moves a global revision on and stamps the rows it wrote with it, so a
reader that remembers the revision of its last look reads only the jobs written
after it (an indexed column): a dispatcher's or a waiter's work is proportional to
what changed, not to the length of the queue.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from ..jobs import JobStatus
from .connection import StorePart

#: One job written after the revision asked about: ``(id, status, token, its row's revision)``.
Change = tuple[str, JobStatus, "str | None", int]


class ChangeFeed(NamedTuple):
    """What :meth:`FeedPart.changes_since` read, in one statement (one snapshot)."""

    #: The current revision: the one to ask about next time.
    rev: int
    #: The jobs written after the revision asked about.
    changes: list[Change]
    #: The GPUs paused now (a pause or a resume moves the revision too).
    paused: frozenset[int]


class Queueing(NamedTuple):
    """One job written after the revision asked about, with what a queue needs of it:
    its ``status`` and ``token`` say whether it still waits; the first seven fields are
    those of the dispatcher's :class:`~nbsched.dispatcher.entries.Queued` (a queued
    job's entry is a slice of the row: no per-field work for 100,000 of them)."""

    priority: int
    seq: int
    required_gpus: float
    #: The allowed GPUs as stored (JSON text), None: any.
    allowed_gpus: str | None
    not_before: float | None
    attempts: int
    rev: int
    #: The status as stored (a :class:`JobStatus` value).
    status: str
    token: str | None
    #: Whether the job is held or waits for a dependency (no dispatcher's to start).
    held: int
    #: What its estimate comes from (:class:`~nbsched.store.estimates.Estimator`).
    time_limit: float | None
    expected_s: float | None
    sweep: str | None
    estimate_key: str | None


class QueueFeed(NamedTuple):
    """What :meth:`FeedPart.queue_changes` read, in one statement (one snapshot)."""

    rev: int
    changes: list[Queueing]
    paused: frozenset[int]


#: Revisions :meth:`FeedPart.queue_changes` leaves out, at most (one range each).
MAX_SKIPPED = 50


class FeedPart(StorePart):
    """Revisions, and the jobs written after one."""

    def revision(self) -> int:
        """The revision of the last write; see :meth:`changes_since`."""
        return int(self._db.read("SELECT value FROM meta WHERE key = 'rev'")[0][0])

    def changes_since(self, rev: int) -> ChangeFeed:
        """The current revision, the jobs written after ``rev`` (their status and
        attempt token, not the whole rows) and the paused GPUs, all of one snapshot:
        a job committed by another process during the read is either in it or in
        the next call's, never lost between the two."""
        found = self._db.read(
            "SELECT 0, seq, status, token, rev FROM jobs WHERE rev > ? "
            "UNION ALL SELECT 1, NULL, NULL, NULL, CAST(value AS INTEGER) FROM meta "
            "WHERE key = 'rev' "
            "UNION ALL SELECT 2, gpu, NULL, NULL, NULL FROM gpu_pauses",
            (rev,),
        )
        current = rev
        changes: list[Change] = []
        paused = []
        for kind, seq, status, token, row_rev in found:
            if kind == 0:
                changes.append((str(seq), JobStatus(status), token, row_rev))
            elif kind == 1:
                current = row_rev
            else:
                paused.append(seq)
        return ChangeFeed(current, changes, frozenset(paused))

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
        for kind, value in self._db.read(sql, params):
            if kind:
                rev = int(value)
            else:
                found.add(value)
        return rev, (found if seqs is None else seqs & found)

    def queue_changes(self, rev: int, skip: Collection[int] = ()) -> QueueFeed:
        """As :meth:`FeedPart.changes_since`, with the columns the queue needs, and
        without the rows written at the revisions ``skip`` (still at them: unchanged
        since; the dispatcher knows them, from the jobs this process submitted).  At
        most :data:`MAX_SKIPPED` of them are left out (each is a range of the index);
        the rows of the others come as usual: the first ones of ``skip`` are left out."""
        cuts = sorted({r for r in list(skip)[:MAX_SKIPPED] if r > rev})
        bounds = [rev, *cuts]
        ranges: list[tuple[str, tuple[int, ...]]] = [
            ("rev > ? AND rev < ?", (lo, hi)) for lo, hi in zip(bounds[:-1], cuts, strict=True)
        ]
        ranges.append(("rev > ?", (bounds[-1],)))
        cols = "priority, seq, required_gpus, allowed_gpus, not_before, attempts, rev, status"
        more = "token, held OR waiting, time_limit, expected_s, sweep, estimate_key"
        sql = " UNION ALL ".join(f"SELECT {cols}, {more} FROM jobs WHERE {w}" for w, _ in ranges)
        # (the revision and the pauses: rows whose status is NULL, told apart by seq)
        nulls = "NULL, NULL, 0, NULL, NULL, NULL, NULL"
        found = self._db.read(
            f"{sql} UNION ALL SELECT 0, 0, 0, 0, 0, 0, CAST(value AS INTEGER), {nulls} "
            f"FROM meta WHERE key = 'rev' UNION ALL SELECT 0, 1, 0, 0, 0, 0, gpu, {nulls} "
            "FROM gpu_pauses",
            [p for _, params in ranges for p in params],
        )
        current, paused = rev, []
        for extra in [row for row in found if row[7] is None]:
            if extra[1]:
                paused.append(extra[6])
            else:
                current = extra[6]
        new = tuple.__new__
        changes = [new(Queueing, row) for row in found if row[7] is not None]
        return QueueFeed(current, changes, frozenset(paused))
