"""The tables ``nbsched`` prints in a terminal (a front end of :mod:`nbsched.cli`: it
uses the public API and the notebook layer's table formatting only).

A job table (``nbsched jobs``, ``wait``, ``status``) is the compact view of
:mod:`nbsched.jupyter.tables`, fitted to the terminal: among its columns a job's
``expected`` run time (its estimate) and a queued job's ``eta``; ``--all`` shows every
column whole, ``--json`` every column as ``jobs()`` has it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .scheduler import GPUJobScheduler

if TYPE_CHECKING:
    import pandas as pd

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


def print_jobs(df: pd.DataFrame, as_json: bool, every: bool = False) -> None:
    """Jobs as a person reads them in a terminal (compact: nbsched.jupyter.tables);
    ``every``: every column, whole."""
    from nbsched.jupyter.tables import fit

    if as_json or every:  # (every: each column whole, as stored)
        print_frame(df, as_json) if as_json or df.empty else print(df.to_string(index=False))
    else:
        print(fit(df, shutil.get_terminal_size((100, 24)).columns))


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


__all__ = ["STATUS_QUEUED", "print_active", "print_frame", "print_jobs"]
