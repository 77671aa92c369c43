"""How long jobs ran: the ``durations`` table, one row per job that succeeded, written
in the transaction that records its end, and read by key for learned estimates
(:mod:`.estimates`).

The table is made with the others (:mod:`.schema`).  A row keeps the job's sweep and
its :func:`estimate_key` (its script and argument names, or its command), each indexed
with the end time, so the last
:data:`RECENT` runs of a key are one index range: an estimate costs the same
whatever the number of jobs.  Only successful runs are kept: a failed run ended
early, and says nothing of how long the work takes.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence

from ..jobs import Job, compact_json
from .connection import StorePart

#: How many of a key's latest runs an estimate looks at.
RECENT = 20

#: The column of each kind of key.
COLUMNS = {"sweep": "sweep", "key": "estimate_key"}


def estimate_key(
    kind: str, script: str | None, args: Sequence[str], command: str | None
) -> str | None:
    """Which ended jobs a job is like: ``"script:"`` + a digest of its script and its
    argument names (the words starting with ``-`` that are not numbers, up to any
    ``=``, in sorted order: ``--lr 0.1 --seed 1`` is like ``--seed 2 --lr 0.3``), or
    ``"command:"`` + a digest of its command."""
    if kind == "command":
        if command is None:
            return None
        return "command:" + _digest(command)
    names = sorted({a.split("=", 1)[0] for a in args if _is_name(a)})
    return "script:" + _digest(compact_json([script or "", names]))


def _is_name(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not (word[1].isdigit() or word[1] == ".")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def typical(seconds: Sequence[float]) -> float | None:
    """The estimate of runs that took ``seconds``: their upper median (the middle value,
    the higher of the two middle ones for an even count).  One run far off moves it by
    at most one place in the sorted list, so from three runs on it always lies between
    two real runs; of two runs it is the longer (an estimate errs long, not short)."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return ordered[len(ordered) // 2]


def record(conn: sqlite3.Connection, job: Job, ended: float) -> None:
    """Keep how long ``job`` ran (its attempt that just succeeded), in the caller's
    transaction."""
    if job.started is None:
        return
    spec = job.spec
    conn.execute(
        "INSERT OR REPLACE INTO durations (seq, sweep, estimate_key, seconds, ended) "
        "VALUES (?, ?, ?, ?, ?)",
        (job.seq, spec.sweep, spec.estimate_key, max(0.0, ended - job.started), ended),
    )


class DurationsPart(StorePart):
    """The latest durations of a key."""

    def recent_durations(self, kind: str, key: str, limit: int = RECENT) -> list[float]:
        """Seconds of the latest ``limit`` successful runs of the jobs whose ``kind``
        (``"sweep"`` or ``"key"``: :func:`estimate_key`) is ``key``, newest first."""
        column = COLUMNS[kind]
        found = self._db.read(
            f"SELECT seconds FROM durations WHERE {column} = ? ORDER BY ended DESC LIMIT ?",
            (key, limit),
        )
        return [row[0] for row in found]

    def durations_of(self, kind: str, keys: Sequence[str]) -> dict[str, list[float]]:
        """:meth:`recent_durations` of many keys at once (chunks of 500 per statement):
        key -> seconds, newest first (a key with no run is left out)."""
        column = COLUMNS[kind]
        found: dict[str, list[tuple[float, float]]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            rows = self._db.read(
                f"SELECT {column}, ended, seconds FROM durations "
                f"WHERE {column} IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, ended, seconds in rows:
                found.setdefault(key, []).append((ended, seconds))
        return {
            key: [seconds for _, seconds in sorted(runs, reverse=True)[:RECENT]]
            for key, runs in found.items()
        }


__all__ = ["RECENT", "DurationsPart", "estimate_key", "record", "typical"]
