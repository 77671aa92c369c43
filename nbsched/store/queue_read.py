"""The queue in dispatch order, read a page at a time from the ``(status, priority,
seq)`` index.

``why()`` of one job needs only the jobs ahead of it, and of those only what the plan
reads (:func:`nbsched.allocation.plan`: the requirement, the allowed GPUs, a retry's
back-off): decoding every queued job in full to explain one of them took ~2 s with
100,000 queued.  A status shows the first jobs of the queue, not all of it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

from ..jobs import Job, JobSpec, JobStatus
from . import rows
from .connection import StorePart

#: Rows read per statement while walking the queue.
PAGE = 500

#: What the plan reads of a queued job, and what makes a :class:`Job` of it.
_LIGHT_SQL = (
    "seq, priority, required_gpus, allowed_gpus, not_before, kind, submitted, time_limit, "
    "expected_s, sweep, estimate_key"
)


def _defaults(cls: type) -> dict[str, Any]:
    """The defaults of ``cls``'s fields (those without one left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


_SPEC_DEFAULTS = _defaults(JobSpec)
_JOB_DEFAULTS = _defaults(Job)


def light_job(row: tuple[Any, ...]) -> Job:
    """A queued job with what the plan reads (the rest of its spec left at the
    defaults): built without the dataclasses' ``__init__``, as :func:`rows.decode_job`
    does, a few times faster for the pages a ``why()`` walks."""
    seq, priority, required, allowed, not_before, kind, submitted, limit, expected, sweep, key = row
    spec = object.__new__(JobSpec)
    spec.__dict__.update(_SPEC_DEFAULTS)
    spec.__dict__.update(
        kind=kind,
        required_gpus=required,
        priority=priority,
        allowed_gpus=None if allowed is None else tuple(json.loads(allowed)),
        # (what its estimate comes from: see Job.estimate_s, nbsched.store.estimates)
        time_limit=limit,
        expected_s=expected,
        sweep=sweep,
        estimate_key=key,
    )
    job = object.__new__(Job)
    job.__dict__.update(_JOB_DEFAULTS)
    job.__dict__.update(
        id=str(seq),
        seq=seq,
        status=JobStatus.QUEUED,
        spec=spec,
        submitted=submitted,
        not_before=not_before,
    )
    return job


class QueueReadPart(StorePart):
    """The queued jobs in dispatch order (priority, then submission)."""

    def queued_ahead(self, priority: int, seq: int, page: int | None = None) -> Iterator[Job]:
        """The queued jobs that come before ``(priority, seq)`` in dispatch order
        (but the held and waiting ones, which no dispatcher starts), light (:func:`light_job`),
        read ``page`` (:data:`PAGE`) rows at a time: a caller that stops early reads
        no more.  Each page is its own snapshot (as for a status).

        The queue is walked one priority at a time, each by ``seq``: a page is one
        seek in the index (a condition on ``(priority, seq)`` together would make
        SQLite step through every job of the priority for each page)."""
        size = PAGE if page is None else page
        level = self._next_priority(None)
        while level is not None and level <= priority:
            after = 0
            while True:
                cond = "status = ? AND priority = ? AND seq > ? AND NOT held AND NOT waiting"
                params: list[Any] = [JobStatus.QUEUED.value, level, after]
                if level == priority:
                    cond += " AND seq < ?"
                    params.append(seq)
                found = self._db.read(
                    f"SELECT {_LIGHT_SQL} FROM jobs WHERE {cond} ORDER BY seq LIMIT ?",
                    [*params, size],
                )
                for row in found:
                    yield light_job(row)
                if len(found) < size:
                    break
                after = found[-1][0]
            level = self._next_priority(level)

    def _next_priority(self, after: int | None) -> int | None:
        """The lowest priority of a queued job (above ``after``), None if none."""
        cond = "status = ?"
        params: list[Any] = [JobStatus.QUEUED.value]
        if after is not None:
            cond += " AND priority > ?"
            params.append(after)
        found = self._db.read(f"SELECT MIN(priority) FROM jobs WHERE {cond}", params)
        value = found[0][0]
        return None if value is None else int(value)

    def queued_table(self, limit: int | None = None) -> list[tuple[Any, ...]]:
        """The queued jobs in dispatch order (only the first ``limit``), as
        :meth:`~.jobs.JobsPart.table` reads them (:data:`~.rows.TABLE_COLUMNS`)."""
        sql = f"SELECT {rows.TABLE_SQL} FROM jobs WHERE status = ? ORDER BY priority, seq"
        params: list[Any] = [JobStatus.QUEUED.value]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        return self._db.read(sql, params)


__all__ = ["PAGE", "QueueReadPart", "light_job"]
