"""What a notification says: the ended job as a small record (:class:`JobEnd`, also
what an ``on_end`` callback gets), a sweep's summary, and the words of both.

A message is a plain dict (stored as JSON with the notification, so a restart sends
the same words): ``title``, ``text`` (several lines, the last log lines in a code
block), ``status``, and ``job`` or ``sweep`` with the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..jobs import Job

Message = dict[str, Any]

#: The longest log tail put in a message (characters; chat servers cap a message).
MAX_LOG_CHARS = 3000


@dataclass(frozen=True)
class JobEnd:
    """A job's final end (after its retries): what ``on_end`` callbacks are called with."""

    id: str
    name: str | None
    #: ``succeeded``, ``failed`` or ``cancelled``.
    status: str
    exit_code: int | None
    #: Seconds from its (last) start to its end; None: it never started.
    duration_s: float | None
    reason: str | None
    command: str
    sweep: str | None = None
    attempts: int = 0
    log_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def job_end(job: Job) -> JobEnd:
    """The record of an ended job."""
    duration = None
    if job.started is not None and job.ended is not None:
        duration = max(0.0, job.ended - job.started)
    return JobEnd(
        id=job.id,
        name=job.spec.name,
        status=job.status.value,
        exit_code=job.exit_code,
        duration_s=duration,
        reason=job.reason,
        command=job.display_command(),
        sweep=job.spec.sweep,
        attempts=job.attempts,
        log_path=job.log_path,
    )


def duration_text(seconds: float | None) -> str:
    """``1h 02m``, ``3m 04s``, ``5.2 s``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _label(end: JobEnd) -> str:
    return f"job {end.id}" + (f" ({end.name})" if end.name else "")


def job_message(end: JobEnd, log_tail: str) -> Message:
    """The message of a job's end, with the last lines of its log."""
    title = f"nbsched: {_label(end)} {end.status}"
    head = f"{_label(end)} {end.status}"
    if end.exit_code is not None:
        head += f", exit code {end.exit_code}"
    if end.duration_s is not None:
        head += f", after {duration_text(end.duration_s)}"
    lines = [head, f"command: {end.command}"]
    if end.reason and end.status != "succeeded":
        lines.append(f"reason: {end.reason}")
    if end.sweep:
        lines.append(f"sweep: {end.sweep}")
    tail = log_tail[-MAX_LOG_CHARS:].rstrip("\n")
    if tail:
        lines += ["last log lines:", "```", tail.replace("```", "'''"), "```"]
    job = {k: v for k, v in asdict(end).items() if k != "log_path"}
    job["log_tail"] = tail
    return {"title": title, "text": "\n".join(lines), "status": end.status, "job": job}


def sweep_message(
    sweep: str, counts: Mapping[str, int], failed: list[str], definition: str | None
) -> Message:
    """The message of a sweep whose last job ended: how many jobs ended how."""
    total = sum(counts.values())
    parts = [f"{n} {status}" for status, n in counts.items() if n]
    bad = counts.get("failed", 0) + counts.get("cancelled", 0)
    status = "succeeded" if not bad else "failed"
    title = f"nbsched: sweep {sweep} ended: {', '.join(parts) or 'no jobs'}"
    lines = [f"sweep {sweep}: {total} job(s): {', '.join(parts) or 'none'}"]
    if definition:
        lines.append(f"definition: {definition}")
    if failed:
        more = " ..." if bad > len(failed) else ""
        lines.append(f"failed or cancelled: {', '.join(failed)}{more}")
    return {
        "title": title,
        "text": "\n".join(lines),
        "status": status,
        "sweep": {"id": sweep, "jobs": total, "counts": dict(counts), "failed": failed},
    }


__all__ = ["JobEnd", "Message", "duration_text", "job_end", "job_message", "sweep_message"]
