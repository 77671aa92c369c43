"""Job control: the half of :class:`~nbsched.scheduler.GPUJobScheduler`'s API that
holds queued jobs back, lets them go, reorders them, and drains the GPUs.

Each works through the store, as ``cancel`` does, so it reaches whichever process
dispatches: the change moves the store's revision on, and every dispatcher's queue
takes it in through the change feed (a held job leaves its queue; a release or a new
priority brings it back in its new place).  Every id is checked before any job is
changed: a bad one changes nothing.

A mixin of ``GPUJobScheduler`` only, like :mod:`nbsched.scheduler_submit`; the
attributes it uses are declared below.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .checks import check_priority, check_timeout
from .engine.control import check_owner
from .errors import InvalidTypeError, InvalidValueError
from .jobs import Job, JobStatus
from .store import Store
from .waiting import check_ids
from .why import HELD

if TYPE_CHECKING:
    import pandas as pd

#: The reason a held job shows (what ``why()`` says of it).
HELD_REASON = HELD


class Controlling:
    """``hold``, ``release``, ``set_priority`` and ``drain`` (see the module)."""

    store: Store

    def _check_open(self) -> None:  # (GPUJobScheduler's)
        raise NotImplementedError

    def _poke(self) -> None:  # (GPUJobScheduler's)
        raise NotImplementedError

    def pause_gpu(self, gpu: int) -> None:  # (GPUJobScheduler's)
        raise NotImplementedError

    @property
    def num_gpus(self) -> int:  # (GPUJobScheduler's)
        raise NotImplementedError

    def wait(
        self,
        ids: Iterable[str] | str | None = None,
        timeout: float | None = None,
        progress: bool | None = None,
    ) -> pd.DataFrame:  # (GPUJobScheduler's)
        raise NotImplementedError

    def hold(self, ids: Iterable[str] | str) -> list[str]:
        """Keep queued jobs from starting until :meth:`release`; their ids.  A held job
        stays ``queued``, with ``held`` true and the reason in :meth:`job`."""
        return self._change(ids, "hold", held=True, reason=HELD_REASON)

    def release(self, ids: Iterable[str] | str) -> list[str]:
        """Let held jobs start again (in their place in the queue); their ids."""
        return self._change(ids, "release", held=False, reason=None)

    def set_priority(self, ids: Iterable[str] | str, priority: int) -> list[str]:
        """Give queued jobs another priority (lower runs first); their ids."""
        return self._change(ids, "set_priority", priority=check_priority(priority))

    def drain(self, timeout: float | None = None) -> pd.DataFrame:
        """Pause every GPU (no new job starts; the queue stays), then wait for the running
        jobs to end: :meth:`wait`'s table of them.  :meth:`resume_gpu` undoes it."""
        self._check_open()
        limit = check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        for gpu in range(self.num_gpus):
            self.pause_gpu(gpu)
        # (again until none runs: a dispatcher's turn under way may still start one)
        while True:
            running = [job.id for job in self.store.find(statuses=[JobStatus.RUNNING])]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ended = self.wait(running, timeout=left)
            if not running or not self.store.find(statuses=[JobStatus.RUNNING]):
                return ended

    def _change(
        self,
        ids: Iterable[str] | str,
        verb: str,
        *,
        held: bool | None = None,
        priority: int | None = None,
        reason: str | None = None,
    ) -> list[str]:
        """Check every job (it exists, is queued and is the caller's), then change each."""
        self._check_open()
        given = check_ids(ids)
        if given is None:
            raise InvalidTypeError(f"{verb}(): give a job id or a list of them")
        jobs = [self.store.get(job_id) for job_id in dict.fromkeys(given)]
        for job in jobs:
            _check_queued(job, verb)
        done = []
        for job in jobs:
            if not self.store.change_queued(job.id, held=held, priority=priority, reason=reason):
                raise InvalidValueError(f"job {job.id} changed meanwhile; look at it again")
            done.append(job.id)
        if done:
            self._poke()
        return done


def _check_queued(job: Job, verb: str) -> None:
    """Only a queued job of the caller's is held, released or reprioritised."""
    if job.status != JobStatus.QUEUED:
        raise InvalidValueError(
            f"{verb}(): job {job.id} is {job.status.value}; only queued jobs can be changed"
        )
    check_owner(job)


__all__ = ["HELD_REASON", "Controlling"]
