"""Executors that keep a queue of their own (Slurm): every queued job is handed on.

Where ``config.executor`` is one of :data:`HANDS_OFF`, the dispatcher does not plan
GPUs: the cluster's scheduler decides when and where each job runs, among every user's
jobs.  Each queued job whose back-off is over is "placed" on no GPU and started at once
(``sbatch``); nbsched's own priorities then only order the submissions.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..allocation import Placement, Plan, QueuedJob

#: The executors whose jobs wait in the executor's own queue, not nbsched's.
HANDS_OFF = frozenset({"slurm"})


def hands_off(executor: str) -> bool:
    return executor in HANDS_OFF


def hand_off(queue: Iterable[QueuedJob], now: float) -> Plan:
    """Every job of ``queue`` that may start at ``now``, on no GPU."""
    placements: list[Placement] = []
    next_wakeup: float | None = None
    for job in queue:
        if job.not_before is not None and job.not_before > now:
            next_wakeup = (
                job.not_before if next_wakeup is None else min(next_wakeup, job.not_before)
            )
            continue
        placements.append(Placement(job.id, ()))
    return Plan(tuple(placements), {}, next_wakeup, None)


__all__ = ["HANDS_OFF", "hand_off", "hands_off"]
