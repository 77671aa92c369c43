"""What other threads hand the dispatcher's loop: ends, submissions, where jobs run.

Executors report an attempt's end (and Ray where a job began) from their own threads,
or from the loop's thread when it drives their watchers; the scheduler offers the
jobs it just wrote.  They are kept here, under one lock, until the loop's next turn
takes them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..executors.base import Executor, Exit, Started
from ..jobs import Job
from ..store.estimates import Estimator
from .entries import Batch, Entries


@dataclass
class Inbox:
    """Reports waiting for the loop.  Every field is guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Held while a submitting thread makes its batch (:meth:`offer`), and by the loop
    #: while it takes the batches and reads the store (:meth:`closed_offers`): a batch
    #: being made is waited for, not read back from the store.
    offers_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Attempts that ended and are not recorded yet: the next cycle records them (and
    #: puts them back while the store cannot be written, e.g. on a full disk).
    ended: list[tuple[Job, Exit]] = field(default_factory=list)
    #: Whether ends were reported since the last cycle took them (ends put back after
    #: a failed write wait a turn).
    new_ends: bool = False
    #: Jobs submitted in this process, a batch per submission (see :class:`.entries.Batch`).
    offered: list[Batch] = field(default_factory=list)
    #: The smallest requirement of the offered jobs the loop has not yet checked
    #: against the GPUs' room (None: none).
    unchecked: float | None = None
    #: Where started attempts turned out to run, reported after their start
    #: (:meth:`~nbsched.executors.base.Executor.report_starts`): written with the pids.
    identified: list[tuple[Job, Started, Executor]] = field(default_factory=list)
    #: Submissions of this process being stored, to be offered (see :meth:`storing`).
    storing: int = 0
    #: Where the offered jobs' estimates come from (see :mod:`nbsched.store.estimates`).
    estimates: Estimator | None = None

    def add_end(self, job: Job, exit: Exit) -> None:
        with self.lock:
            self.ended.append((job, exit))
            self.new_ends = True

    def take_ends(self) -> list[tuple[Job, Exit]]:
        with self.lock:
            ended, self.ended = self.ended, []
            self.new_ends = False
            return ended

    def put_back_ends(self, ended: list[tuple[Job, Exit]]) -> None:
        """Ends a cycle could not record: first in line for the next one."""
        with self.lock:
            self.ended[:0] = ended

    def offer(self, rev: int, jobs: list[Job] | Entries) -> None:
        """Jobs just written at ``rev`` (or their entries): made into a batch here, in
        the submitting thread, so that the loop takes them in without per-job work."""
        if not jobs:
            return
        with self.offers_lock:
            if isinstance(jobs, Entries):
                batch = Batch.sort(rev, jobs, {})
            else:
                batch = Batch.of(rev, jobs, self.estimates)
            with self.lock:
                self.offered.append(batch)
                least = self.unchecked
                self.unchecked = batch.least if least is None else min(least, batch.least)

    @contextmanager
    def storing_offer(self) -> Iterator[None]:
        """While a submitting thread stores jobs it then offers (a sweep's: seconds):
        the loop reads no change from the store meanwhile (once they are stored, it would
        read them all back, and make their entries again, had it read in between).  A
        read put off is made by the next turn that reads (a timed one at the latest: the
        writes it would read waited for the submission's transaction anyway)."""
        with self.lock:
            self.storing += 1
        try:
            yield
        finally:
            with self.lock:
                self.storing -= 1

    @contextmanager
    def closed_offers(self) -> Iterator[list[Batch]]:
        """The batches offered, taken; no batch is made meanwhile (the loop reads the
        store under it: the rows of a batch being made are not read back)."""
        with self.offers_lock:
            yield self.take_offered()

    def take_offered(self) -> list[Batch]:
        with self.lock:
            offered, self.offered = self.offered, []
            self.unchecked = None
            return offered

    def take_unchecked(self) -> float | None:
        """The smallest requirement among the jobs offered since the last look."""
        with self.lock:
            unchecked, self.unchecked = self.unchecked, None
            return unchecked

    def add_identified(self, job: Job, started: Started, executor: Executor) -> None:
        with self.lock:
            self.identified.append((job, started, executor))

    def take_identified(self) -> list[tuple[Job, Started, Executor]]:
        with self.lock:
            identified, self.identified = self.identified, []
            return identified

    def pending(self) -> bool:
        """Whether ends or identities wait for the loop (read without the lock: a
        report that comes just after wakes the loop itself)."""
        return self.new_ends or bool(self.identified)
