"""The dispatcher's light queue entries, and the batches the submitting thread offers.

The queue cache holds, per queued job, only what the plan and the dispatch order read
(:class:`Queued`, ~100 bytes); a whole :class:`~nbsched.jobs.Job` with its spec is
~1.4 KB, 140 MB for a sweep of 100,000 jobs.  The whole rows are read for the jobs a
plan chose to start (:meth:`~.queue.QueueCache.to_start`).

A :class:`Batch` is made by the thread that submitted the jobs (in
:meth:`~.inbox.Inbox.offer`), not by the loop: its entries come sorted and indexed, so
the loop takes in 100,000 jobs without per-job work in its turn, and an urgent job
submitted after them is planned first at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import NamedTuple

from ..jobs import Job, JobSpec
from ..store.estimates import NO_ESTIMATE, Estimate, Estimator
from ..store.feed import Queueing

#: What a job's (or a feed row's) estimate comes from, as ``Estimator.of_grounds`` takes it.
_GROUNDS = attrgetter("time_limit", "expected_s", "sweep", "estimate_key")

#: Offered batches up to this many jobs keep their whole jobs, so a start of one of
#: them reads nothing (an ``add_command`` at a time: the engine's throughput).
SMALL_BATCH = 64


class Queued(NamedTuple):
    """A queued job as the plan sees it (:class:`~nbsched.allocation.QueuedJob`).

    A tuple, not a dataclass, on purpose: its first two fields are the dispatch order
    (:func:`~nbsched.allocation.queue_key`), so a queue of them sorts, merges and
    bisects in C with no key function, and it is the smallest record Python has.
    No two entries of one queue share ``(priority, seq)``, so a comparison never
    reaches the other fields."""

    priority: int
    seq: int
    required_gpus: float
    allowed_gpus: tuple[int, ...] | None
    not_before: float | None
    attempts: int
    #: The revision its row was read at (or written at, for a job this process offered).
    rev: int
    #: How long it is expected to run (s), as known when the entry was made, and on what
    #: grounds: "time limit", "hint", "sweep", "script", "command" (None: no estimate).
    #: See :mod:`nbsched.store.estimates`.
    estimate_s: float | None = None
    estimate_source: str | None = None

    @property
    def id(self) -> str:
        return str(self.seq)

    @classmethod
    def of(cls, job: Job, rev: int, estimates: Estimator | None = None) -> Queued:
        """The entry of a whole job read (or written) at ``rev``."""
        spec = job.spec
        estimate = NO_ESTIMATE if estimates is None else estimates.of_spec(spec)
        return tuple.__new__(
            cls,
            (
                spec.priority,
                job.seq,
                spec.required_gpus,
                spec.allowed_gpus,
                job.not_before,
                job.attempts,
                rev,
                *estimate,
            ),
        )

    @classmethod
    def read(cls, row: Queueing, estimates: Estimator | None = None) -> Queued:
        """The entry of a row of the change feed.  As in :meth:`Batch.of`, it keeps no
        object of the row: the numbers are copied, the requirement and the allowed GPUs
        shared with other rows' (the row's memory is given back once it is gone)."""
        allowed = row.allowed_gpus
        # (one answer per distinct set of grounds: a sweep's rows share one object)
        estimate = NO_ESTIMATE if estimates is None else estimates.of_grounds(_GROUNDS(row))
        return tuple.__new__(
            cls,
            (
                row.priority,
                row.seq + 0,
                _shared(row.required_gpus),
                None if allowed is None else _allowed(allowed),
                row.not_before,
                row.attempts,
                row.rev + 0,
                *estimate,
            ),
        )


class Running(NamedTuple):
    """A running job as a plan that looks ahead sees it: its GPUs and share, when it
    started, and how long it is expected to run in all (as :class:`Queued`'s)."""

    seq: int
    gpus: tuple[int, ...]
    required_gpus: float
    started: float | None
    estimate_s: float | None = None
    estimate_source: str | None = None

    @classmethod
    def of(cls, job: Job, estimates: Estimator | None = None) -> Running:
        estimate = NO_ESTIMATE if estimates is None else estimates.of_spec(job.spec)
        return cls(job.seq, job.gpus, job.spec.required_gpus, job.started, *estimate)


#: One object per distinct requirement, and per distinct list of allowed GPUs as
#: stored, read (up to :data:`MAX_SHARED` of each).
MAX_SHARED = 4096
_FLOATS: dict[float, float] = {}
_TUPLES: dict[str, tuple[int, ...]] = {}


def _shared(value: float) -> float:
    found = _FLOATS.get(value)
    if found is None:
        found = value + 0.0
        if len(_FLOATS) < MAX_SHARED:
            _FLOATS[found] = found
    return found


def _allowed(text: str) -> tuple[int, ...]:
    found = _TUPLES.get(text)
    if found is None:
        found = tuple(json.loads(text))
        if len(_TUPLES) < MAX_SHARED:
            _TUPLES[text] = found
    return found


@dataclass(frozen=True)
class Batch:
    """Jobs this process submitted together, as written at ``rev``: entries sorted in
    dispatch order and indexed by number, made by the submitting thread."""

    rev: int
    #: The entries in dispatch order.
    entries: list[Queued]
    #: The same entries by job number.
    by_seq: dict[int, Queued]
    #: The whole jobs, by number, of a small batch (empty for a big one).
    whole: dict[int, Job]
    #: The smallest requirement among them (what may start first, for
    #: :func:`~nbsched.allocation.could_start`).
    least: float

    @classmethod
    def of(cls, rev: int, jobs: Sequence[Job], estimates: Estimator | None = None) -> Batch:
        whole = {job.seq: job for job in jobs} if len(jobs) <= SMALL_BATCH else {}
        # Queued.of, inlined (a third faster), with no object of a job kept: a job's
        # number, requirement, ... sit among its other objects, and would keep their
        # memory from being given back once the jobs are gone (100,000 jobs left 80 MB
        # behind with their numbers kept, 22 MB with copies).  Numbers are copied
        # (``+ 0``), the other values shared: one object per distinct value (a dict
        # each: 1 and 1.0 are one key).
        priorities: dict[int, int] = {}
        requirements: dict[float, float] = {}
        allowed: dict[tuple[int, ...] | None, tuple[int, ...] | None] = {}
        one_p, one_r, one_a = priorities.setdefault, requirements.setdefault, allowed.setdefault
        new = tuple.__new__
        entries = [
            new(
                Queued,
                (
                    one_p(s.priority, s.priority),
                    j.seq + 0,
                    one_r(s.required_gpus, s.required_gpus),
                    one_a(s.allowed_gpus, s.allowed_gpus),
                    j.not_before,
                    j.attempts,
                    rev,
                    estimate[0],
                    estimate[1],
                ),
            )
            for j, estimate in zip(jobs, _estimates(jobs, estimates), strict=True)
            for s in (j.spec,)
        ]
        return cls.sort(rev, entries, whole)

    @classmethod
    def sort(cls, rev: int, entries: list[Queued], whole: dict[int, Job]) -> Batch:
        """A batch of ``entries`` (sorted here: cheap when they come in order)."""
        entries.sort()
        return cls(
            rev,
            entries,
            dict(zip(map(itemgetter(1), entries), entries, strict=True)),
            whole,
            min(map(itemgetter(2), entries), default=0.0),
        )


class Entries(list[Queued]):
    """The entries of jobs just stored, made as they were (:func:`entry_maker`): what a
    big submission offers its dispatcher instead of whole jobs."""


def entry_maker(estimates: Estimator | None) -> Callable[[int, int, JobSpec], Queued]:
    """``make(rev, seq, spec)``: the entry of job ``seq`` of ``spec``, just stored at
    ``rev`` (what :meth:`Batch.of` makes of a whole job; a new job has no attempts
    and no backoff).  For :meth:`~nbsched.store.Store.add_made_at`: the submission's
    specs are not all kept until the batch is made, nor a whole job made per spec.
    The values are shared as :meth:`Batch.of` shares them."""
    priorities: dict[int, int] = {}
    requirements: dict[float, float] = {}
    allowed: dict[tuple[int, ...] | None, tuple[int, ...] | None] = {}
    one_p, one_r, one_a = priorities.setdefault, requirements.setdefault, allowed.setdefault
    new = tuple.__new__
    estimate = None if estimates is None else estimates.of_grounds

    def make(rev: int, seq: int, s: JobSpec) -> Queued:
        limit, source = NO_ESTIMATE if estimate is None else estimate(_GROUNDS(s))
        return new(
            Queued,
            (
                one_p(s.priority, s.priority),
                seq,
                one_r(s.required_gpus, s.required_gpus),
                one_a(s.allowed_gpus, s.allowed_gpus),
                None,
                0,
                rev,
                limit,
                source,
            ),
        )

    return make


def _estimates(jobs: Sequence[Job], estimates: Estimator | None) -> Iterable[Estimate]:
    """The estimate of each job (a sweep's jobs share theirs: one lookup for all)."""
    if estimates is None:
        return repeat(NO_ESTIMATE, len(jobs))
    return list(map(estimates.of_grounds, map(_GROUNDS, map(attrgetter("spec"), jobs))))
