"""The dispatcher's cache of the queue and of the running jobs.

The store is the truth; this cache follows it by revision (:meth:`Store.changes_since`
gives the jobs changed since the last look), so a turn costs what changed, not the
queue's length.  Jobs this process submitted are taken as they were written, without
reading their rows back (:meth:`QueueCache.take_offered`).

Back-offs: a retry's ``not_before`` is wall-clock time (it is stored, and shown to
users).  A job waits out its back-off until the wall clock *or* the monotonic clock
says it is over (:meth:`QueueCache.eligible`), so a wall clock stepped back does not
hold it for hours, and one stepped forward only shortens the back-off (it never runs
a job twice).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..allocation import queue_key
from ..jobs import Job, JobStatus
from ..store import Store
from .ends import backoff_s

#: ``(revision it was written at, job)`` of each job this process submitted.
Offers = Mapping[str, tuple[int, Job]]


@dataclass
class QueueCache:
    """The queued and running jobs as the last look at the store found them."""

    #: The retry back-off of the configuration (see :func:`~.ends.backoff_s`).
    retry_backoff_s: float
    #: The store revision read up to.
    rev: int = 0
    #: The paused GPUs, read with the changes.
    paused: frozenset[int] = frozenset()
    #: The queued jobs in dispatch order (:func:`~nbsched.allocation.queue_key`).
    queue: list[Job] = field(default_factory=list)
    #: The queued jobs by id (the same jobs as ``queue``).
    queued: dict[str, Job] = field(default_factory=dict)
    #: The revision each queued job was last read or taken at (see :meth:`take_offered`).
    queued_rev: dict[str, int] = field(default_factory=dict)
    #: The running jobs by id, as this dispatcher last knew them.
    running: dict[str, Job] = field(default_factory=dict)
    #: Job id -> monotonic time at which its retry back-off ends (see :meth:`eligible`).
    backoff_until: dict[str, float] = field(default_factory=dict)

    def add(self, job: Job, rev: int) -> None:
        """Queue ``job`` as written at ``rev``."""
        self.queued[job.id] = job
        self.queued_rev[job.id] = rev
        bisect.insort(self.queue, job, key=queue_key)

    def forget(self, job_id: str, running: bool = True) -> None:
        """Drop a job from the queue (and, with ``running``, from the running jobs)."""
        old = self.queued.pop(job_id, None)
        self.queued_rev.pop(job_id, None)
        if old is not None:
            i = bisect.bisect_left(self.queue, queue_key(old), key=queue_key)
            while i < len(self.queue) and self.queue[i].id != job_id:
                i += 1
            if i < len(self.queue):
                del self.queue[i]
        if running:
            self.running.pop(job_id, None)
        self.backoff_until.pop(job_id, None)

    def take_offered(self, offered: Offers) -> None:
        """Queue the jobs this process submitted, as they were written, without reading
        the store: when nothing else woke the loop, they are all that changed in it
        (every other writer wakes it, and then it reads).  A job changed meanwhile (a
        cancel) woke it too; and a start applies only to a job still queued."""
        for job_id, (rev, job) in offered.items():
            self.forget(job_id)
            self.add(job, rev)

    def refresh(self, store: Store, offered: Offers, now: float, mono: float) -> None:
        """Read the jobs changed since the last look (taking the ``offered`` ones whose
        rows are unchanged from memory) at wall-clock ``now``, monotonic ``mono``."""
        rev, changes, self.paused = store.changes_since(self.rev)
        self.rev = rev
        revs = {job_id: row_rev for job_id, _, _, row_rev in changes}
        wanted: list[str] = []
        fresh: list[Job] = []
        for job_id, status, token, row_rev in changes:
            known = self.running.get(job_id)
            if status == JobStatus.RUNNING and known is not None and known.token == token:
                self.forget(job_id, running=False)  # off the queue; nothing else to learn:
                continue  # it is this dispatcher's own write (started, pid recorded)
            if status == JobStatus.QUEUED and self.queued_rev.get(job_id) == row_rev:
                continue  # queued here as it still is (taken from the offers)
            if status in (JobStatus.QUEUED, JobStatus.RUNNING):
                hit = offered.get(job_id)
                if status == JobStatus.QUEUED and hit is not None and hit[0] == row_rev:
                    fresh.append(hit[1])  # the row is still as submitted
                else:
                    wanted.append(job_id)
            else:
                self.forget(job_id)  # ended: nothing of the row is needed
        for job in fresh + (store.get_many(wanted) if wanted else []):
            self._learn(job, revs.get(job.id, -1), now, mono)

    def _learn(self, job: Job, rev: int, now: float, mono: float) -> None:
        """Take in a job read (or taken from the offers) at revision ``rev``."""
        self.forget(job.id)
        if job.status == JobStatus.QUEUED:
            # (the revision it was read at: a job read again since is not queued at it)
            self.add(job, rev)
            if job.not_before is not None:
                # How long the back-off has left, by the monotonic clock, and never
                # more than the back-off itself (the wall clock may have been stepped).
                left = min(job.not_before - now, backoff_s(self.retry_backoff_s, job.attempts))
                self.backoff_until[job.id] = mono + max(0.0, left)
        elif job.status == JobStatus.RUNNING:
            self.running[job.id] = job

    def backoff_waits(self, now: float, mono: float) -> list[float]:
        """Seconds each job in a back-off has left: the sooner of the wall clock's
        ``not_before`` and the monotonic deadline (see :meth:`eligible`)."""
        out = []
        for job_id, until in self.backoff_until.items():
            job = self.queued.get(job_id)
            if job is not None and job.not_before is not None:
                out.append(min(job.not_before - now, until - mono))
        return out

    def eligible(self, now: float, mono: float) -> list[Job]:
        """The queue as :func:`~nbsched.allocation.plan` should see it at ``now``: a job
        in a back-off whose monotonic deadline comes before its ``not_before`` (the
        wall clock was stepped back) is given the sooner time."""
        if not self.backoff_until:
            return self.queue
        if all(
            job_id not in self.queued
            or (self.queued[job_id].not_before or 0.0) - now <= until - mono
            for job_id, until in self.backoff_until.items()
        ):
            return self.queue  # the wall clock is not behind: the stored times hold
        out = []
        for job in self.queue:
            until = self.backoff_until.get(job.id)
            if until is not None and job.not_before is not None:
                not_before = min(job.not_before, now + max(0.0, until - mono))
                if not_before != job.not_before:
                    job = job.evolve(not_before=not_before)
            out.append(job)
        return out
