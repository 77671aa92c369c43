"""The notifications outbox: each notification to send (a job's or a sweep's end, to
one target), written before it is sent and marked once it is, so one that was not sent
when its engine died is sent by the next; and the change-feed revision the engine's
notifier has read up to (see :mod:`nbsched.notify.deliver`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .connection import StorePart

#: The meta key of the revision the notifier has read the change feed up to.
REV_KEY = "notify:rev"
_ENDED = "('succeeded', 'failed', 'cancelled')"
#: A row of the outbox to send: ``(id, key, target JSON, message JSON, tries so far)``.
Outgoing = tuple[int, str, str, str, int]


class NotificationsPart(StorePart):
    """The outbox of notifications, and what the notifier reads of jobs and sweeps."""

    def notify_rev(self) -> int | None:
        """The revision the notifier has read up to (None: no notifier has run here)."""
        found = self._db.read("SELECT value FROM meta WHERE key = ?", (REV_KEY,))
        return int(found[0][0]) if found else None

    def queue_notifications(
        self, rows: Iterable[tuple[str, str, str]], rev: int, now: float
    ) -> None:
        """Add ``(key, target, message)`` rows (a key already there is not added again)
        and move the notifier's revision to ``rev``, in one transaction."""
        with self._db.write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO notifications (key, target, message, state, tries, "
                "next_at, created) VALUES (?, ?, ?, 'pending', 0, ?, ?)",
                [(key, target, message, now, now) for key, target, message in rows],
            )
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (REV_KEY, str(rev)),
            )

    def due_notifications(self, now: float, limit: int) -> list[Outgoing]:
        """The pending notifications due by ``now``, the earliest first."""
        found = self._db.read(
            "SELECT id, key, target, message, tries FROM notifications "
            "WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?",
            (now, limit),
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in found]

    def next_notification_at(self) -> float | None:
        """When the next pending notification is due (None: none is pending)."""
        found = self._db.read("SELECT MIN(next_at) FROM notifications WHERE state = 'pending'")
        return None if not found or found[0][0] is None else float(found[0][0])

    def notification_tried(
        self, row_id: int, tries: int, state: str, next_at: float, error: str | None
    ) -> None:
        """Record a try: ``state`` ``sent``, ``pending`` (again at ``next_at``) or
        ``failed`` (given up)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE notifications SET state = ?, tries = ?, next_at = ?, error = ? "
                "WHERE id = ?",
                (state, tries, next_at, error, row_id),
            )

    def prune_notifications(self, before: float) -> None:
        """Forget the notifications sent or given up on before ``before``."""
        with self._db.write() as conn:
            conn.execute(
                "DELETE FROM notifications WHERE state != 'pending' AND created < ?", (before,)
            )

    def notifications(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest ``limit`` notifications, oldest first: ``key``, ``state``,
        ``tries``, ``error``, ``created`` and the message's ``title``."""
        found = self._db.read(
            "SELECT key, state, tries, error, created, json_extract(message, '$.title') "
            "FROM notifications ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        keys = ("key", "state", "tries", "error", "created", "title")
        return [dict(zip(keys, r, strict=True)) for r in reversed(found)]

    def ended_since(
        self, rev: int, every: bool = True, after: float | None = None
    ) -> tuple[int, list[tuple[int, str | None, str | None]]]:
        """``(the current revision, (seq, notify, sweep) of each job written after
        rev that has ended)``, in one statement (one snapshot), reading only the ended
        rows of the revision index's range (not the queued and running ones: a sweep of
        100,000 jobs just queued costs no Python object each); without ``every``, only
        the jobs with targets or a sweep; with ``after``, only those that ended then or
        later."""
        some = "" if every else " AND (notify IS NOT NULL OR sweep IS NOT NULL)"
        if after is not None:
            some += f" AND ended >= {float(after)!r}"
        found = self._db.read(
            f"SELECT seq, notify, sweep FROM jobs WHERE rev > ? AND +status IN {_ENDED}{some} "
            "UNION ALL SELECT NULL, value, NULL FROM meta WHERE key = 'rev'",
            (rev,),
        )
        current = rev
        out: list[tuple[int, str | None, str | None]] = []
        for seq, notify, sweep in found:
            if seq is None:
                current = int(notify)
            else:
                out.append((seq, notify, sweep))
        return current, out

    def sweep_unended(self, sweep: str) -> bool:
        """Whether a job of the sweep is still queued or running."""
        return bool(
            self._db.read(
                "SELECT 1 FROM jobs WHERE sweep = ? AND status IN ('queued', 'running') LIMIT 1",
                (sweep,),
            )
        )

    def sweep_ends(self, sweep: str, limit: int) -> tuple[float | None, list[str]]:
        """The sweep's last end, and its first ``limit`` failed or cancelled jobs (the
        newest job of each combination)."""
        last = self._db.read("SELECT MAX(ended) FROM jobs WHERE sweep = ?", (sweep,))
        bad = self._db.read(
            "SELECT seq FROM jobs WHERE seq IN (SELECT MAX(seq) FROM jobs WHERE sweep = ? "
            "GROUP BY COALESCE(hash, seq)) AND status IN ('failed', 'cancelled') "
            "ORDER BY seq LIMIT ?",
            (sweep, limit),
        )
        return (last[0][0] if last else None), [str(r[0]) for r in bad]
