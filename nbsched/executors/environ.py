"""One variable of another process's environment, read from ``/proc/PID/environ``.

How nbsched recognises its own processes: a job's ``NBSCHED_JOB_TOKEN`` (the spawner
adopting orphans, the GPU memory attribution) and a screen session's ``STY``.  Only the
standard library: the spawner imports it.
"""

from __future__ import annotations


def environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in process ``pid``'s environment (as it was when the process
    started); None if it has none or cannot be read (gone, or another user's)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    key = name.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode("utf-8", "replace")
    return None


__all__ = ["environ_value"]
