"""Who holds GPU memory now, and each running job's peak.

:class:`MemoryWatch` attributes the processes of the monitor's reading to the running
jobs (:mod:`nbsched.gpus.attribution`) on demand, for the tables; and, while the
engine runs, a thread of it reads the GPUs every ``interval_s`` while jobs run and
raises each job's stored ``gpu_memory_peak`` to what it holds (a write only when a
peak grows), so peaks survive restarts and are known however short the job.
"""

from __future__ import annotations

import logging
import threading

from ..gpus.attribution import Attributed, Attributor, memory_by_job
from ..gpus.monitor import GPUMonitor
from ..store import Store

logger = logging.getLogger(__name__)


class MemoryWatch:
    """The attributed GPU processes of one engine, and the peak-recording thread."""

    def __init__(self, store: Store, monitor: GPUMonitor, interval_s: float) -> None:
        self.store = store
        self.monitor = monitor
        self.interval_s = max(0.05, interval_s)
        self.attributor = Attributor()
        self._running: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rows(self) -> list[Attributed]:
        """Every process on a GPU now, attributed to the running jobs."""
        jobs = self.store.running_processes()
        return self.attributor.attribute(self.monitor.snapshot(), jobs)

    def record(self) -> dict[str, float]:
        """Read the GPUs once and raise the running jobs' peaks; returns job -> MiB.
        The jobs that ran at the last call and do not now have ended: their peaks are
        learned (:mod:`nbsched.gpus.peaks`)."""
        jobs = self.store.running_processes()
        now = {j.id for j in jobs}
        gone, self._running = self._running - now, now
        if gone:
            self.store.learn_from_ended(int(j) for j in gone)
        if not jobs:
            return {}
        rows = self.attributor.attribute(self.monitor.snapshot(), jobs)
        seen = memory_by_job(rows)
        self.store.record_memory({int(job): mb for job, mb in seen.items()})
        return seen

    def start(self) -> MemoryWatch:
        """Start the peak-recording thread (a :class:`~nbsched.engine.role.Helper`)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="nbsched-gpu-memory", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, after a last reading (the jobs that ended since the last
        one teach their peaks now, not never)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
            try:
                self.record()
            except Exception:  # (stopping: log it, and stop all the same)
                logger.exception("recording GPU memory peaks failed")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.record()
            except Exception:  # (a thread boundary: log, and go on at the next turn)
                logger.exception("recording GPU memory peaks failed")
