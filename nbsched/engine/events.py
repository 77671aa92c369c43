"""What happened to jobs since the last look: starts and ends, read from the store's
change feed (``nbsched serve``'s per-job lines, as the original program logged each
assignment and each end).

A :class:`JobEvents` is an observer, not a part of the engine: the dispatcher does no
work for it.  Each :meth:`JobEvents.read` asks the store for the jobs written since its
last revision (one indexed query), and reads whole rows only of those that started or
ended, so following a state directory costs its reader a query per look and a row per
start or end, whichever process ran the jobs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..jobs import Job, JobStatus
from ..store import Store


@dataclass(frozen=True)
class JobEvent:
    """A job's attempt started (``kind="started"``) or ended (``kind="ended"``)."""

    kind: str
    id: str
    #: ``running`` when it started; how the attempt ended: ``succeeded``, ``failed``,
    #: ``cancelled``, or ``queued`` (it failed and is queued again for a retry).
    status: str
    gpus: tuple[int, ...]
    command: str
    attempt: int
    exit_code: int | None = None
    #: Seconds from its start to its end (None: it never started).
    duration_s: float | None = None
    reason: str | None = None
    #: Seconds until a retry may start (``status="queued"`` only).
    retry_in_s: float | None = None

    def line(self) -> str:
        """The event as one line for people (``job 12 started on GPU(s) 0,1: ...``)."""
        if self.kind == "started":
            again = f" (attempt {self.attempt})" if self.attempt > 1 else ""
            gpus = ",".join(map(str, self.gpus))
            return f"job {self.id} started{again} on GPU(s) {gpus}: {self.command}"
        word = "failed" if self.status == "queued" else self.status
        text = f"job {self.id} {word}"
        if self.exit_code is not None:
            text += f" (exit {self.exit_code})"
        if self.duration_s is not None:
            text += f" after {self.duration_s:.1f} s"
        if self.status == "queued":
            return text + f"; retrying in {round(self.retry_in_s or 0, 1):g} s"
        said = f"exit code {self.exit_code}"
        if self.reason and self.status != "succeeded" and self.reason not in (said, self.status):
            text += f": {self.reason}"
        return text


def _event(kind: str, job: Job) -> JobEvent:
    duration = None
    if kind == "ended" and job.started is not None and job.ended is not None:
        duration = max(0.0, job.ended - job.started)
    retry_in = None
    if job.status == JobStatus.QUEUED and job.not_before is not None and job.ended is not None:
        retry_in = max(0.0, job.not_before - job.ended)
    return JobEvent(
        kind=kind,
        id=job.id,
        status=JobStatus.RUNNING.value if kind == "started" else job.status.value,
        gpus=tuple(job.gpus),
        command=job.display_command(),
        attempt=job.attempts,
        exit_code=None if kind == "started" else job.exit_code,
        duration_s=duration,
        reason=None if kind == "started" else job.reason,
        retry_in_s=retry_in,
    )


class JobEvents:
    """The starts and ends of a state directory's jobs from now on.

    It remembers the attempt (token) of each job it saw running: a job seen running
    with another token has started (again); one seen ended, or queued again for a
    retry, with the token it ran with has ended.  A job that started and ended between
    two looks gives both events; one cancelled before it started, its end only.  An
    ended job it never saw running counts only if it ended after this was made (a row
    written again later, long after its end, is no new end).  One reader at a time.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._since = time.time()
        self._rev = store.revision()
        #: The jobs seen running: id -> the token of their attempt.
        self._running = {j.id: j.token for j in store.find(statuses=[JobStatus.RUNNING])}

    def read(self) -> list[JobEvent]:
        """The starts and ends since the last call (or since this was made), in the
        order the store wrote them."""
        feed = self._store.changes_since(self._rev)
        self._rev = feed.rev
        wanted: list[tuple[str, JobStatus, str | None, bool]] = []  # (.., whether seen running)
        for job_id, status, token, _ in sorted(feed.changes, key=lambda c: c[3]):
            seen = job_id in self._running and self._running[job_id] == token
            if status == JobStatus.RUNNING:
                if not seen:
                    wanted.append((job_id, status, token, False))
                self._running[job_id] = token
                continue
            if status.ended or (status == JobStatus.QUEUED and seen):
                wanted.append((job_id, status, token, seen))
            self._running.pop(job_id, None)
        if not wanted:
            return []
        jobs = {j.id: j for j in self._store.get_many({w[0] for w in wanted})}
        out: list[JobEvent] = []
        for job_id, status, token, seen in wanted:
            said = self._events(jobs.get(job_id), status, token, seen)
            if status == JobStatus.RUNNING and not said:  # (ended since: said with its end)
                self._running.pop(job_id, None)
            out += said
        return out

    def _events(
        self, job: Job | None, status: JobStatus, token: str | None, seen: bool
    ) -> list[JobEvent]:
        """The events of one change: a start; an end, with its start first when the
        attempt was never seen running.  None when the job is gone or its row has moved
        on since the feed was read (the next look reports what it is now)."""
        if job is None or job.token != token or job.status != status:
            return []
        if status == JobStatus.RUNNING:
            return [_event("started", job)]
        if seen:
            return [_event("ended", job)]
        if job.ended is None or job.ended < self._since:
            return []
        ran = job.started is not None and bool(job.gpus)
        return [_event("started", job), _event("ended", job)] if ran else [_event("ended", job)]


__all__ = ["JobEvent", "JobEvents"]
