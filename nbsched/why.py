"""``why(job_id)``: why a queued job has not started, in words.

The answer comes from the queue, the running jobs, the pauses and the GPUs as they
are now, by the dispatcher's own rules (:func:`nbsched.allocation.explain`), so any
process can ask, the dispatching one or not.  :class:`Why` works the reasons out for
the whole queue at once and keeps them while the store's revision is unchanged, for
at most :data:`MAX_AGE_S` (the GPUs change by themselves): a status that lists
several waiting jobs asks once per job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .allocation import explain, gpu_states, queue_key
from .gpus.base import GpuSnapshot
from .jobs import JobStatus
from .store import Store

#: How long reasons worked out at one store revision are kept (for the GPUs' changes).
MAX_AGE_S = 1.0

NO_ENGINE = " (no engine runs on this state directory: nothing starts until one does)"


class Why:
    """Explains the queue of ``store``.

    ``snapshot()``: the GPUs' readings now; ``rules()``: the placement rules in force
    (those of :data:`nbsched.engine.record.PLACEMENT_RULES`, of the engine that
    places the jobs); ``engine_pid()``: the dispatching engine's pid, None if none runs.
    """

    def __init__(
        self,
        store: Store,
        snapshot: Callable[[], Sequence[GpuSnapshot]],
        rules: Callable[[], Mapping[str, Any]],
        engine_pid: Callable[[], int | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._rules = rules
        self._engine_pid = engine_pid
        self._clock = clock
        self._now = now
        self._explained: tuple[int, float, dict[str, str]] | None = None

    def why(self, job_id: str) -> str:
        """Why job ``job_id`` has not started (or what it is, if it is not queued)."""
        job = self._store.get(job_id)
        if job.status != JobStatus.QUEUED:
            return f"job {job.id} is {job.status.value}"
        reason = self.reasons().get(job.id, "it was queued just now: look again")
        if self._engine_pid() is None:
            reason += NO_ENGINE
        return reason

    def reasons(self) -> dict[str, str]:
        """:func:`explain` for the whole queue, worked out once per store revision
        (and at most once per :data:`MAX_AGE_S`)."""
        rev = self._store.revision()
        at = self._clock()
        cached = self._explained
        if cached is not None and cached[0] == rev and at - cached[1] < MAX_AGE_S:
            return cached[2]
        queue = sorted(self._store.find(statuses=[JobStatus.QUEUED]), key=queue_key)
        rules = self._rules()
        states = gpu_states(
            self._snapshot(),
            self._store.allocation(),
            self._store.paused(),
            rules["gpu_memory_threshold"],
            rules["gpu_load_threshold"],
        )
        reasons = explain(queue, states, self._now(), rules["gpu_allocation_precision"])
        self._explained = (rev, at, reasons)
        return reasons


__all__ = ["MAX_AGE_S", "Why"]
