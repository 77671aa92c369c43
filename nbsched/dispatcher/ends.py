"""How an attempt's end is recorded: a retry (queued again after a back-off) or final.

:func:`decide_end` is pure: the job, how its attempt ended, the configured back-off
and the time give the :class:`~nbsched.store.AttemptEnd` to record.  The one thing it
needs from outside, whether conda said the job's environment is missing (retrying
cannot help then), :func:`missing_env` reads from the job's log beforehand.

The back-off is written once, in :func:`backoff_s`: the retry's ``not_before`` and
the dispatcher's wait for a job in its back-off (:mod:`nbsched.dispatcher.queue`)
both come from it.
"""

from __future__ import annotations

import logging

from ..executors.base import Exit
from ..formats.duration import format_duration
from ..gpus.oom import REASON as OOM
from ..gpus.oom import OutOfMemory
from ..jobs import Job, JobStatus
from ..launch import conda_failure
from ..store import AttemptEnd

logger = logging.getLogger(__name__)

#: A back-off doubles at most this many times: 2**1024 does not fit a float, and
#: 2**32 times the first back-off is forever anyway.
MAX_DOUBLINGS = 32

#: See :func:`over_time_limit`.
LIMIT_SLACK_S = 0.1


def backoff_s(retry_backoff_s: float, attempts: int) -> float:
    """The wait after a job's ``attempts``-th attempt failed: ``retry_backoff_s``,
    doubled for each attempt before that one."""
    return float(retry_backoff_s * (2 ** min(max(0, attempts - 1), MAX_DOUBLINGS)))


def decide_end(
    job: Job,
    exit: Exit,
    retry_backoff_s: float,
    now: float,
    missing_env: str | None = None,
    oom: OutOfMemory | None = None,
) -> AttemptEnd:
    """What an attempt's end means: succeeded, failed, or queued again for a retry at
    ``now`` plus the back-off (while ``job.attempts`` has not used up the job's
    retries, and ``missing_env`` does not say retrying cannot help); failed with the
    reason ``time limit (...)`` if it ended at or past its time limit.  It is recorded as
    ended when the executor says it ended (:func:`ended_at`), else at ``now``.  ``oom``:
    it ran out of GPU memory; queued once more at once where that may be retried."""
    at = ended_at(job, exit, now)
    over = over_time_limit(job, now if at is None else at)
    if over is not None:  # (no retry: the limit would end the next attempt too)
        return AttemptEnd(job, JobStatus.FAILED, exit.code, over, at=at)
    if exit.code == 0:
        return AttemptEnd(job, JobStatus.SUCCEEDED, 0, None, at=at)
    reason = exit.reason or f"exit code {exit.code}"
    if missing_env:
        reason = f"{reason}: {missing_env}"
    if oom is not None:
        reason = OOM
        if oom.retry is not None:
            again = f"attempt {job.attempts} failed ({OOM}); queued once more with more GPU memory"
            return AttemptEnd(
                job, JobStatus.QUEUED, exit.code, reason, now, again, at, oom_room=oom.retry
            )
    if job.attempts <= job.spec.max_retries and not missing_env:
        delay = backoff_s(retry_backoff_s, job.attempts)
        return AttemptEnd(
            job,
            JobStatus.QUEUED,
            exit.code,
            reason,
            not_before=now + delay,
            retry_reason=f"attempt {job.attempts} failed ({reason}); retrying in {delay:g}s",
            at=at,
        )
    return AttemptEnd(job, JobStatus.FAILED, exit.code, reason, at=at)


def over_time_limit(job: Job, at: float) -> str | None:
    """The reason of an attempt that ended at ``at``, at or after its time limit
    (``"time limit (2h30m)"``: the dispatcher ended it there, see :mod:`.limits`, or it
    ended by itself past it while no engine watched); None: it ended within it.  An end
    up to :data:`LIMIT_SLACK_S` before the limit counts (a wrapper's exit file's time is
    the file system's coarse clock, a few ms behind the one the deadline was read on)."""
    limit = job.spec.time_limit
    if limit is None or job.started is None or at < job.started + limit - LIMIT_SLACK_S:
        return None
    return f"time limit ({format_duration(limit)})"


def ended_at(job: Job, exit: Exit, now: float) -> float | None:
    """When the attempt ended: the executor's time (the spawner's, when it reaped the
    job: true also for an end recorded by an engine that started after it), kept
    between the attempt's start and ``now`` (a wall clock stepped meanwhile); None:
    the executor did not say (recorded at ``now``)."""
    if exit.at is None:
        return None
    return min(now, max(exit.at, job.started if job.started is not None else exit.at))


def missing_env(job: Job, exit: Exit) -> str | None:
    """Why a failed attempt's conda environment could not be used, as its log says
    (None: it could, or the attempt did not fail with an exit code).  Reads the log."""
    if not exit.code:
        return None
    try:
        return conda_failure(job, job.log_path)
    except Exception:  # (a log that cannot be read must not lose the end)
        logger.exception("job %s: could not read its log", job.id)
        return None
