"""Choosing GPUs for jobs: a pure function of (queue, GPU states, now).

Rules, in the order they are applied:

* **Eligibility.**  A paused GPU gets no new job.  Neither does a GPU whose memory
  or load *used by others* (processes that are not nbsched jobs) is above
  ``gpu_memory_threshold`` / ``gpu_load_threshold``.
* **Order.**  Lower ``priority`` first; first come, first served within a priority.
  A job waiting out a retry back-off (``not_before`` in the future) is skipped.
* **Fractions** (a requirement in (0, 1)) go to one GPU, packed best-fit: the
  fullest GPU that still has room, so fractional jobs share GPUs and whole GPUs
  stay free for multi-GPU jobs.  A requirement of exactly 1 takes one empty GPU.
* **Whole numbers** N > 1 take N GPUs with nothing else on them, all in one
  *group* (a node of a cluster: GPUs with different ``group`` never serve one job).
  Among the groups that have room, the one with the fewest empty GPUs is taken, so
  larger blocks stay whole for larger jobs.  GPUs without a group form one group.
* **Reservation (no starvation).**  The first job in that order that cannot start
  now reserves the GPUs it will start on: for N GPUs, the N eligible GPUs closest
  to being free; for a fraction, the one GPU with the most room.  Jobs behind it
  may start ("backfill") only on GPUs outside that reservation, so they provably
  cannot delay it.  This is EASY backfilling, as in Slurm: one reservation, held
  for the highest-priority blocked job; when it starts, the next blocked job gets
  the reservation.  A multi-GPU reservation, like the job, lies within one group.

Nothing here reads a clock, a file or a GPU: :func:`plan` is called by the
dispatcher thread and by the tests with hand-built states.  :func:`explain` says, from
the same inputs, why each queued job has not started; :func:`explain_one`, why one job
has, from the jobs ahead of it alone (``why()``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .gpus.base import GpuSnapshot
from .gpus.memory_fit import MemoryFit
from .jobs import Job


class QueuedJob(Protocol):
    """What the plan reads of a queued job: a :class:`~nbsched.jobs.Job`, or the
    dispatcher's light entry for one (:class:`nbsched.dispatcher.entries.Queued`), which
    keeps only this of each of a long queue's jobs."""

    @property
    def id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def required_gpus(self) -> float: ...
    @property
    def allowed_gpus(self) -> tuple[int, ...] | None: ...
    @property
    def not_before(self) -> float | None: ...


@dataclass(frozen=True)
class GpuState:
    """What the allocator needs to know of one GPU."""

    index: int
    allocated: float = 0.0
    paused: bool = False
    #: Why the GPU takes no new job although not paused (others use it), or None.
    blocked: str | None = None
    #: GPUs a multi-GPU job may share (one node of a cluster); ``None`` is a group too.
    group: str | None = None

    @property
    def eligible(self) -> bool:
        return not self.paused and self.blocked is None


@dataclass(frozen=True)
class Placement:
    job_id: str
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...] = ()
    #: GPU -> id of the job it is held for.
    reserved: Mapping[int, str] = field(default_factory=dict)
    #: Earliest ``not_before`` of a job waiting out a back-off, if any.
    next_wakeup: float | None = None
    #: Why the head job waits, for status displays.
    head_waiting: tuple[str, str] | None = None


def gpu_states(
    snapshots: Sequence[GpuSnapshot],
    allocation: Mapping[int, float],
    paused: Iterable[int],
    memory_threshold: float,
    load_threshold: float,
) -> list[GpuState]:
    """Combine readings, bookings and pauses into allocator input."""
    paused = set(paused)
    out = []
    for snap in snapshots:
        blocked = None
        mem = snap.external_memory_fraction
        if mem is not None and mem > memory_threshold:
            blocked = f"memory used by others {mem:.0%} > {memory_threshold:.0%}"
        elif snap.external_load is not None and snap.external_load > load_threshold:
            blocked = f"load from others {snap.external_load:.0%} > {load_threshold:.0%}"
        out.append(
            GpuState(
                index=snap.index,
                allocated=allocation.get(snap.index, 0.0),
                paused=snap.index in paused,
                blocked=blocked,
                group=snap.node,
            )
        )
    return out


def most_room(gpus: Iterable[GpuState]) -> float:
    """The largest fraction of one GPU that a new job could get now (0.0 if none)."""
    return max((max(0.0, 1.0 - g.allocated) for g in gpus if g.eligible), default=0.0)


def could_start(required: float, room: float, precision: float = 0.01) -> bool:
    """Whether a job needing ``required`` GPUs might start where :func:`most_room` is
    ``room``: False means it cannot, whatever the queue (:func:`plan` would place it on
    no GPU); True means only that :func:`plan` must be asked."""
    # (N whole GPUs need N empty ones: at least one GPU with all its room)
    return min(_round(required, precision), 1.0) <= room + precision / 2


def booked_share(required: float, n_gpus: int) -> float:
    """The fraction of each of its GPUs a running job books."""
    return required if n_gpus == 1 and required < 1 else 1.0


def plan(
    queue: Iterable[QueuedJob],
    gpus: Sequence[GpuState],
    now: float,
    precision: float = 0.01,
    memory: MemoryFit | None = None,
) -> Plan:
    """Decide which queued jobs start now, and on which GPUs.

    ``queue`` must be in dispatch order (priority, then submission); see
    :func:`queue_key`.  ``memory``: the GPU memory free to promise and what queued
    jobs need of it (:mod:`nbsched.gpus.memory_fit`); a job that needs memory goes
    only where it fits, best-fit on memory.
    """
    eps = precision / 2
    free: dict[int, float] = {g.index: max(0.0, 1.0 - g.allocated) for g in gpus if g.eligible}
    group_of: dict[int, str | None] = {g.index: g.group for g in gpus}
    grouped = len(set(group_of.values())) > 1
    all_eligible = dict(free)
    reserved: dict[int, str] = {}
    head_waiting: tuple[str, str] | None = None
    placements: list[Placement] = []
    next_wakeup: float | None = None
    hopeless: set[tuple[float, tuple[int, ...] | None, float | None]] = set()

    for job in queue:
        if job.not_before is not None and job.not_before > now:
            next_wakeup = (
                job.not_before if next_wakeup is None else min(next_wakeup, job.not_before)
            )
            continue
        req = _round(job.required_gpus, precision)
        need = memory.need(job.id) if memory is not None else None
        shape = (req, job.allowed_gpus, need)
        if shape in hopeless:
            continue
        allowed = set(job.allowed_gpus) if job.allowed_gpus is not None else None
        candidates = [g for g in free if g not in reserved and (allowed is None or g in allowed)]
        chosen = _place(memory, job.id, req, candidates, free, eps, group_of)
        if chosen is not None:
            # Subtract what the job really books, not its rounded size: rounding 0.0149
            # down to 0.01 would otherwise let 100 such jobs book 1.49 of one GPU.
            share = booked_share(job.required_gpus, len(chosen))
            for g in chosen:
                free[g] = 0.0 if req >= 1 else free[g] - share
            placements.append(Placement(job.id, chosen))
        else:
            hopeless.add(shape)
            if head_waiting is None:
                pool = [g for g in all_eligible if allowed is None or g in allowed]
                hold = _reserve(req, pool, free, group_of)
                for g in hold:
                    reserved[g] = job.id
                words = memory.why(job.id, job.allowed_gpus) if need and memory else None
                head_waiting = (job.id, words or _why(req, pool, hold, grouped))
        if not any(v > eps for g, v in free.items() if g not in reserved):
            break  # nothing left to hand out (the dispatcher tracks back-offs itself)
    return Plan(tuple(placements), reserved, next_wakeup, head_waiting)


def _place(
    memory: MemoryFit | None,
    job_id: str,
    req: float,
    candidates: list[int],
    free: Mapping[int, float],
    eps: float,
    group_of: Mapping[int, str | None],
) -> tuple[int, ...] | None:
    """:func:`_choose`, or where the job needs GPU memory, the memory fit's choice
    (:mod:`nbsched.gpus.memory_fit`), booked there."""
    if memory is None or memory.need(job_id) is None:
        return _choose(req, candidates, free, eps, group_of)
    chosen = memory.choose(
        job_id, req, candidates, free, eps, lambda c: _choose(req, c, free, eps, group_of)
    )
    if chosen is not None:
        memory.book(job_id, chosen)
    return chosen


def explain(
    queue: Sequence[Job], gpus: Sequence[GpuState], now: float, precision: float = 0.01
) -> dict[str, str]:
    """Why each job of ``queue`` (in dispatch order, as for :func:`plan`) has not
    started, in words, from the same inputs as :func:`plan`."""
    decision = plan(queue, gpus, now, precision)
    words = _Reasons(decision, gpus, now, precision)
    head = decision.head_waiting
    out: dict[str, str] = {}
    after_head = False
    for job in queue:
        out[job.id] = words.of(job, after_head)
        after_head = after_head or (head is not None and job.id == head[0])
    return out


def explain_one(
    queue: Sequence[Job],
    job: Job,
    gpus: Sequence[GpuState],
    now: float,
    precision: float = 0.01,
    memory: MemoryFit | None = None,
) -> str:
    """:func:`explain`'s answer for ``job``, from ``queue``: the jobs ahead of it in
    dispatch order, then ``job``.

    The jobs behind it change nothing of its answer (:func:`plan` takes the jobs in
    order), and :func:`plan` iterates ``queue`` only until nothing is left to hand
    out: a queue read lazily is read no further (``why()`` of one job among 100,000
    reads a page or a few, not the whole queue).
    """
    decision = plan(queue, gpus, now, precision, memory.copy() if memory else None)
    head = decision.head_waiting
    after_head = head is not None and head[0] != job.id  # (the head is ahead of it, if any)
    return _Reasons(decision, gpus, now, precision).of(job, after_head)


class _Reasons:
    """The words for the jobs of one :class:`Plan`."""

    def __init__(
        self, decision: Plan, gpus: Sequence[GpuState], now: float, precision: float
    ) -> None:
        self.placed = {p.job_id: p.gpus for p in decision.placements}
        self.head = head = decision.head_waiting
        self.held = sorted(g for g, j in decision.reserved.items() if head and j == head[0])
        self.usable = sum(1 for g in gpus if g.eligible)
        self.eligible = {g.index for g in gpus if g.eligible}
        self.now = now
        self.precision = precision

    def of(self, job: Job, after_head: bool) -> str:
        """Why ``job`` has not started; ``after_head``: the plan's head job (the first
        that could not start) comes before it."""
        head = self.head
        if job.not_before is not None and job.not_before > self.now:
            return f"a retry's back-off, until {_clock(job.not_before)}"
        if job.id in self.placed:
            where = ",".join(map(str, self.placed[job.id]))
            return f"it fits now (GPU {where}): it starts at the engine's next turn"
        if head is not None and job.id == head[0]:
            return head[1]
        if job.allowed_gpus is not None and not self.eligible & set(job.allowed_gpus):
            allowed = ",".join(map(str, job.allowed_gpus))
            return (
                f"none of the GPUs it may use ({allowed}) takes a job now "
                "(paused, or busy with others' work)"
            )
        if head is not None and after_head:
            text = f"job {head[0]} comes first ({head[1]})"
            need = _need(_round(job.required_gpus, self.precision))
            if self.held:
                text += f"; it needs {need}, and may use only GPUs that job does not hold"
            return text
        if self.usable:
            return f"every usable GPU ({self.usable}) is taken by running jobs and jobs ahead of it"
        return "no GPU is usable now (paused, or busy with others' work)"


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def _need(req: float) -> str:
    return f"{req:g} of a GPU" if req < 1 else f"{int(req)} free GPU{'s' if req > 1 else ''}"


def queue_key(job: QueuedJob) -> tuple[int, int]:
    """Dispatch order: lower priority number first, then first come."""
    return (job.priority, job.seq)


def rounded_requirement(value: float, precision: float) -> float:
    """A requirement as :func:`plan` books it: whole numbers as they are, fractions
    rounded to ``precision`` (at least one step)."""
    return _round(value, precision)


def _round(value: float, precision: float) -> float:
    if value >= 1:
        return float(round(value))
    steps = max(1, round(value / precision))
    return min(1.0, steps * precision)


def _by_group(gpus: Iterable[int], group_of: Mapping[int, str | None]) -> list[list[int]]:
    """``gpus`` split by group, each list ascending, groups ordered by their first GPU."""
    groups: dict[str | None, list[int]] = {}
    for g in sorted(gpus):
        groups.setdefault(group_of.get(g), []).append(g)
    return list(groups.values())


def _choose(
    req: float,
    candidates: list[int],
    free: Mapping[int, float],
    eps: float,
    group_of: Mapping[int, str | None],
) -> tuple[int, ...] | None:
    if req < 1:
        fits = [g for g in candidates if free[g] + eps >= req]
        if not fits:
            return None
        best = min(fits, key=lambda g: (free[g], g))  # best-fit: the fullest that fits
        return (best,)
    n = int(req)
    empty = [g for g in candidates if free[g] >= 1 - eps]
    if n == 1:
        return (min(empty),) if empty else None
    roomy = [grp for grp in _by_group(empty, group_of) if len(grp) >= n]
    if not roomy:
        return None
    # Best-fit over groups: the one with the fewest empty GPUs that still has room.
    best_group = min(roomy, key=lambda grp: (len(grp), grp[0]))
    return tuple(best_group[:n])


def _reserve(
    req: float, pool: list[int], free: Mapping[int, float], group_of: Mapping[int, str | None]
) -> tuple[int, ...]:
    n = 1 if req < 1 else int(req)
    best: tuple[float, int, tuple[int, ...]] | None = None
    groups = [pool] if n == 1 else _by_group(pool, group_of)
    for grp in groups:
        if len(grp) < n:
            continue
        ranked = sorted(grp, key=lambda g: (-free[g], g))[:n]
        key = (-sum(free[g] for g in ranked), min(ranked), tuple(sorted(ranked)))
        if best is None or key < best:
            best = key
    return best[2] if best is not None else ()


def _why(req: float, pool: list[int], hold: tuple[int, ...], grouped: bool = False) -> str:
    need = _need(req)
    if not hold:
        if grouped and req > 1:
            return (
                f"needs {need} in one node; no node has {int(req)} usable GPUs "
                "(others paused or busy elsewhere)"
            )
        return f"needs {need}; only {len(pool)} usable GPU(s) (others paused or busy elsewhere)"
    return f"needs {need}; GPU(s) {','.join(map(str, hold))} held for it"
