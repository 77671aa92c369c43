"""Workloads for a replay: a trace read from a CSV file, or a generated mix.

A trace is either the Tiresias format (``job_id,num_gpu,submit_time,duration,...``)
or a job table such as ``jobs()`` returns, written with ``to_csv`` (``id``,
``required_gpus``, ``submitted``, ``started``, ``ended``, ``priority`` and, where
present, ``estimate`` / ``estimate_source``): its ended jobs run as long as they ran,
and arrive as they were submitted.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from ..errors import NbschedError
from .clock import SimJob

#: The GPU requirements of the generated mix.
MIX_GPUS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def read_trace(path: str | Path, scale: float = 1.0, max_gpus: int | None = None) -> list[SimJob]:
    """The jobs of the trace at ``path``, their times divided by ``scale``; GPU
    counts above ``max_gpus`` are cut to it (a trace of a bigger cluster)."""
    if not scale > 0 or not math.isfinite(scale):
        raise NbschedError(f"scale={scale!r}: must be a number > 0")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise NbschedError(f"{path}: no jobs in the trace")
    columns = set(rows[0])
    if {"num_gpu", "submit_time", "duration"} <= columns:
        jobs = [_tiresias(i, row) for i, row in enumerate(rows)]
    elif {"id", "required_gpus", "submitted", "started", "ended"} <= columns:
        jobs = _job_table(rows)
    else:
        raise NbschedError(
            f"{path}: columns {sorted(columns)}: a trace needs either "
            "num_gpu,submit_time,duration (Tiresias) or id,required_gpus,submitted,started,"
            "ended (a jobs() table)"
        )
    first = min((j.submit for j in jobs), default=0.0)
    return [
        SimJob(
            j.id,
            j.required_gpus if max_gpus is None else min(j.required_gpus, float(max_gpus)),
            (j.submit - first) / scale,
            None if j.duration is None else j.duration / scale,
            None if j.estimate_s is None else j.estimate_s / scale,
            j.estimate_source,
            j.priority,
            j.seq,
        )
        for j in jobs
    ]


def _tiresias(i: int, row: Mapping[str, str]) -> SimJob:
    try:
        return SimJob(
            row.get("job_id") or str(i),
            float(row["num_gpu"]),
            float(row["submit_time"]),
            float(row["duration"]),
            seq=i,
        )
    except ValueError as exc:
        raise NbschedError(f"trace line {i + 2}: {exc}") from None


def _job_table(rows: list[dict[str, str]]) -> list[SimJob]:
    out = []
    for i, row in enumerate(rows):
        started, ended = _when(row["started"]), _when(row["ended"])
        if started is None or ended is None:
            continue  # (a job that did not run to its end tells no run time)
        estimate = row.get("estimate") or ""
        out.append(
            SimJob(
                row["id"],
                float(row["required_gpus"]),
                _when(row["submitted"]) or started,
                ended - started,
                float(estimate) if estimate else None,
                row.get("estimate_source") or None,
                int(float(row.get("priority") or 0)),
                i,
            )
        )
    if not out:
        raise NbschedError("the job table has no job that started and ended")
    return out


def _when(text: str) -> float | None:
    """A time of a job table: seconds, or an ISO date (``jobs()``'s)."""
    if not text or text in ("NaT", "nan", "None"):
        return None
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def generated_mix(n: int = 48, seed: int = 0, low: float = 0.3, high: float = 4.0) -> list[SimJob]:
    """``n`` jobs, all queued at once: each needs one of :data:`MIX_GPUS` and runs a
    lognormal time between ``low`` and ``high`` seconds; no estimates."""
    rng = random.Random(seed)
    mu, sigma = math.log(math.sqrt(low * high)), math.log(high / low) / 4
    jobs = []
    for i in range(n):
        duration = min(high, max(low, rng.lognormvariate(mu, sigma)))
        jobs.append(SimJob(str(i + 1), rng.choice(MIX_GPUS), 0.0, round(duration, 3), seq=i))
    return jobs
