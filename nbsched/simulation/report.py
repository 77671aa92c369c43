"""The figures of a replay: makespan, completion and wait times, GPU utilisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .clock import Replay


@dataclass(frozen=True)
class Figures:
    """What ``nbsched simulate`` prints (seconds; utilisation 0..1)."""

    jobs: int
    finished: int
    makespan: float
    mean_completion: float
    p95_completion: float
    mean_wait: float
    p95_wait: float
    utilisation: float
    #: The makespan's lower bound: max(GPU-seconds / GPUs, the latest arrival + run).
    lower_bound: float


def figures(result: Replay) -> Figures:
    """The figures of ``result`` (over the jobs that ended)."""
    jobs = {j.id: j for j in result.jobs}
    ended = [o for o in result.outcomes.values() if o.end is not None and o.start is not None]
    first = min((j.submit for j in result.jobs), default=0.0)
    completion = [o.end - jobs[o.job_id].submit for o in ended if o.end is not None]
    wait = [o.start - jobs[o.job_id].submit for o in ended if o.start is not None]
    makespan = max((o.end for o in ended if o.end is not None), default=first) - first
    work = sum(j.required_gpus * (j.duration or 0.0) for j in result.jobs if j.id in
               {o.job_id for o in ended})  # fmt: skip
    bound = max(
        work / result.gpus,
        max((j.submit - first + (j.duration or 0.0) for j in result.jobs), default=0.0),
    )
    return Figures(
        len(result.jobs),
        len(ended),
        makespan,
        _mean(completion),
        percentile(completion, 95),
        _mean(wait),
        percentile(wait, 95),
        work / (result.gpus * makespan) if makespan > 0 else 0.0,
        bound,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def table(rows: dict[str, Figures]) -> str:
    """Figures of several replays (by name) as a text table."""
    head = f"{'policy':<10} {'makespan':>9} {'mean compl':>11} {'p95 compl':>10} " \
        f"{'mean wait':>10} {'p95 wait':>9} {'GPU util':>9}"  # fmt: skip
    lines = [head]
    for name, f in rows.items():
        lines.append(
            f"{name:<10} {f.makespan:9.2f} {f.mean_completion:11.2f} {f.p95_completion:10.2f} "
            f"{f.mean_wait:10.2f} {f.p95_wait:9.2f} {f.utilisation:9.1%}"
        )
    return "\n".join(lines)
