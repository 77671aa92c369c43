"""The time side of the plan: the policy, the running jobs' expected ends, and when a
blocked job's reserved GPUs come free (its expected start).

:func:`nbsched.allocation.plan` decides *where* jobs go; this module says *when* the
GPUs it reserves for a blocked job are expected to be free, so that a job behind that
job may use them if it ends before then (backfill into the reservation).  Pure: no
clock, no store.  The rules themselves are documented in :mod:`nbsched.allocation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .jobs import Job

#: The sources of an estimate (``estimate_source``), from the surest.  A time limit is
#: a promise (the job is ended there); a hint and the learned ones are not.
SOURCES = ("time limit", "hint", "sweep", "script", "command")
PROMISE = "time limit"

#: The policies :func:`~nbsched.allocation.plan` knows (``nbsched simulate --policy``).
POLICIES = ("fifo", "easy", "backfill")

#: The orders in which the jobs behind a blocked one are tried (:class:`Policy`).
ORDERS = ("fifo", "longest")

#: The default safety margin on an estimate that is not a promise: a job may backfill
#: into a reservation if ``estimate * (1 + margin)`` ends before the reserved start.
#: Chosen by measurement (benchmarks/bench_sched.py, docs/scheduling.md): with
#: estimates learned from earlier runs whose durations vary by ~10 %, 0.25 keeps the
#: reserved jobs' start within a few per cent of their expected start and gives up
#: little of the backfill.
DEFAULT_MARGIN = 0.25

#: Jobs behind a reservation that are looked at for backfill into it, per plan, at
#: most (Slurm's ``bf_max_job_test``): a plan's work stays bounded in a long queue.
BACKFILL_DEPTH = 500


@dataclass(frozen=True)
class Policy:
    """How :func:`~nbsched.allocation.plan` treats the jobs behind a blocked one.

    ``mode``: ``"fifo"`` starts nothing behind the first job that cannot start;
    ``"easy"`` reserves GPUs for that job at once and lets the jobs behind it use
    only the other GPUs; ``"backfill"`` (the engine's) reserves them once the job has
    been first in line for ``reserve_after_s``, and lets a job behind it use them too
    if its estimate says it ends before the reserved start (a learned estimate or a
    hint with ``margin`` added; a time limit as it is).
    """

    mode: str = "backfill"
    reserve_after_s: float = 0.0
    #: The order in which the jobs behind the first blocked one are tried: ``"fifo"``
    #: (dispatch order) or ``"longest"`` (longest estimate first, among the next
    #: ``depth``; no estimate counts as 0).
    order: str = "longest"
    margin: float = DEFAULT_MARGIN
    depth: int = BACKFILL_DEPTH

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"policy={self.mode!r}: must be one of {', '.join(POLICIES)}")
        if not self.reserve_after_s >= 0:  # (inf: never: list scheduling, no starvation bound)
            raise ValueError(f"reserve_after_s={self.reserve_after_s!r}: must be a number >= 0")
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r}: must be one of {', '.join(ORDERS)}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin={self.margin!r}: must be a number >= 0")

    def bound_s(self, estimate_s: float | None, source: str | None) -> float | None:
        """How long a job with this estimate is counted to run when it backfills
        (``None``: it has no estimate and may not backfill into a reservation)."""
        if estimate_s is None:
            return None
        return estimate_s if source == PROMISE else estimate_s * (1.0 + self.margin)


#: The engine's policy (see :class:`Policy`).
DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Running:
    """A running job as the plan sees it: where it runs, since when, for how long."""

    job_id: str
    gpus: tuple[int, ...]
    #: The fraction of each of its GPUs it books.
    share: float
    started: float
    estimate_s: float | None = None
    estimate_source: str | None = None

    def expected_end(self, now: float) -> float | None:
        """When it is expected to end (``None``: unknown: no estimate, or a learned
        one it has outrun; a job past its time limit is being ended: ``now``)."""
        if self.estimate_s is None:
            return None
        end = self.started + self.estimate_s
        if end >= now:
            return end
        return now if self.estimate_source == PROMISE else None


def running_of(job: Job, estimate: tuple[float | None, str | None] | None = None) -> Running:
    """The plan's view of the running ``job``, with its ``estimate`` (seconds,
    source; default: the job's own, its time limit or hint)."""
    n = len(job.gpus)
    share = job.required_gpus if n == 1 and job.required_gpus < 1 else 1.0
    started = job.started if job.started is not None else job.submitted
    seconds, source = (job.estimate_s, job.estimate_source) if estimate is None else estimate
    return Running(job.id, tuple(job.gpus), share, started, seconds, source)


@dataclass(frozen=True)
class Eta:
    """When a blocked job is expected to start, and why then."""

    #: The expected start (``None``: not known: a job it waits for has no estimate).
    at: float | None
    #: The job whose end it waits for last, and that job's estimate's source.
    after: str | None = None
    source: str | None = None

    def words(self, clock: str) -> str:
        """``≈ 14:03, when job 12 ends (time limit)`` (``clock``: ``at`` as a time)."""
        if self.at is None:
            return "no start time known yet: a job it waits for has no estimate"
        if self.after is None:
            return f"≈ {clock}"
        return f"≈ {clock}, when job {self.after} ends ({self.source})"


#: A job's expected end on a GPU: (end or inf if unknown, share, job id, source).
Slot = tuple[float, float, str, "str | None"]


class Timeline:
    """The jobs on each GPU with their expected ends: the running ones, and those
    the plan places as it goes."""

    def __init__(self, running: Iterable[Running], now: float) -> None:
        self.now = now
        self.slots: dict[int, list[Slot]] = {}
        for r in running:
            end = r.expected_end(now)
            for g in r.gpus:
                self.add(g, end, r.share, r.job_id, r.estimate_source)

    def add(
        self, gpu: int, end: float | None, share: float, job_id: str, source: str | None
    ) -> None:
        slot = (math.inf if end is None else end, share, job_id, source)
        self.slots.setdefault(gpu, []).append(slot)

    def ready(self, gpu: int, room: float, need: float, eps: float) -> Eta:
        """When ``gpu``, with ``room`` free now, has ``need`` free."""
        if room + eps >= need:
            return Eta(self.now)
        for end, share, job_id, source in sorted(self.slots.get(gpu, ())):
            if math.isinf(end):
                break
            room += share
            if room + eps >= need:
                return Eta(end, job_id, source)
        return Eta(None)


def latest(etas: Iterable[Eta]) -> Eta:
    """The last of ``etas`` (an unknown one is the last)."""
    out = Eta(-math.inf)
    for eta in etas:
        if eta.at is None:
            return eta
        if out.at is not None and eta.at > out.at:
            out = eta
    return out


def rank(eta: Eta) -> float:
    """Sort key: sooner first, unknown last."""
    return math.inf if eta.at is None else eta.at


def by_group(gpus: Iterable[int], group_of: Mapping[int, str | None]) -> list[list[int]]:
    """``gpus`` split by group, each list ascending, groups ordered by their first GPU."""
    groups: dict[str | None, list[int]] = {}
    for g in sorted(gpus):
        groups.setdefault(group_of.get(g), []).append(g)
    return list(groups.values())


def reserve(
    req: float,
    pool: list[int],
    free: Mapping[int, float],
    group_of: Mapping[int, str | None],
    timeline: Timeline,
    eps: float,
    before: Iterable[int] = (),
) -> tuple[tuple[int, ...], Eta]:
    """The GPUs to hold for a job needing ``req``, within one group, and when they
    are expected to be free: those with room for it now, then those held for it
    ``before`` (the last plan's), then those expected to be free soonest (among
    equals, with the most room now).  A GPU held before is given up only for one with
    room now: so the GPUs it waits for only drain (see the starvation bound)."""
    n = 1 if req < 1 else int(req)
    need = min(req, 1.0)
    held = set(before)
    best: tuple[int, float, float, int, tuple[int, ...], Eta] | None = None
    groups = [pool] if n == 1 else by_group(pool, group_of)
    for grp in groups:
        if len(grp) < n:
            continue
        ready = {g: timeline.ready(g, free[g], need, eps) for g in grp}
        now = {g for g in grp if ready[g].at == timeline.now}
        ranked = sorted(
            grp, key=lambda g: (g not in now, g not in held, rank(ready[g]), -free[g], g)
        )[:n]
        eta = latest(ready[g] for g in ranked)
        room = -float(sum(free[g] for g in ranked))
        key = (
            -len(held.intersection(ranked)),
            rank(eta),
            room,
            min(ranked),
            tuple(sorted(ranked)),
            eta,
        )
        if best is None or key[:5] < best[:5]:
            best = key
    return (best[4], best[5]) if best is not None else ((), Eta(None))


def first_in_line(
    before: tuple[str, float] | None, head: tuple[str, str] | None, now: float
) -> tuple[str, float] | None:
    """The ``head_since`` for the next plan: the job first in line that could not
    start (the plan's ``head_waiting``) and since when it has been (``now`` if it is
    new there)."""
    if head is None:
        return None
    if before is not None and before[0] == head[0]:
        return before
    return (head[0], now)
