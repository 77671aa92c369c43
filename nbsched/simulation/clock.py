"""The replay itself: arrivals and ends on a virtual clock, and at each instant where
something changed, one call of :func:`nbsched.allocation.plan` with the queue, the
GPUs and the running jobs as they are then, as the dispatcher makes it."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..allocation import GpuState, booked_share, plan, queue_key
from ..backfill import DEFAULT_POLICY, Policy, Running, first_in_line


@dataclass(frozen=True)
class SimJob:
    """One job of a workload (a :class:`~nbsched.allocation.QueuedJob` too)."""

    id: str
    required_gpus: float
    #: When it arrives (seconds on the virtual clock).
    submit: float
    #: How long it really runs (``None``: not known: it never ends here).
    duration: float | None
    #: What the plan is told of its run time, and on what grounds.
    estimate_s: float | None = None
    estimate_source: str | None = None
    priority: int = 0
    #: Dispatch order within a priority (first come).
    seq: int = 0
    allowed_gpus: tuple[int, ...] | None = None
    not_before: float | None = None


@dataclass(frozen=True)
class Outcome:
    """When one job started and ended, on which GPUs (``None``: it did not)."""

    job_id: str
    start: float | None = None
    end: float | None = None
    gpus: tuple[int, ...] = ()
    #: When it last became the first job in line that could not start (if ever).
    first_in_line: float | None = None


@dataclass
class Replay:
    """A replay's result."""

    jobs: list[SimJob]
    gpus: int
    outcomes: dict[str, Outcome]
    #: The most any GPU was ever booked (1.0: full; above: over-booked).
    peak_booking: float = 0.0
    #: Plans made (one per instant at which something changed).
    plans: int = 0
    policy: Policy = field(default_factory=Policy)


@dataclass
class _Run:
    job: SimJob
    gpus: tuple[int, ...]
    start: float
    end: float


def replay(
    jobs: Iterable[SimJob],
    gpus: int = 8,
    policy: Policy = DEFAULT_POLICY,
    precision: float = 0.01,
    *,
    running: Sequence[tuple[SimJob, tuple[int, ...], float]] = (),
    now: float | None = None,
    head_since: tuple[str, float] | None = None,
) -> Replay:
    """Replay ``jobs`` on ``gpus`` GPUs under ``policy``, from ``now`` (default: the
    first arrival); ``running``: jobs already running then (job, its GPUs, since when);
    ``head_since``: the first job in line then, and since when (see ``plan()``)."""
    ordered = sorted(jobs, key=lambda j: (j.submit, j.seq))
    if now is None:
        now = ordered[0].submit if ordered else 0.0
    state = _State(ordered, gpus, policy, precision, now)
    state.head = head_since
    for job, where, started in running:
        state.begin(job, where, started)
    state.run()
    return Replay(state.jobs, gpus, state.outcomes(), state.peak, state.plans, policy)


class _State:
    def __init__(
        self, jobs: list[SimJob], gpus: int, policy: Policy, precision: float, now: float
    ) -> None:
        self.jobs, self.n, self.policy, self.precision = jobs, gpus, policy, precision
        self.arrivals = list(reversed(jobs))  # (popped from the end: soonest first)
        self.queue: list[SimJob] = []
        self.running: dict[str, _Run] = {}
        self.ends: list[tuple[float, str]] = []
        self.done: dict[str, Outcome] = {}
        self.first: dict[str, float] = {}
        self.head: tuple[str, float] | None = None
        self.reserved: Mapping[int, str] = {}
        self.peak = 0.0
        self.plans = 0
        self.now = now

    def begin(self, job: SimJob, where: tuple[int, ...], start: float) -> None:
        end = math.inf if job.duration is None else start + job.duration
        self.running[job.id] = _Run(job, where, start, end)
        if math.isfinite(end):
            heapq.heappush(self.ends, (end, job.id))

    def run(self) -> None:
        while True:
            self._end()
            self._arrive()
            self._plan()
            later = [t for t in (self._next_arrival(), self._next_end()) if t is not None]
            if not later:
                return  # nothing more arrives or ends: what is queued stays queued
            self.now = min(later)

    def _next_arrival(self) -> float | None:
        return self.arrivals[-1].submit if self.arrivals else None

    def _next_end(self) -> float | None:
        return self.ends[0][0] if self.ends else None

    def _arrive(self) -> None:
        while self.arrivals and self.arrivals[-1].submit <= self.now:
            job = self.arrivals.pop()
            self.queue.append(job)
        self.queue.sort(key=queue_key)

    def _end(self) -> None:
        while self.ends and self.ends[0][0] <= self.now:
            _, job_id = heapq.heappop(self.ends)
            run = self.running.pop(job_id)
            self.done[job_id] = Outcome(
                job_id, run.start, run.end, run.gpus, self.first.get(job_id)
            )

    def _states(self) -> list[GpuState]:
        booked = [0.0] * self.n
        for run in self.running.values():
            share = booked_share(run.job.required_gpus, len(run.gpus))
            for g in run.gpus:
                booked[g] += share
        self.peak = max([self.peak, *booked])
        return [GpuState(g, booked[g]) for g in range(self.n)]

    def _plan(self) -> None:
        if not self.queue:
            return
        now = self.now
        decision = plan(
            self.queue,
            self._states(),
            now,
            self.precision,
            running=[_running(r) for r in self.running.values()],
            policy=self.policy,
            head_since=self.head,
            reserved_before=self.reserved,
        )
        self.reserved = decision.reserved
        self.plans += 1
        before = self.head
        self.head = first_in_line(before, decision.head_waiting, now)
        if self.head is not None and (before is None or before[0] != self.head[0]):
            self.first[self.head[0]] = now
        if not decision.placements:
            return
        placed = {p.job_id: p.gpus for p in decision.placements}
        for job in [j for j in self.queue if j.id in placed]:
            self.begin(job, placed[job.id], now)
        self.queue = [j for j in self.queue if j.id not in placed]
        self._states()  # (the peak booking, with those started)

    def outcomes(self) -> dict[str, Outcome]:
        out = dict(self.done)
        for run in self.running.values():
            end = None if math.isinf(run.end) else run.end
            out[run.job.id] = Outcome(
                run.job.id, run.start, end, run.gpus, self.first.get(run.job.id)
            )
        for job in self.queue:
            out[job.id] = Outcome(job.id, first_in_line=self.first.get(job.id))
        return out


def _running(run: _Run) -> Running:
    share = booked_share(run.job.required_gpus, len(run.gpus))
    job = run.job
    return Running(job.id, run.gpus, share, run.start, job.estimate_s, job.estimate_source)
