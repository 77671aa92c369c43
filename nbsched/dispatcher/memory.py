"""The dispatcher's GPU memory book: what queued jobs need, kept up to date from the
store's changes (the rows written since the last turn, through the ``jobs_rev``
index: work in proportion to what changed), and the :class:`MemoryFit` of each plan.

With no queued job that needs memory (none asked for any, none has a learned charge)
the plan runs as it did before memory was known (``fit()`` is None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..config import SchedulerConfig
from ..executors.base import Exit
from ..gpus.attribution import Attributor, memory_by_gpu, memory_by_job
from ..gpus.base import GpuSnapshot
from ..gpus.memory_fit import MemoryFit, Promise, memory_free
from ..gpus.monitor import GPUMonitor
from ..gpus.oom import out_of_memory
from ..jobs import Job
from ..store import AttemptEnd, Store
from .ends import decide_end, missing_env


class _Dispatching(Protocol):
    """What these helpers read of the dispatcher (:class:`~.loop.Dispatcher`)."""

    config: SchedulerConfig
    store: Store
    monitor: GPUMonitor
    __dict__: dict[str, Any]


def memory_fit(d: _Dispatching) -> MemoryFit | None:
    """The memory side of the dispatcher's next plan (its :class:`MemoryBook`, made
    the first time)."""
    book: MemoryBook | None = d.__dict__.get("_memory_book")
    if book is None:
        book = d.__dict__["_memory_book"] = MemoryBook(d.store)
    return book.fit(d.monitor.latest)


def attempt_end(d: _Dispatching, job: Job, exit: Exit, now: float) -> AttemptEnd:
    """:func:`~.ends.decide_end`, with what the job's log says: a missing conda
    environment, or GPU memory run out (:mod:`nbsched.gpus.oom`)."""
    oom = out_of_memory(job, exit.code, d.config.oom_retry, d.monitor.latest)
    return decide_end(job, exit, d.config.retry_backoff_s, now, missing_env(job, exit), oom)


class MemoryBook:
    """Queued jobs' memory needs (job id -> MiB), and each plan's :class:`MemoryFit`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.needs: dict[str, float] = {}
        self._rev = -1
        self._attributor = Attributor()

    def catch_up(self) -> None:
        """Take in the needs of jobs written since the last call."""
        rev, rows = self.store.memory_needs_since(self._rev)
        self._rev = rev
        for seq, status, request, learned in rows:
            key = str(seq)
            need = request if request is not None else learned
            if status == "queued" and need is not None:
                self.needs[key] = float(need)
            else:
                self.needs.pop(key, None)

    def fit(self, reading: Sequence[GpuSnapshot] | None) -> MemoryFit | None:
        """The memory side of the next plan (None: no queued job needs memory)."""
        self.catch_up()
        if not self.needs or not reading:
            return None
        rows = self._attributor.attribute(reading, self.store.running_processes())
        now = memory_by_job(rows)
        jobs_now = {g: mb[0] for g, mb in memory_by_gpu(rows).items()}
        promises: list[Promise] = [
            (str(seq), gpus, max(request or 0.0, charge or 0.0, now.get(str(seq), 0.0)))
            for seq, gpus, request, charge in self.store.running_memory()
        ]
        free = memory_free(reading, jobs_now, promises)
        totals = {s.index: s.memory_total_mb for s in reading if s.memory_total_mb is not None}
        return MemoryFit(free, self.needs, totals)
