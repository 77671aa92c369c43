"""GPU memory in the public API: ``gpu_processes()``, and the memory columns that
``jobs()``, ``job()`` and ``get_gpu_status()`` gain (see docs/memory.md).

A mixin of ``GPUJobScheduler`` only, like :mod:`nbsched.scheduler_control`; the
attributes it uses are declared below.  The readings come from the engine's monitor
(cached for ``gpu_monitor_interval_s``), attributed by :class:`MemoryWatch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .config import SchedulerConfig
from .engine.memory import MemoryWatch
from .gpus.attribution import Attributed, memory_by_gpu, memory_by_job
from .gpus.base import GpuSnapshot
from .gpus.monitor import GPUMonitor
from .store import Store

if TYPE_CHECKING:
    import pandas as pd

#: The columns of ``GPUJobScheduler.gpu_processes()``, in order (memory in MiB).
PROCESS_COLUMNS = ("gpu", "pid", "user", "command", "memory", "job")


class MemoryViews:
    """``gpu_processes()`` and the memory columns of the tables (see the module)."""

    store: Store
    config: SchedulerConfig

    def _check_open(self) -> None:  # (GPUJobScheduler's)
        raise NotImplementedError

    @property
    def monitor(self) -> GPUMonitor:  # (GPUJobScheduler's)
        raise NotImplementedError

    @property
    def _memory_watch(self) -> MemoryWatch:
        watch: MemoryWatch | None = self.__dict__.get("_memory_watch_")
        if watch is None:
            interval = self.config.gpu_monitor_interval_s
            watch = self.__dict__["_memory_watch_"] = MemoryWatch(
                self.store, self.monitor, interval
            )
        return watch

    def gpu_processes(self) -> pd.DataFrame:
        """One row per process on a GPU: ``gpu``, ``pid``, ``user``, ``command``,
        ``memory`` (MiB) and ``job`` (the nbsched job's id, or None: someone else's).
        A process this user may not read shows the command ``(not readable)``.  Empty
        where the provider cannot list processes (GPUtil)."""
        import pandas as pd

        self._check_open()
        rows = self._memory_watch.rows()
        data = [(r.gpu, r.pid, r.user, r.command, r.used_mb, r.job) for r in rows]
        frame = pd.DataFrame(data, columns=list(PROCESS_COLUMNS))
        frame["pid"] = frame["pid"].astype("Int64")
        frame["memory"] = frame["memory"].astype("float64")
        frame["job"] = pd.Series([r.job for r in rows], dtype=object)  # (None: not ours)
        return frame

    def _attributed(self) -> list[Attributed] | None:
        """The attributed processes, or None where the provider lists none."""
        reading = self.monitor.snapshot()
        if all(g.processes is None for g in reading):
            return None
        return self._memory_watch.rows()

    def _with_memory(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (a jobs table) with each running job's current ``gpu_memory``."""
        running = frame["status"] == "running" if len(frame) else None
        if running is None or not running.any():
            return frame
        rows = self._attributed()
        if rows is None:
            return frame
        now = _shown_memory(rows)
        frame.loc[running, "gpu_memory"] = [now.get(i, 0.0) for i in frame["id"][running]]
        return frame

    def _with_memory_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A ``job()`` dict with its current ``gpu_memory`` if it runs."""
        if row.get("status") == "running":
            rows = self._attributed()
            if rows is not None:
                row["gpu_memory"] = _shown_memory(rows).get(row["id"], 0.0)
        return row

    def _with_gpu_memory(
        self, frame: pd.DataFrame, snapshots: Sequence[GpuSnapshot] = ()
    ) -> pd.DataFrame:
        """``get_gpu_status()``'s table with ``memory_jobs`` and ``memory_others``
        (MiB): what nbsched's jobs hold, and the rest of what is used, and ``who``: a
        short text of who holds it (None where the provider cannot tell them apart).
        Where the reading says what others use (``external_memory_used_mb``), that is
        ``memory_others``, and the rest is the jobs' even if they named no process (a
        simulated job that reports no memory)."""
        rows = self._attributed()
        if rows is None or not len(frame):
            frame["memory_jobs"] = frame["memory_others"] = frame["who"] = None
            return frame
        ours = {g: mb[0] for g, mb in memory_by_gpu(rows).items()}
        external = {s.index: s.external_memory_used_mb for s in snapshots}
        who = who_uses(rows)
        frame["who"] = [who.get(g, "") for g in frame["gpu"]]
        jobs: list[float] = []
        others: list[float | None] = []
        for g, used in zip(frame["gpu"], frame["memory_used"], strict=True):
            mine, theirs = ours.get(g, 0.0), external.get(g)
            if used is None or used != used:
                jobs.append(mine)
                others.append(None)
            elif theirs is not None:
                jobs.append(max(mine, used - theirs))
                others.append(theirs)
            else:
                jobs.append(mine)
                others.append(max(0.0, used - mine))
        frame["memory_jobs"], frame["memory_others"] = jobs, others
        return frame


def _shown_memory(rows: Sequence[Attributed]) -> dict[str, float]:
    """:func:`memory_by_job`, and NaN (unknown, shown blank) for a job whose processes'
    memory is not known (a simulated job that reported none): not 0, which it is not."""
    known = memory_by_job(rows)
    unknown = {r.job for r in rows if r.job is not None and r.used_mb is None}
    return {**dict.fromkeys(unknown - set(known), math.nan), **known}


def who_uses(rows: Sequence[Attributed]) -> dict[int, str]:
    """GPU -> a short text of who holds its memory, for status displays:
    ``jobs 3,7 18.0G; alice 20.0G`` (per user, largest first)."""
    jobs: dict[int, dict[str, float]] = {}
    users: dict[int, dict[str, float]] = {}
    unknown: set[int] = set()  # (GPUs with a job process of unknown memory)
    for r in rows:
        if r.job is not None:
            book, key = jobs, r.job
            if r.used_mb is None:
                unknown.add(r.gpu)
        else:
            book, key = users, r.user or "?"
        per = book.setdefault(r.gpu, {})
        per[key] = per.get(key, 0.0) + (r.used_mb or 0.0)
    out: dict[int, str] = {}
    for g in sorted(set(jobs) | set(users)):
        parts = []
        if g in jobs:
            ids = ",".join(sorted(jobs[g], key=lambda s: (len(s), s)))
            size = sum(jobs[g].values())
            shown = "" if g in unknown and not size else f" {_gib(size)}"  # (not "0.0G")
            parts.append(f"job {ids}{shown}")
        for user, mb in sorted(users.get(g, {}).items(), key=lambda kv: -kv[1]):
            parts.append(f"{user} {_gib(mb)}")
        out[g] = "; ".join(parts)
    return out


def _gib(mb: float) -> str:
    return f"{mb / 1024:.1f}G"
