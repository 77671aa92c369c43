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
* **Reservation.**  The first job in that order that cannot start (*first in line*),
  once it has been first in line ``reserve_after_s`` (0: at once), holds GPUs in one
  group: those with room for it now, then those it held at the last plan, then those
  expected free soonest (running jobs' start + estimate; then the most room).  Its
  expected start is when the last of them frees (unknown if a job on them has no
  estimate).  Until then, jobs behind it start wherever they fit.
* **Backfill.**  Jobs behind it, the next ``depth`` (500) tried longest estimate first
  (``order``), start on GPUs it does not hold (EASY), and on held ones only if their
  estimate ends before its expected start: a time limit as it is, a hint or a learned
  estimate with ``margin`` (25 %) added; a job with no estimate never does.
* **Starvation bound.**  A job first in line since ``t`` starts by
  ``t + reserve_after_s + D`` (``D``: the longest run) where the estimates hold (or
  there are none): a held GPU is given up only for one with room now, and takes only
  jobs that end before the expected start, so the GPUs it waits for only drain.  An
  estimate that is too short can add one more ``D``.  With ``k`` jobs of its priority
  ahead of it, a job waits at most ``k + 1`` such bounds (docs/scheduling.md;
  tests/test_simulation.py checks the bound on generated workloads).

Nothing here reads a clock, a file or a GPU: :func:`plan` is called by the
dispatcher thread and by the tests with hand-built states.  :func:`explain` says, from
the same inputs, why each queued job has not started; :func:`explain_one`, why one job
has, from the jobs ahead of it alone (``why()``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Protocol

from .backfill import DEFAULT_POLICY, Eta, Policy, Running, Timeline, by_group, reserve
from .gpus.base import GpuSnapshot
from .gpus.memory_fit import MemoryFit


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
    #: Seconds it is expected to run, and on what grounds (one of
    #: :data:`nbsched.backfill.SOURCES`); ``None``: not known.
    @property
    def estimate_s(self) -> float | None: ...
    @property
    def estimate_source(self) -> str | None: ...


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
    #: When the head job is expected to start on the GPUs held for it (None: none held).
    head_eta: Eta | None = None


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
    *,
    running: Iterable[Running] = (),
    policy: Policy = DEFAULT_POLICY,
    head_since: tuple[str, float] | None = None,
    reserved_before: Mapping[int, str] | None = None,
    memory: MemoryFit | None = None,
) -> Plan:
    """Decide which queued jobs start now, and on which GPUs.

    ``queue`` must be in dispatch order (priority, then submission); see
    :func:`queue_key`.  ``running``: the running jobs with their estimates (the GPUs'
    ``allocated`` already counts them); ``head_since``: the job that was first in line
    unable to start at the last plan, and since when it has been (its GPUs are held
    from then + ``policy.reserve_after_s``; see :func:`nbsched.backfill.first_in_line`);
    ``reserved_before``: the last plan's ``reserved`` (a job keeps the GPUs held for it
    unless others are expected free sooner); ``memory``: the GPU memory free to promise
    and what queued jobs need of it (:mod:`nbsched.gpus.memory_fit`): a job that needs
    memory goes only where it fits, best-fit on memory.
    """
    planner = _Planner(gpus, now, precision, running, policy, head_since, reserved_before)
    planner.memory = memory
    jobs = iter(queue)
    for job in jobs:
        if not planner.take(job):
            return planner.result()  # nothing left to hand out (back-offs: see next_wakeup)
        if planner.head_waiting is not None and policy.order == "longest":
            break  # (the jobs behind the first blocked one: longest estimate first)
    behind = sorted(islice(jobs, policy.depth), key=_longest_first)
    for job in chain(behind, jobs):
        if not planner.take(job):
            break
    return planner.result()


def _longest_first(job: QueuedJob) -> float:
    return -(job.estimate_s or 0.0)


class _Planner:
    """One :func:`plan`: the GPUs' room as jobs are placed, and the reservation."""

    def __init__(
        self,
        gpus: Sequence[GpuState],
        now: float,
        precision: float,
        running: Iterable[Running],
        policy: Policy,
        head_since: tuple[str, float] | None,
        reserved_before: Mapping[int, str] | None = None,
    ) -> None:
        self.now, self.precision, self.policy = now, precision, policy
        self.before = reserved_before or {}
        self.eps = precision / 2
        self.free = {g.index: max(0.0, 1.0 - g.allocated) for g in gpus if g.eligible}
        self.group_of = {g.index: g.group for g in gpus}
        self.grouped = len(set(self.group_of.values())) > 1
        self.all_eligible = dict(self.free)
        self.timeline = Timeline(running, now)
        self.head_since = head_since
        self.reserved: dict[int, str] = {}
        self.head_waiting: tuple[str, str] | None = None
        self.head_eta: Eta | None = None
        self.placements: list[Placement] = []
        self.next_wakeup: float | None = None
        self.hopeless: set[tuple[float, tuple[int, ...] | None, float | None]] = set()
        self.memory: MemoryFit | None = None  # (GPU memory: issue 14)
        #: Jobs looked at for backfill into the reservation (up to ``policy.depth``).
        self.looked = 0

    def result(self) -> Plan:
        return Plan(
            tuple(self.placements), self.reserved, self.next_wakeup, self.head_waiting,
            self.head_eta,
        )  # fmt: skip

    def take(self, job: QueuedJob) -> bool:
        """Place ``job`` if it may start now; False: no later job can start."""
        if job.not_before is not None and job.not_before > self.now:
            wake = self.next_wakeup
            self.next_wakeup = job.not_before if wake is None else min(wake, job.not_before)
            return True
        req = _round(job.required_gpus, self.precision)
        memory = self.memory
        shape = (req, job.allowed_gpus, memory.need(job.id) if memory is not None else None)
        if shape in self.hopeless:
            return True
        allowed = set(job.allowed_gpus) if job.allowed_gpus is not None else None
        chosen = self._choose(job, req, allowed)
        if chosen is not None:
            self._book(job, req, chosen)
        else:
            if not self._room_in_reservation():
                self.hopeless.add(shape)  # (else a shorter job of its shape may still fit)
            if self.head_waiting is None:
                self._block(job, req, allowed)
                if self.policy.mode == "fifo":
                    return False
        return self._room_left()

    def _choose(
        self, job: QueuedJob, req: float, allowed: set[int] | None
    ) -> tuple[int, ...] | None:
        """Its GPUs outside the reservation, else in it if it ends before the
        reserved start."""
        free, reserved = self.free, self.reserved
        outside = [g for g in free if g not in reserved and (allowed is None or g in allowed)]
        chosen = _place(self.memory, job.id, req, outside, free, self.eps, self.group_of)
        if chosen is not None or not self._room_in_reservation():
            return chosen
        self.looked += 1
        bound = self.policy.bound_s(job.estimate_s, job.estimate_source)
        start = self.head_eta.at if self.head_eta is not None else None
        if bound is None or start is None or self.now + bound > start:
            return None
        anywhere = [g for g in free if allowed is None or g in allowed]
        return _place(self.memory, job.id, req, anywhere, free, self.eps, self.group_of)

    def _book(self, job: QueuedJob, req: float, chosen: tuple[int, ...]) -> None:
        # Subtract what the job really books, not its rounded size: rounding 0.0149
        # down to 0.01 would otherwise let 100 such jobs book 1.49 of one GPU.
        share = booked_share(job.required_gpus, len(chosen))
        end = None if job.estimate_s is None else self.now + job.estimate_s
        for g in chosen:
            self.free[g] = 0.0 if req >= 1 else self.free[g] - share
            self.timeline.add(g, end, share, job.id, job.estimate_source)
        self.placements.append(Placement(job.id, chosen))

    def _block(self, job: QueuedJob, req: float, allowed: set[int] | None) -> None:
        """``job`` is the first that cannot start: reserve its GPUs (once it has
        been first in line for ``reserve_after_s``)."""
        pool = [g for g in self.all_eligible if allowed is None or g in allowed]
        memory = self.memory.why(job.id, job.allowed_gpus) if self.memory is not None else None
        wait = self.policy.reserve_after_s
        since = self.head_since[1] if self.head_since and self.head_since[0] == job.id else self.now
        if self.policy.mode == "backfill" and wait > 0 and self.now - since < wait:
            self.head_waiting = (job.id, memory or _unheld(req, pool, since + wait, self.grouped))
            return
        before = [g for g, held_for in self.before.items() if held_for == job.id]
        hold, eta = reserve(req, pool, self.free, self.group_of, self.timeline, self.eps, before)
        for g in hold:
            self.reserved[g] = job.id
        self.head_eta = eta if hold else None
        self.head_waiting = (job.id, memory or _why(req, pool, hold, self.grouped))

    def _room_in_reservation(self) -> bool:
        """Whether a job behind the reserved one may still be placed in the
        reservation (backfill, with a known reserved start not yet come)."""
        eta = self.head_eta
        return (
            self.policy.mode == "backfill"
            and eta is not None
            and eta.at is not None
            and eta.at > self.now
            and self.looked < self.policy.depth
            and any(self.free[g] > self.eps for g in self.reserved)
        )

    def _room_left(self) -> bool:
        free, reserved, eps = self.free, self.reserved, self.eps
        return any(v > eps for g, v in free.items() if g not in reserved) or (
            self._room_in_reservation()
        )


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
    roomy = [grp for grp in by_group(empty, group_of) if len(grp) >= n]
    if not roomy:
        return None
    # Best-fit over groups: the one with the fewest empty GPUs that still has room.
    best_group = min(roomy, key=lambda grp: (len(grp), grp[0]))
    return tuple(best_group[:n])


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


def _unheld(req: float, pool: list[int], at: float, grouped: bool) -> str:
    """Why a blocked job waits before its GPUs are held for it."""
    if len(pool) < (1 if req < 1 else int(req)):
        return _why(req, pool, (), grouped)
    if math.isinf(at):
        return f"needs {_need(req)}; no GPUs are held for it (reserve_after_s is infinite)"
    return f"needs {_need(req)}; GPUs are held for it from {_clock(at)} (reserve_after_s)"


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


# (explain() and explain_one() live in nbsched.reasons, which imports this module)
from .reasons import explain, explain_one  # noqa: E402

__all__ = [
    "DEFAULT_POLICY",
    "GpuState",
    "Placement",
    "Plan",
    "QueuedJob",
    "booked_share",
    "could_start",
    "explain",
    "explain_one",
    "gpu_states",
    "most_room",
    "plan",
    "queue_key",
    "rounded_requirement",
]
