"""The dispatcher's GPU memory book: what queued jobs need, kept up to date from the
store's changes (the rows written since the last turn, through the ``jobs_rev``
index: work in proportion to what changed), and the :class:`MemoryFit` of each plan.

With no queued job that needs memory (none asked for any, none has a learned charge)
the plan runs as it did before memory was known (``fit()`` is None).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..gpus.attribution import Attributor, memory_by_gpu, memory_by_job
from ..gpus.base import GpuSnapshot
from ..gpus.memory_fit import MemoryFit, Promise, memory_free
from ..store import Store


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
