"""Placing jobs by GPU memory: what each GPU has free to promise, and the choice of a
GPU for a job that needs an amount of it (the hook :func:`nbsched.allocation.plan`
calls).

A GPU's memory free to promise is its total, less what other programs use now, less
what is promised to nbsched's running jobs: for each, the larger of its request, its
learned charge, its peak so far and what it holds now.  A job just started holds
nothing yet, but its promise counts from its placement on (the start-up race: two
jobs are never both put on memory that merely looks free).  A GPU whose total is
unknown (a Ray cluster's) does not constrain memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .base import GpuSnapshot

#: A running job as the book sees it: (id, its GPUs, its promise in MiB).
Promise = tuple[str, tuple[int, ...], float]


def memory_free(
    reading: Sequence[GpuSnapshot],
    jobs_now: Mapping[int, float],
    promises: Iterable[Promise],
) -> dict[int, float]:
    """GPU -> MiB free to promise (may be negative: over-committed by others' growth).

    ``jobs_now``: GPU -> MiB nbsched's jobs hold now (attributed), subtracted from the
    GPU's use to give what others use; ``promises``: the running jobs' promises.
    """
    promised: dict[int, float] = {}
    for _, gpus, mb in promises:
        for g in gpus:
            promised[g] = promised.get(g, 0.0) + mb
    free: dict[int, float] = {}
    for snap in reading:
        if snap.memory_total_mb is None:
            continue
        if snap.memory_used_mb is not None:
            others = max(0.0, snap.memory_used_mb - jobs_now.get(snap.index, 0.0))
        else:
            others = snap.external_memory_used_mb or 0.0
        free[snap.index] = snap.memory_total_mb - others - promised.get(snap.index, 0.0)
    return free


@dataclass
class MemoryFit:
    """The memory side of one plan: ``free`` (GPU -> MiB free to promise; a GPU not in
    it is unconstrained) and ``needs`` (queued job id -> MiB it needs on each of its
    GPUs: its request, else its learned charge).  :meth:`book` takes a placement's
    memory off, so one plan never promises the same memory twice."""

    free: dict[int, float]
    needs: Mapping[str, float]
    totals: Mapping[int, float] = field(default_factory=dict)

    def copy(self) -> MemoryFit:
        """A fit whose bookings leave this one as it is."""
        return MemoryFit(dict(self.free), self.needs, self.totals)

    def need(self, job_id: str) -> float | None:
        return self.needs.get(job_id)

    def fits(self, need: float, gpu: int) -> bool:
        room = self.free.get(gpu)
        return room is None or room >= need

    def choose(
        self,
        job_id: str,
        req: float,
        candidates: list[int],
        share_free: Mapping[int, float],
        eps: float,
        pick: Callable[[list[int]], tuple[int, ...] | None],
    ) -> tuple[int, ...] | None:
        """The GPUs for a job: ``pick`` (the plan's own rule) among the GPUs where its
        memory fits; for a share of one GPU, best-fit on memory (the GPU with the least
        memory left that still fits it, then the fullest by share)."""
        need = self.needs.get(job_id)
        if need is None:
            return pick(candidates)
        fitting = [g for g in candidates if self.fits(need, g)]
        if req >= 1:
            return pick(fitting)
        fits = [g for g in fitting if share_free[g] + eps >= req]
        if not fits:
            return None
        inf = float("inf")
        return (min(fits, key=lambda g: (self.free.get(g, inf) - need, share_free[g], g)),)

    def book(self, job_id: str, gpus: Iterable[int]) -> None:
        need = self.needs.get(job_id)
        if need is None:
            return
        for g in gpus:
            if g in self.free:
                self.free[g] -= need

    def why(self, job_id: str, allowed: Iterable[int] | None) -> str | None:
        """Why a job that needs memory waits, if memory is the reason."""
        need = self.needs.get(job_id)
        if need is None:
            return None
        pool = [g for g in self.free if allowed is None or g in set(allowed)]
        if not pool:
            return None
        best = max(pool, key=lambda g: (self.free[g], -g))
        return (
            f"needs {_mib(need)} of GPU memory free on a GPU; the most free now is "
            f"{_mib(max(0.0, self.free[best]))} (GPU {best})"
        )


def _mib(mb: float) -> str:
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def largest_total(reading: Sequence[GpuSnapshot], allowed: Iterable[int] | None) -> float | None:
    """The most memory one of the GPUs (of ``allowed``) has, or None if none says."""
    wanted = None if allowed is None else set(allowed)
    totals = [
        s.memory_total_mb
        for s in reading
        if s.memory_total_mb is not None and (wanted is None or s.index in wanted)
    ]
    return max(totals) if totals else None


def check_request(
    gpu_memory: object,
    reading: Callable[[], Sequence[GpuSnapshot]],
    allowed: Iterable[int] | None,
) -> float | None:
    """A job's ``gpu_memory`` in MiB (None: none), checked (:func:`check_gpu_memory`);
    a request larger than any GPU (of ``allowed``) has is refused at once: it could
    never start.  (No GPU says its total: nothing more to check.)"""
    from ..checks.memory import check_gpu_memory
    from ..errors import InvalidValueError

    mb = check_gpu_memory("gpu_memory", gpu_memory)
    if mb is None:
        return None
    shown = f"gpu_memory={gpu_memory!r}"
    largest = largest_total(reading(), allowed)
    if largest is not None and mb > largest:
        among = "any GPU it may use" if allowed is not None else "any GPU"
        raise InvalidValueError(
            f"{shown}: more than {among} has (the largest has {_mib(largest)}); "
            f"ask for at most {largest:.0f} MiB"
        )
    return mb
