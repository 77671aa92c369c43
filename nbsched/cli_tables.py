"""The tables ``nbsched`` prints in a terminal (a front end of :mod:`nbsched.cli`: it
uses the public API only).

The job table (``nbsched jobs``, ``wait``, ``status``) shows each job's estimate with its
grounds (``5m00s (time limit)``) and a queued job's expected start (``eta``) as a clock
time; ``--json`` gives the columns as ``jobs()`` has them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .scheduler import GPUJobScheduler

if TYPE_CHECKING:
    import pandas as pd

#: The columns of the job table, in order (those the frame has).
JOB_TABLE = (
    "id",
    "status",
    "priority",
    "gpus",
    "required_gpus",
    "exit_code",
    "attempts",
    "estimate",
    "eta",
    "command",
    "reason",
)

#: How many queued jobs ``nbsched status`` lists (the first to start).
STATUS_QUEUED = 20


def print_frame(df: pd.DataFrame, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """``df`` as JSON records, or as text with ``columns`` (those it has)."""
    import pandas as pd  # lazily: `nbsched add` and friends start faster without it

    if as_json:
        print(df.to_json(orient="records", date_format="iso"))
        return
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    if df.empty:
        print("(none)")
    else:
        with pd.option_context("display.width", 200):
            print(df.to_string(index=False, max_colwidth=60, na_rep=""))


def print_jobs(df: pd.DataFrame, as_json: bool) -> None:
    """A job table (``jobs()``'s columns): the estimate and the ETA in words."""
    if not as_json and not df.empty:
        df = df.copy()
        if "estimate" in df.columns:
            sources = df["estimate_source"] if "estimate_source" in df.columns else None
            df["estimate"] = [
                _estimate(v, None if sources is None else sources.iloc[i])
                for i, v in enumerate(df["estimate"])
            ]
        if "eta" in df.columns:
            df["eta"] = [_clock(v) for v in df["eta"]]
    print_frame(df, as_json, JOB_TABLE)


def print_active(s: GPUJobScheduler, queued: int) -> None:
    """The running jobs, then the first :data:`STATUS_QUEUED` queued ones in the order
    they start, and how many more wait: a table of 100,000 queued jobs is for
    ``nbsched jobs``, not for a glance (printing it took seconds)."""
    import pandas as pd

    shown = s.queue(first=STATUS_QUEUED)
    parts = [df for df in (s.jobs(status="running"), shown) if not df.empty]
    if not parts:
        return
    print()
    print_jobs(pd.concat(parts, ignore_index=True), False)
    if queued > len(shown):
        print(f"... and {queued - len(shown):,} more queued: nbsched jobs --status queued")


def duration(seconds: float) -> str:
    """``45s``, ``2.5s``, ``1m30s``, ``2h05m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _estimate(seconds: Any, source: Any) -> str:
    """An estimate and its grounds (``5m00s (time limit)``); ``""``: none."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    text = duration(float(seconds))
    return f"{text} ({source})" if isinstance(source, str) and source else text


def _clock(at: Any) -> str:
    """A time as the local clock (``14:03:10``; ``12-06 14:03`` on another day); ``""``:
    none (NaT)."""
    try:
        stamp = float(at.timestamp())
    except (AttributeError, ValueError):  # (None, NaT: no time)
        return ""
    if math.isnan(stamp):
        return ""
    when = time.localtime(stamp)
    if time.strftime("%Y-%m-%d", when) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", when)
    return time.strftime("%m-%d %H:%M", when)


__all__ = ["JOB_TABLE", "STATUS_QUEUED", "duration", "print_active", "print_frame", "print_jobs"]
