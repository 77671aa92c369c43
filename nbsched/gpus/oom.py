"""Out of GPU memory: telling it from a failed job's log, and the room of its retry.

A failed attempt whose log's tail shows one of :data:`MARKERS` (PyTorch, JAX/XLA,
TensorFlow, cuBLAS) gets the reason ``out of GPU memory``, whatever its exit code.
With ``oom_retry`` (on by default) it is queued once more, at once, with more room: a
charge of its peak (or its request, or its learned charge, the largest) times
:data:`MARGIN` plus :data:`EXTRA_MB`, or, where nothing of its memory is known, a whole
GPU's memory; never more than the largest GPU has.  Once only: a job that ran out of
memory after such a retry fails (or uses its ordinary ``max_retries``), so it never
loops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..jobs import Job
from ..logtail import last_line
from .base import GpuSnapshot

#: What frameworks print when GPU memory runs out.
MARKERS = (
    "torch.OutOfMemoryError",
    "torch.cuda.OutOfMemoryError",
    "CUDA out of memory",
    "RESOURCE_EXHAUSTED",
    "ResourceExhaustedError",
    "CUBLAS_STATUS_ALLOC_FAILED",
)
REASON = "out of GPU memory"
#: The retry's charge: the memory known of the job, times this, plus :data:`EXTRA_MB`.
MARGIN = 1.25
EXTRA_MB = 1024.0
_TAIL = 16384


@dataclass(frozen=True)
class OutOfMemory:
    """A failed attempt that ran out of GPU memory: the log line that says so, and
    (``retry``) the most memory its retry may be charged (None: no retry)."""

    line: str
    retry: float | None


def oom_line(log_path: str | os.PathLike[str] | None) -> str | None:
    """The last line of the log's tail that says GPU memory ran out (None: none)."""
    line = last_line(log_path, lambda text: any(m in text for m in MARKERS), _TAIL)
    return None if line is None else line.strip()[:300]


def out_of_memory(
    job: Job, exit_code: int | None, retry: bool, reading: Sequence[GpuSnapshot] | None
) -> OutOfMemory | None:
    """Whether ``job``'s failed attempt ran out of GPU memory, and if it is retried
    (``retry`` on, and not retried so before), the most its retry may be charged: the
    largest GPU's memory (a whole GPU; 0: unknown)."""
    if exit_code == 0:
        return None
    line = oom_line(job.log_path)
    if line is None:
        return None
    totals = [s.memory_total_mb for s in reading or () if s.memory_total_mb is not None]
    limit = max(totals) if totals else None
    again = retry and not job.oom_retried
    return OutOfMemory(line, (limit if limit is not None else 0.0) if again else None)


def retry_note(oom_retried: bool, room: float | None) -> str:
    """What a retry's log separator adds: why it runs, and with how much memory."""
    if not oom_retried:
        return ""
    with_room = f": {room / 1024:.1f} GiB of GPU memory" if room else ""
    return f" (after running out of GPU memory{with_room})"


def retry_room_sql() -> str:
    """The SQL expression of a retry's charge (parameter: the limit, MiB; 0: unknown)."""
    known = "MAX(COALESCE(gpu_memory_request, 0), COALESCE(gpu_memory_learned, 0), " \
        "COALESCE(gpu_memory_peak, 0))"  # fmt: skip
    grown = f"({known} * {MARGIN} + {EXTRA_MB})"
    return (
        f"CASE WHEN :limit <= 0 THEN NULLIF({grown}, {EXTRA_MB}) "
        f"WHEN {known} <= 0 THEN :limit ELSE MIN(:limit, {grown}) END"
    )
