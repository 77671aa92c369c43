"""The end of a job's log, read without reading the rest of it.

Three questions are answered from a failed job's last lines: did ``conda run`` say its
environment does not exist (:mod:`.launch`), which cell of a notebook job failed
(:mod:`.pipeline.notebooks`), did the job run out of GPU memory (:mod:`.gpus.oom`).
"""

from __future__ import annotations

import os
from collections.abc import Callable


def last_line(
    path: str | os.PathLike[str] | None, found: Callable[[str], bool], nbytes: int = 8192
) -> str | None:
    """The last line, among the log's last ``nbytes`` bytes, for which ``found`` is
    true; None when there is none, or no log to read."""
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - nbytes))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return next((line for line in reversed(tail.splitlines()) if found(line)), None)


__all__ = ["last_line"]
