"""Counting the rows a test's store reads (what the dispatcher read back, and what it
took as offered)."""

from __future__ import annotations

from typing import Any


def count_reads(store: Any) -> list[int]:
    """From now on, every row ``store`` reads is counted in the one-item list returned."""
    read, rows = store._db.read, [0]

    def counting(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        found: list[tuple[object, ...]] = read(*args, **kwargs)
        rows[0] += len(found)
        return found

    store._db.read = counting
    return rows
