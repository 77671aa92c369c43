"""Time limits: the running jobs' deadlines, and ending a job at its deadline.

A job with a ``time_limit`` must end by ``started + time_limit`` (wall clock, both
from the store, so a dispatcher that takes over after a kernel restart knows the
deadlines of the jobs it adopts).  :class:`Deadlines` keeps them in a heap, armed as
a job enters the dispatcher's running jobs (its start, or a read of the store); the
loop sleeps no longer than the nearest one (:meth:`Deadlines.wait_s`), and at each turn
ends the jobs whose deadline has come (:meth:`Deadlines.enforce`): no scan of the
running jobs, a heap pop per deadline.

A job is ended as a cancel ends it: its executor's ``kill`` (SIGTERM to the whole
process tree, SIGKILL after ``kill_grace_s``), in a thread of its own so the loop does
not wait out the grace.  Its end comes back as any other, with its real exit code;
:func:`~.ends.decide_end` records it ``failed`` with the reason ``time limit (2h30m)``
(no retry), because it ended at or past the deadline.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from ..config import SchedulerConfig
from ..executors.base import Executor
from ..formats.duration import format_duration
from ..jobs import Job
from .handoff import HANDS_OFF

logger = logging.getLogger(__name__)


class Deadlines:
    """The deadlines of the running jobs that have a time limit (see the module)."""

    def __init__(self) -> None:
        #: ``(deadline, job number, attempt token)``, nearest first.
        self._heap: list[tuple[float, int, str]] = []
        #: The attempts in the heap (one entry each, however often they are armed).
        self._armed: set[tuple[int, str]] = set()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, job: Job) -> None:
        """Arm the deadline of ``job``'s running attempt, if it has a time limit."""
        limit = job.spec.time_limit
        if limit is None or job.started is None or not job.token:
            return
        if job.executor in HANDS_OFF:  # (Slurm ends it itself: ``--time``, from its start)
            return
        attempt = (job.seq, job.token)
        if attempt in self._armed:
            return
        self._armed.add(attempt)
        heapq.heappush(self._heap, (job.started + limit, job.seq, job.token))

    def wait_s(self, now: float) -> float:
        """Seconds until the nearest deadline (inf: none)."""
        return max(0.0, self._heap[0][0] - now) if self._heap else math.inf

    def due(self, now: float, running: Mapping[str, Job]) -> list[Job]:
        """The running jobs whose deadline is at or before ``now`` (each once); the
        deadlines of attempts that ended meanwhile are dropped."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, token = heapq.heappop(heap)
            self._armed.discard((seq, token))
            job = running.get(str(seq))
            if job is not None and job.token == token:
                out.append(job)
        return out

    def enforce(
        self,
        now: float,
        running: Mapping[str, Job],
        executor_of: Callable[[str], Executor],
        config: SchedulerConfig,
    ) -> list[Job]:
        """End the jobs whose deadline has come (see the module); returns them."""
        if not self._heap or self._heap[0][0] > now:
            return []
        jobs = self.due(now, running)
        for job in jobs:
            limit = format_duration(job.spec.time_limit or 0.0)
            logger.info("job %s reached its time limit (%s); ending it", job.id, limit)
            _note(job, f"\nnbsched: time limit ({limit}) reached; ending the job\n")
            try:
                executor = executor_of(job.executor or config.executor)
            except Exception:
                logger.exception("job %s: no executor to end it with", job.id)
                continue
            threading.Thread(
                target=_kill,
                args=(executor, job, config.kill_grace_s),
                name=f"nbsched-time-limit-{job.id}",
                daemon=True,
            ).start()
        return jobs


def _kill(executor: Executor, job: Job, grace_s: float) -> None:
    try:
        executor.kill(job, grace_s)
    except Exception:  # (a thread boundary: the job's end still comes, or recovery finds it)
        logger.exception("job %s: ending it at its time limit failed", job.id)


def _note(job: Job, text: str) -> None:
    """Say in the job's log why it ends (its own output goes on around it)."""
    if not job.log_path:
        return
    try:
        with Path(job.log_path).open("a", encoding="utf-8") as log:
            log.write(text)
    except OSError:
        pass


__all__ = ["Deadlines"]
