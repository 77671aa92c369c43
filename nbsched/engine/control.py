"""What any process may do to a job it owns: cancel it, or queue it again.

Both work through the store, whichever process dispatches: a state change is a
guarded transition, so a job that changed meanwhile (it started, it ended) is never
moved from a state it has left.  The caller wakes the dispatcher afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ..errors import InvalidValueError, PermissionDeniedError
from ..jobs import Job, JobStatus
from ..store import Store


def check_owner(job: Job) -> None:
    """Only a job's owner may change it."""
    if job.owner_uid is not None and job.owner_uid != os.getuid():
        raise PermissionDeniedError(
            f"job {job.id} belongs to uid {job.owner_uid}; only its owner may change it"
        )


def retry(store: Store, job_id: str) -> str:
    """Queue an ended job again (same id), its attempts afresh; returns its id."""
    job = store.get(job_id)
    if not job.status.ended:
        raise InvalidValueError(f"job {job.id} is {job.status.value}; only ended jobs retry")
    check_owner(job)
    moved = store.transition(
        job.id,
        JobStatus.QUEUED,
        expect={JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED},
        reason="retry requested",
        attempts=0,
        not_before=None,
        cancel_requested=False,
        # (a fresh job: not the last run's code, GPUs and times while it waits)
        exit_code=None,
        gpus=(),
        started=None,
        ended=None,
        pid=None,
        proc_start=None,
        node=None,
    )
    if moved is None:
        raise InvalidValueError(f"job {job.id} changed meanwhile; look at it again")
    return job.id


def cancel(store: Store, job_id: str, kill: Callable[[Job], None]) -> bool:
    """Cancel a job: a queued one leaves the queue; a running one is ended by
    ``kill(job)`` (its whole process tree).  False if it had already ended."""
    job = store.get(job_id)
    check_owner(job)
    if job.status == JobStatus.QUEUED:
        done = store.transition(
            job.id,
            JobStatus.CANCELLED,
            expect={JobStatus.QUEUED},
            reason="cancelled while queued",
            ended=time.time(),
        )
        if done is not None:
            return True
        job = store.get(job_id)
    if job.status != JobStatus.RUNNING:
        return False
    store.update(job.id, cancel_requested=True)
    kill(job)
    store.transition(
        job.id,
        JobStatus.CANCELLED,
        expect={JobStatus.RUNNING},
        guard=lambda j: j.token == job.token,
        reason="cancelled",
        ended=time.time(),
    )
    return True


__all__ = ["cancel", "check_owner", "retry"]
