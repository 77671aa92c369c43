"""The queue as it is now, replayed: when each job starts and ends if nothing else
arrives and every job runs as long as its estimate says (``s.simulate()``, the ETAs
of ``why()`` and of ``jobs()``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..backfill import PROMISE, Policy
from ..jobs import Job, JobSpec
from .clock import Replay, SimJob, replay

#: (seconds, source) of a job's estimate; (None, None): none.
Estimate = tuple["float | None", "str | None"]


def queue_replay(
    queued: Sequence[Job],
    running: Sequence[Job],
    gpus: int,
    policy: Policy,
    precision: float,
    now: float,
    head_since: tuple[str, float] | None = None,
    estimate: Callable[[JobSpec], Estimate] | None = None,
) -> Replay:
    """Replay ``queued`` (in any order: dispatch order is the plan's) on ``gpus`` GPUs
    from ``now``, with ``running`` on their GPUs.  A job without an estimate never
    ends here (what waits for its GPUs gets no time); a running job past a learned
    estimate has an unknown end, one past its time limit ends now.  ``estimate``: a
    job's estimate (default: its own, its time limit or hint)."""

    def of(job: Job) -> Estimate:
        return (job.estimate_s, job.estimate_source) if estimate is None else estimate(job.spec)

    sims = [_sim(job, min(job.submitted, now), of(job), of(job)[0]) for job in queued]
    busy = []
    for job in running:
        started = job.started if job.started is not None else now
        seconds, source = of(job)
        run = seconds
        if run is not None and started + run < now:
            run = now - started if source == PROMISE else None
        busy.append((_sim(job, job.submitted, (seconds, source), run), tuple(job.gpus), started))
    width = max([gpus, *(g + 1 for job in running for g in job.gpus)])
    return replay(sims, width, policy, precision, running=busy, now=now, head_since=head_since)


def _sim(job: Job, submit: float, estimate: Estimate, duration: float | None) -> SimJob:
    return SimJob(
        job.id, job.required_gpus, submit, duration, estimate[0], estimate[1],
        job.priority, job.seq, job.allowed_gpus,
    )  # fmt: skip
