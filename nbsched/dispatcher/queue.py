"""The dispatcher's cache of the queue and of the running jobs.

The store is the truth; this cache follows it by revision (:meth:`Store.queue_changes`
gives the jobs changed since the last look), so a turn costs what changed, not the
queue's length.  A queued job is a light entry (:class:`~.entries.Queued`): the whole
rows are read for the jobs a plan starts (:meth:`QueueCache.to_start`).

Jobs this process submitted are taken as they were written, without reading their
rows back: the submitting thread offers them as a sorted :class:`~.entries.Batch`,
kept beside the queue as a run of its own (the plan reads the queue and the runs
merged, lazily) until the end of the turn merges it in (:meth:`QueueCache.merge`);
their revisions are left out of the next read of the change feed.  A turn right
after a sweep of 100,000 jobs thus plans an urgent job submitted after it at once.

Back-offs: a retry's ``not_before`` is wall-clock time (it is stored, and shown to
users).  A job waits out its back-off until the wall clock *or* the monotonic clock
says it is over (:meth:`QueueCache.eligible`), so a wall clock stepped back does not
hold it for hours, and one stepped forward only shortens the back-off (it never runs
a job twice).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from ..allocation import Placement, booked_share
from ..backfill import Running as PlanRunning
from ..jobs import Job, JobStatus
from ..store import Store
from ..store.estimates import Estimator
from ..store.feed import QueueFeed
from .ends import backoff_s
from .entries import SMALL_BATCH, Batch, Queued, Running
from .limits import Deadlines

#: Whole jobs kept from small offered batches, at most (see :meth:`QueueCache.to_start`).
MAX_WHOLE = 4096
#: What a row of the feed's estimate comes from (see :class:`~nbsched.store.feed.Queueing`).
_GROUNDS = attrgetter("time_limit", "expected_s", "sweep", "estimate_key")


@dataclass
class QueueCache:
    """The queued and running jobs as the last look at the store found them."""

    #: The retry back-off of the configuration (see :func:`~.ends.backoff_s`).
    retry_backoff_s: float
    #: The store revision read up to.
    rev: int = 0
    #: The paused GPUs, read with the changes.
    paused: frozenset[int] = frozenset()
    #: The queued jobs in dispatch order (tuples sort in it), but those in ``runs``.
    queue: list[Queued] = field(default_factory=list)
    #: The same entries by job number.
    queued: dict[int, Queued] = field(default_factory=dict)
    #: Big batches taken in since the last :meth:`merge`, each sorted and indexed.
    runs: list[Batch] = field(default_factory=list)
    #: Whole jobs of small offered batches, by number, as submitted (dropped when
    #: their rows change): a start of one of them reads nothing.
    whole: dict[int, Job] = field(default_factory=dict)
    #: Revisions whose rows were all taken from offers, not read (-> how many).
    taken: dict[int, int] = field(default_factory=dict)
    #: The running jobs by id, as this dispatcher last knew them.
    running: dict[str, Job] = field(default_factory=dict)
    #: Job id -> monotonic time at which its retry back-off ends (see :meth:`eligible`).
    backoff_until: dict[str, float] = field(default_factory=dict)
    #: The deadlines of the running jobs with a time limit (see :mod:`.limits`).
    deadlines: Deadlines = field(default_factory=Deadlines)
    #: Where the entries' estimates come from (None: none, as in tests of the cache alone).
    estimates: Estimator | None = None

    def has_queued(self) -> bool:
        """Whether any job is queued."""
        return bool(self.queued or self.runs)

    def entry(self, seq: int) -> Queued | None:
        """The queued entry of job number ``seq``, if it is queued."""
        found = self.queued.get(seq)
        if found is None:
            for run in self.runs:
                found = run.by_seq.get(seq)
                if found is not None:
                    break
        return found

    def add(self, entry: Queued) -> None:
        """Queue ``entry`` (in place of the job's entry before, if any)."""
        self.forget(entry.id, running=False)
        self.queued[entry.seq] = entry
        bisect.insort(self.queue, entry)

    def forget(self, job_id: str, running: bool = True) -> None:
        """Drop a job from the queue (and, with ``running``, from the running jobs)."""
        seq = int(job_id)
        self.whole.pop(seq, None)
        old = self.queued.pop(seq, None)
        if old is not None:
            _remove(self.queue, old)
        else:
            for run in self.runs:
                old = run.by_seq.pop(seq, None)
                if old is not None:
                    _remove(run.entries, old)
                    break
        if running:
            self.running.pop(job_id, None)
        self.backoff_until.pop(job_id, None)

    def take(self, batches: Iterable[Batch]) -> None:
        """Queue the jobs this process submitted, as they were written, without reading
        the store: when nothing else woke the loop, they are all that changed in it
        (every other writer wakes it, and then it reads).  A batch written at a
        revision the feed was read past is known from the feed already."""
        for batch in batches:
            if batch.rev <= self.rev or not batch.entries:
                continue
            self.taken[batch.rev] = self.taken.get(batch.rev, 0) + len(batch.entries)
            self._take(batch)
            if len(batch.whole) + len(self.whole) <= MAX_WHOLE:
                self.whole.update(batch.whole)

    def _take(self, batch: Batch) -> None:
        """Queue a batch of new jobs: a big one as a run of its own (see :meth:`merge`)."""
        if len(batch.entries) > SMALL_BATCH:
            self.runs.append(batch)
            return
        for entry in batch.entries:
            self.add(entry)

    def merge(self) -> None:
        """Merge the runs into the queue (at the end of a turn: after its starts)."""
        for run in self.runs:
            new, queue = run.entries, self.queue
            if not new:
                continue
            if not queue or queue[-1] < new[0]:
                queue += new  # (a sweep: after the queue's last job)
            elif new[-1] < queue[0]:
                queue[:0] = new
            else:
                queue += new
                queue.sort()  # (two sorted runs: one merge pass, in C)
            self.queued.update(run.by_seq)
        self.runs = []

    def read(self, store: Store, batches: Iterable[Batch]) -> QueueFeed:
        """Take the ``batches`` offered (from memory), then read the jobs changed since
        the last look but theirs: what :meth:`apply` takes in."""
        self.take(batches)
        big = sorted(self.taken, key=self.taken.__getitem__, reverse=True)
        feed = store.queue_changes(self.rev, big)
        self.rev, self.paused = feed.rev, feed.paused
        self.taken.clear()  # (all at or below the revision read: in the feed from now)
        return feed

    def apply(self, store: Store, feed: QueueFeed, now: float, mono: float) -> None:
        """Take in the changes :meth:`read` read, at wall-clock ``now``, monotonic
        ``mono`` (the running jobs that are not this dispatcher's own are read whole)."""
        wanted: list[str] = []
        fresh: list[Queued] = []
        queued = self.queued
        if self.estimates is not None and feed.changes:  # (their estimates, read at once)
            self.estimates.prefetch(set(map(_GROUNDS, feed.changes)))
        for change in feed.changes:
            seq, status = change.seq, change.status
            if status == JobStatus.QUEUED:
                entry = queued.get(seq)
                if entry is None and self.runs:
                    entry = self.entry(seq)
                if entry is not None and entry.rev == change.rev:
                    continue  # queued here as it still is (taken from the offers)
                if entry is not None or self.running or self.backoff_until:
                    self.forget(str(seq))
                if change.held:
                    continue  # (held or waiting: out of the queue until released)
                fresh.append(Queued.read(change, self.estimates))
                continue
            job_id = str(seq)
            known = self.running.get(job_id)
            if status == JobStatus.RUNNING and known is not None and known.token == change.token:
                # off the queue; nothing else to learn: it is this dispatcher's own write
                self.forget(job_id, running=False)
            elif status == JobStatus.RUNNING:
                wanted.append(job_id)
            else:
                self.forget(job_id)  # ended: nothing of the row is needed
        for job in store.get_many(wanted) if wanted else []:
            self.forget(job.id)
            if job.status == JobStatus.RUNNING:
                self.running[job.id] = job
                self.deadlines.add(job)
            elif (
                job.status == JobStatus.QUEUED and not job.held and not job.waiting
            ):  # (queued again since the feed's read)
                # (read again when the feed has it)
                fresh.append(Queued.of(job, -1, self.estimates))
        self._learn(fresh, now, mono)

    def _learn(self, fresh: list[Queued], now: float, mono: float) -> None:
        """Queue the entries read from the store (the jobs forgotten before)."""
        if len(fresh) > SMALL_BATCH:
            self.runs.append(Batch.sort(-1, fresh, {}))
        else:
            for entry in fresh:
                self.queued[entry.seq] = entry
                bisect.insort(self.queue, entry)
        for entry in fresh:
            if entry.not_before is not None:
                # How long the back-off has left, by the monotonic clock, and never
                # more than the back-off itself (the wall clock may have been stepped).
                left = min(entry.not_before - now, backoff_s(self.retry_backoff_s, entry.attempts))
                self.backoff_until[entry.id] = mono + max(0.0, left)

    def to_start(
        self, store: Store, placements: Sequence[Placement]
    ) -> tuple[list[tuple[Job, tuple[int, ...]]], bool]:
        """The whole jobs the plan placed (with their GPUs), from the offers kept whole
        or read in one statement, and whether the cache was stale (a job placed is not
        queued any more: forgotten, and the store should be read next turn)."""
        seqs = [int(p.job_id) for p in placements]
        found = {seq: job for seq in seqs if (job := self.whole.get(seq)) is not None}
        missing = [seq for seq in seqs if seq not in found]
        if missing:
            found.update((job.seq, job) for job in store.get_many(missing))
        out, stale = [], False
        for seq, placement in zip(seqs, placements, strict=True):
            job = found.get(seq)
            if job is None or job.status != JobStatus.QUEUED or job.held or job.waiting:
                self.forget(placement.job_id, running=False)
                stale = True
            else:
                out.append((job, placement.gpus))
        return out, stale

    def running_entries(self, gone: Collection[str] = ()) -> list[Running]:
        """The running jobs (but those ``gone``) as a plan that looks ahead sees them,
        with their estimates."""
        return [
            Running.of(job, self.estimates) for job in self.running.values() if job.id not in gone
        ]

    def booked(self, gone: set[str]) -> dict[int, float]:
        """GPU -> the fraction of it the running jobs (but those ``gone``) book."""
        alloc: dict[int, float] = {}
        for run in self.running.values():
            if run.id in gone:
                continue
            share = booked_share(run.required_gpus, len(run.gpus))
            for g in run.gpus:
                alloc[g] = alloc.get(g, 0.0) + share
        return alloc

    def for_plan(self, gone: set[str]) -> list[PlanRunning]:
        """The running jobs (but those ``gone``) as :func:`~nbsched.allocation.plan`
        takes them, with their estimates."""
        return [
            PlanRunning(
                str(r.seq), tuple(r.gpus), booked_share(r.required_gpus, len(r.gpus)),
                r.started if r.started is not None else 0.0, r.estimate_s, r.estimate_source,
            )
            for r in self.running_entries(gone)
        ]  # fmt: skip

    def backoff_waits(self, now: float, mono: float) -> list[float]:
        """Seconds each job in a back-off has left: the sooner of the wall clock's
        ``not_before`` and the monotonic deadline (see :meth:`eligible`)."""
        out = []
        for job_id, until in self.backoff_until.items():
            entry = self.entry(int(job_id))
            if entry is not None and entry.not_before is not None:
                out.append(min(entry.not_before - now, until - mono))
        return out

    def ordered(self) -> Iterable[Queued]:
        """The queued entries in dispatch order: the queue and the runs, merged lazily
        (a plan reads the first few)."""
        if not self.runs:
            return self.queue
        return heapq.merge(self.queue, *(run.entries for run in self.runs))

    def eligible(self, now: float, mono: float) -> Iterable[Queued]:
        """The queue as :func:`~nbsched.allocation.plan` should see it at ``now``: a job
        in a back-off whose monotonic deadline comes before its ``not_before`` (the
        wall clock was stepped back) is given the sooner time."""
        for job_id, until in self.backoff_until.items():
            entry = self.entry(int(job_id))
            if entry is not None and (entry.not_before or 0.0) - now > until - mono:
                return self._stepped(now, mono)
        return self.ordered()  # the wall clock is not behind: the stored times hold

    def _stepped(self, now: float, mono: float) -> Iterator[Queued]:
        for entry in self.ordered():
            until = self.backoff_until.get(entry.id)
            if until is not None and entry.not_before is not None:
                not_before = min(entry.not_before, now + max(0.0, until - mono))
                if not_before != entry.not_before:
                    entry = entry._replace(not_before=not_before)
            yield entry


def _remove(entries: list[Queued], entry: Queued) -> None:
    """Delete ``entry`` from the sorted ``entries`` (found by its dispatch order)."""
    i = bisect.bisect_left(entries, entry[:2])
    if i < len(entries) and entries[i][:2] == entry[:2]:
        del entries[i]
