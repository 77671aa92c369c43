"""The original's monitor thread: the jobs file, the state file, and a log line per job.

The original ran one thread that re-read the jobs file every ``monitor_interval``
seconds and the state file every ``state_check_interval`` seconds (a pause written
there by its ``pause`` command took effect then), and its workers logged each job
they assigned and each that ended.  :class:`Follower` does the same beside nbsched's
engine, through the compat scheduler's :class:`Host` calls; each second it reads the
latest jobs and logs those that started or ended since, in the original's words
(the completion line is the one :func:`~.statefile.lines_run` reads back).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger("nbsched.compat")

#: How many of the latest jobs each look reads for starts and ends.
RECENT = 500


class Host(Protocol):
    """What the follower asks of the compat scheduler."""

    def recent_jobs(self, last: int) -> list[dict[str, Any]]: ...

    def describe(self, job: dict[str, Any]) -> tuple[str | None, str | None]:
        """The job's ``--llm`` model and its jobs-file line, where known."""
        ...


class Follower:
    """One daemon thread: periodic calls, and the log of job starts and ends."""

    def __init__(self, host: Host, tasks: list[tuple[float, Callable[[], object]]]) -> None:
        self.host = host
        self.tasks = tasks  # (interval s, call); each called at once, then every interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started: set[str] = set()
        self._ended: set[str] = set()

    def start(self) -> None:
        self._stop.clear()
        self._skip_old()
        self._thread = threading.Thread(target=self._run, name="FileAndStateMonitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        self.log_changes()  # (what ended while it stopped)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        due = [0.0] * len(self.tasks)
        while not self._stop.is_set():
            now = time.monotonic()
            for i, (interval, call) in enumerate(self.tasks):
                if now >= due[i]:
                    due[i] = now + max(interval, 0.05)
                    self._guarded(call)
            self._guarded(self.log_changes)
            wait = min([1.0, *(d - time.monotonic() for d in due)])
            self._stop.wait(max(0.05, wait))

    @staticmethod
    def _guarded(call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:  # the thread boundary: say it, and go on next time
            logger.exception("[File/State Monitor] %s failed; trying again", call)

    def _skip_old(self) -> None:
        """Jobs that started or ended before this start are not logged again."""
        for job in self.host.recent_jobs(RECENT):
            if job["started"] is not None:
                self._started.add(job["id"])
            if job["ended"] is not None:
                self._ended.add(job["id"])

    def log_changes(self) -> None:
        """Log the jobs that started or ended since the last look."""
        for job in self.host.recent_jobs(RECENT):
            jid = job["id"]
            if job["started"] is not None and jid not in self._started:
                self._started.add(jid)
                self._log_start(job)
            if job["ended"] is not None and jid not in self._ended:
                self._ended.add(jid)
                if job["started"] is not None:  # (a queued job cancelled never ran)
                    self._log_end(job)

    def _log_start(self, job: dict[str, Any]) -> None:
        llm, line = self.host.describe(job)
        gpus = job["gpus"]
        logger.info(
            "Assigning job ID %s (LLM: %s, Req: %.2f) to GPU(s) %s",
            job["id"],
            llm,
            job["required_gpus"],
            gpus,
        )
        where = ",".join(map(str, gpus))
        suffix = f" [Original Line: {line.strip()}]" if line else ""
        logger.info(
            "GPU(s) %s: Preparing job ID %s (LLM: %s, Req: %.2f)%s",
            where,
            job["id"],
            llm,
            job["required_gpus"],
            suffix,
        )

    def _log_end(self, job: dict[str, Any]) -> None:
        _llm, line = self.host.describe(job)
        ok = job["status"] == "succeeded"
        took = job["ended"] - job["started"]
        seconds = took.total_seconds() if hasattr(took, "total_seconds") else float(took)
        reason = f"direct execution completion (Success: {ok})"
        if job["status"] == "cancelled":
            reason = "cancellation"
        message = (
            f"GPU(s) {','.join(map(str, job['gpus']))}: Job ID {job['id']} "
            f"(Name: '{job['name'] or job['command']}') finished due to {reason} in "
            f"{seconds if math.isfinite(seconds) else 0.0:.2f} seconds. Success: {ok}. "
            f"Releasing allocation (Req: {job['required_gpus']:.2f})."
        )
        if line:
            message += f" [Original Line: {line.strip()}]"
        (logger.info if ok else logger.warning)(message)


__all__ = ["Follower", "Host"]
