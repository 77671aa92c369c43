"""What ``sbatch`` is given for a job: its options (the GPU request, the log, the
priority) and the wrapper script that runs it and records its exit code.

**GPUs.**  ``required_gpus=N`` (whole) is ``--gres=gpu:N``; a fraction ``f`` is
``--gres=shard:k`` with ``k = ceil(f * shards per GPU)`` (the node's ``shard`` count over
its ``gpu`` count, from ``scontrol show node``): never less than asked.  ``0`` asks for
no GPU.  ``allowed_gpus`` cannot be said to Slurm (it picks the GPUs) and is refused at
submission (:func:`check_spec`).

**Priority** becomes ``--nice``: a job of lower priority than 0 gets ``--nice=-priority``
(Slurm counts a higher nice as later).  A priority above 0 cannot be given: only Slurm's
administrators may set a negative nice, so it is left at 0.  ``--nice`` counts only
where Slurm orders jobs by priority (``PriorityType=priority/multifactor``); with
``priority/basic`` Slurm starts jobs first come, first served.

**A time limit** becomes ``--time`` in whole minutes, rounded up: Slurm ends the job
(``TIMEOUT``) that long after it really started, not after its wait in Slurm's queue,
and its backfill planning knows it.  nbsched's own timer leaves Slurm's jobs alone.

**The wrapper** (:data:`WRAPPER`, written once as ``run/slurm-job.sh``; sbatch copies it
at submission) is given the job's exit file and argv as its arguments: it runs the job
and writes its exit code to ``run/<token>.exit`` when it ends (atomically: a temporary
file renamed), the record that survives Slurm forgetting the job.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ..errors import InvalidValueError
from ..jobs import JobSpec

WRAPPER = r"""#!/bin/bash
# nbsched: runs one job, records its exit code (the record that outlives Slurm's).
exit_file=$1
shift
"$@" </dev/null
rc=$?
printf '%d\n' "$rc" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"
exit "$rc"
"""


def gres(required: float, shards_per_gpu: int | None) -> str | None:
    """The ``--gres`` value for a job needing ``required`` GPUs (None: no GPU)."""
    if required <= 0:
        return None
    if required >= 1:
        return f"gpu:{math.ceil(required - 1e-9)}"
    if not shards_per_gpu:
        raise InvalidValueError(
            f"required_gpus={required:g}: a fraction of a GPU needs GPU shards in Slurm, and "
            "this cluster's nodes declare none (gres.conf Name=shard, slurm.conf "
            "GresTypes=gpu,shard); ask for whole GPUs"
        )
    return f"shard:{min(shards_per_gpu, max(1, math.ceil(required * shards_per_gpu - 1e-9)))}"


def time_minutes(seconds: float) -> int:
    """``--time`` for a time limit: whole minutes, rounded up (Slurm's unit)."""
    return max(1, math.ceil(seconds / 60 - 1e-9))


def nice(priority: int) -> int:
    """``--nice`` for an nbsched priority (only lower priorities can be expressed)."""
    return max(0, -int(priority))


def check_spec(spec: JobSpec) -> None:
    """What Slurm cannot do, refused before the job is stored."""
    if spec.allowed_gpus is not None:
        raise InvalidValueError(
            f"allowed_gpus={list(spec.allowed_gpus)!r}: executor='slurm' cannot choose the "
            "GPUs (Slurm assigns them); leave allowed_gpus out, or use executor='direct'"
        )


def sbatch_argv(
    *,
    job_name: str,
    log_path: str,
    cwd: str | None,
    gres_value: str | None,
    priority: int,
    partition: str | None,
    account: str | None,
    options: Sequence[str],
    array: str | None = None,
    time_limit: float | None = None,
) -> list[str]:
    """The ``sbatch`` options (the wrapper and its arguments follow them)."""
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={job_name}",
        f"--output={log_path}",
        "--open-mode=append",
        "--export=ALL",
        f"--chdir={cwd or os.getcwd()}",
    ]
    if gres_value:
        argv.append(f"--gres={gres_value}")
    if nice(priority):
        argv.append(f"--nice={nice(priority)}")
    if partition:
        argv.append(f"--partition={partition}")
    if account:
        argv.append(f"--account={account}")
    if array:
        argv.append(f"--array={array}")
    if time_limit is not None:
        argv.append(f"--time={time_minutes(time_limit)}")
    argv.extend(options)
    return argv


__all__ = [
    "WRAPPER",
    "check_spec",
    "gres",
    "nice",
    "time_minutes",
    "sbatch_argv",
]
