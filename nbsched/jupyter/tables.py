"""Job tables for people: the compact view of the API's job DataFrames.

The API's DataFrames (``jobs()``, ``wait()``, ...) keep every column and type; this
module only decides how a person sees them.  :func:`compact` turns a job table into
short text cells: times to the second in the local zone with no offset, durations
(``1m05s``), commands on one line and shortened against the working folder (a
``%%gpusched`` cell file reads ``<cell>``), a notebook job's executed notebook in an
``output`` column, and only the columns that hold something.
A column this module does not know (one added to ``jobs()`` later) is shown too,
formatted by its type, when it holds something.

:class:`JobTable` is a DataFrame (every column, every type) that shows itself
compact; ``.full`` is the same table as a plain DataFrame, shown whole.
"""

from __future__ import annotations

import html
import math
import os
import re
import shlex
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

#: Text and background colour of each job status.
STATUS_COLOURS = {
    "queued": ("#495057", "#e9ecef"),
    "running": ("#084298", "#cfe2ff"),
    "succeeded": ("#0f5132", "#d1e7dd"),
    "failed": ("#842029", "#f8d7da"),
    "cancelled": ("#664d03", "#fff3cd"),
}

#: Columns never shown compact (``.full`` / ``--all`` show them): the log's path, and
#: the times a duration or another time already tells.
HIDDEN = frozenset({"log", "submitted", "ended", "estimate_source"})

#: The known columns, in the order shown, and the header each gets.  Columns not
#: named here follow them in their own order, under their own names; ``command`` is
#: always last (it is the widest).
HEADERS = {
    "id": "id",
    "status": "status",
    "name": "name",
    "sweep": "sweep",
    "required_gpus": "GPUs",
    "gpus": "on",
    "node": "node",
    "priority": "priority",
    "started": "started",
    "took": "took",
    "estimate": "expected",
    "eta": "eta",
    "exit_code": "exit",
    "attempts": "tries",
    "held": "held",
    "reason": "reason",
    "output": "output",
}

#: A column whose every cell is one of these shows nothing worth a column.
_NOTHING = {"priority": {"", "0"}, "attempts": {"", "0", "1"}}

#: The widest a command is shown compact (characters); the middle is cut.
COMMAND_WIDTH = 60
#: Any other text cell.
TEXT_WIDTH = 40

_CELL_FILE = re.compile(r"\S*/cells/cell_[0-9a-f]{8,}\.py")
_EXIT_CODE = re.compile(r"exit code -?\d+")
#: An absolute path of three parts or more (shown as ``…/name``).
_LONG_PATH = re.compile(r"(?<![\w.~…<])/(?:[^\s/'\"]+/){2,}([^\s/'\"]+)")


# -- cells ---------------------------------------------------------------------------------


def missing(value: object) -> bool:
    """None, NaN, NaT or pandas' NA."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):  # (a list: not one missing value)
        return False


def clock(value: object, today: datetime | None = None) -> str:
    """A time to the second in the local zone, no offset: ``14:03:12`` today,
    ``Dec 04 14:03:12`` on another day; "" for none."""
    if missing(value):
        return ""
    stamp = pd.Timestamp(value)  # type: ignore[arg-type]
    # (jobs() gives times in the local zone already: their wall time, without the zone)
    now = pd.Timestamp(today) if today is not None else pd.Timestamp.now(tz=stamp.tz)
    fmt = "%H:%M:%S" if stamp.date() == now.date() else "%b %d %H:%M:%S"
    return stamp.strftime(fmt)


def duration(seconds: float | None) -> str:
    """``0.4s``, ``42s``, ``1m05s``, ``2h03m``, ``3d04h``; "" for none."""
    if seconds is None or math.isnan(seconds):
        return ""
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    whole = int(s)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def cut(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters: the middle cut out (the
    start says what runs, the end which arguments tell it apart)."""
    line = " ".join(str(text).split())
    if len(line) <= width:
        return line
    head = max(1, (width - 1) * 2 // 5)
    return line[:head] + "…" + line[len(line) - (width - 1 - head) :]


def short_command(command: object, cwd: str | None = None, width: int = COMMAND_WIDTH) -> str:
    """A command on one line: paths under the working folder relative to it, the
    home folder as ``~``, other long absolute paths as ``…/name``, a notebook cell's
    saved file as ``<cell>``; cut to ``width``."""
    if missing(command):
        return ""
    text = _CELL_FILE.sub("<cell>", str(command))
    folder = os.getcwd() if cwd is None else cwd
    if folder and folder != os.sep:
        text = text.replace(folder.rstrip(os.sep) + os.sep, "")
    home = os.path.expanduser("~")
    if home and home != os.sep:
        text = text.replace(home.rstrip(os.sep) + os.sep, "~" + os.sep)
    return cut(_LONG_PATH.sub(r"…/\1", text), width)


def cell_text(value: object) -> str:
    """Any other cell, by its type: a list as ``0,1``; a float as ``0.5``; a time as
    :func:`clock`; a duration as :func:`duration`; a bool as "yes" or ""."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if missing(value):
        return ""
    if isinstance(value, (pd.Timestamp, datetime)):
        return clock(value)
    if isinstance(value, pd.Timedelta):
        return duration(value.total_seconds())
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:g}"
    return cut(str(value), TEXT_WIDTH)


#: What makes a job a notebook job: its script's suffix (nbsched.pipeline.notebooks).
NOTEBOOK_SUFFIX = ".ipynb"


def notebook_output(command: object, log: object) -> str | None:
    """Where a notebook job's executed notebook is (what ``output_notebook(id)`` says:
    beside its log, ``17.ipynb``), from its row's ``command`` (a script ending in
    ``.ipynb``) and ``log``; None for another job, or one not started."""
    if missing(command) or missing(log):
        return None
    try:
        words = shlex.split(str(command))
    except ValueError:
        return None
    if not words or not words[0].endswith(NOTEBOOK_SUFFIX):
        return None
    root, ext = os.path.splitext(str(log))
    return (root if ext == ".log" else str(log)) + NOTEBOOK_SUFFIX


# -- the compact table ------------------------------------------------------------------------


def _took(jobs: pd.DataFrame, now: pd.Timestamp) -> list[str]:
    if "started" not in jobs.columns:
        return []
    ends = jobs["ended"] if "ended" in jobs.columns else pd.Series([None] * len(jobs))
    out = []
    for start, end in zip(jobs["started"], ends, strict=True):
        if missing(start):
            out.append("")
            continue
        stop = now if missing(end) else pd.Timestamp(end)
        out.append(duration((stop - pd.Timestamp(start)).total_seconds()))
    return out


def _formatter(column: str, cwd: str | None, width: int) -> Callable[[object], str]:
    if column == "command":
        return lambda v: short_command(v, cwd, width)
    if column == "held":
        return lambda v: "held" if v is True or v == 1 else ""
    if column == "attempts":
        return lambda v: "" if missing(v) else str(int(v))  # type: ignore[call-overload]
    if column == "exit_code":
        return lambda v: "" if missing(v) else str(int(v))  # type: ignore[call-overload]
    if column == "reason":  # ("exit code 3": the exit column says it)
        return lambda v: "" if missing(v) or _EXIT_CODE.fullmatch(str(v)) else cell_text(v)
    if column == "waiting":  # (jobs()' flag: the reason says what it waits for)
        return lambda v: "" if isinstance(v, (bool, np.bool_)) else cell_text(v)
    if column == "estimate":  # (seconds a job is expected to run)
        return lambda v: "" if missing(v) else duration(float(v))  # type: ignore[arg-type]
    if column == "required_gpus":
        return lambda v: "" if missing(v) else f"{float(v):g}"  # type: ignore[arg-type]
    return cell_text


#: What is said of an active job only (an ended job's expected time is history).
_ACTIVE_ONLY = ("estimate", "eta")
_ACTIVE = {"queued", "running"}


def _drop_said(cells: dict[str, list[str]]) -> None:
    """Blank what another cell of the row already says: a reason that is the status
    ("cancelled"), an ended job's expected duration and time of end."""
    status = cells["status"]
    if "reason" in cells:
        cells["reason"] = [
            "" if r == s else r for r, s in zip(cells["reason"], status, strict=True)
        ]
    for column in _ACTIVE_ONLY:
        if column in cells:
            cells[column] = [
                v if s in _ACTIVE else "" for v, s in zip(cells[column], status, strict=True)
            ]


def compact(
    jobs: pd.DataFrame, cwd: str | None = None, command_width: int = COMMAND_WIDTH
) -> pd.DataFrame:
    """The table as a person reads it: text cells, the known columns first (renamed:
    ``GPUs`` asked, ``on`` given, ``took``), the others after, ``command`` last; only
    the columns that hold something."""
    now = pd.Timestamp.now(tz="UTC")
    cells: dict[str, list[str]] = {}
    for column in jobs.columns:
        if column in HIDDEN:
            continue
        fmt = _formatter(str(column), cwd, command_width)
        cells[str(column)] = [fmt(v) for v in jobs[column]]
        if column == "started":
            cells["took"] = _took(jobs, now)
    if "command" in jobs.columns and "log" in jobs.columns:
        cells["output"] = [
            short_command(notebook_output(c, log), cwd, TEXT_WIDTH)
            for c, log in zip(jobs["command"], jobs["log"], strict=True)
        ]
    if "status" in cells:
        _drop_said(cells)
    shown = {c: v for c, v in cells.items() if any(x not in _NOTHING.get(c, {""}) for x in v)}
    if "id" in cells:
        shown.setdefault("id", cells["id"])
    order = [c for c in HEADERS if c in shown]
    order += [c for c in shown if c not in HEADERS and c != "command"]
    order += ["command"] if "command" in shown else []
    out = pd.DataFrame({HEADERS.get(c, c): shown[c] for c in order}, index=jobs.index)
    return out.reset_index(drop=True)


def fit(jobs: pd.DataFrame, width: int = 100, cwd: str | None = None) -> str:
    """The compact table as terminal text, at most ``width`` characters a line where it
    can: the command gets what the other columns leave."""
    table = compact(jobs, cwd)
    if table.empty:
        return "(none)"
    if "command" in table.columns:
        others = [c for c in table.columns if c != "command"]
        used = sum(max(len(c), *(len(x) for x in table[c])) + len(GAP) for c in others)
        room = max(24, width - used)
        table["command"] = [short_command(c, cwd, room) for c in jobs["command"]]
    return text_table(table)


GAP = "  "


def text_table(table: pd.DataFrame) -> str:
    """Text cells in columns, left-aligned, two spaces apart, no index."""
    columns = [str(c) for c in table.columns]
    widths = [max(len(c), *(len(str(x)) for x in table[c])) for c in columns]
    lines = [GAP.join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    for values in table.itertuples(index=False):
        cells = (str(v).ljust(w) for v, w in zip(values, widths, strict=True))
        lines.append(GAP.join(cells))
    return "\n".join(line.rstrip() for line in lines)


def status_badge(status: str) -> str:
    """A job status as a coloured HTML label."""
    fg, bg = STATUS_COLOURS.get(status, ("#000", "#eee"))
    return (
        f"<span style='color:{fg};background:{bg};padding:0 6px;border-radius:6px'>"
        f"{html.escape(status)}</span>"
    )


def to_html(table: pd.DataFrame, css_class: str = "nbsched-jobs") -> str:
    """A compact table (of :func:`compact`) as an HTML table; statuses coloured,
    every other cell escaped."""
    if table.empty:
        return "<p><i>no jobs</i></p>"
    # Short cells stay on one line; the long texts may wrap (at spaces) where the page is
    # narrower than the table, rather than the table being cut off at its right.
    cell = "<td style='text-align:left;padding:1px 6px;white-space:{}'>{}</td>"
    wraps = ["normal;min-width:12em" if c in WRAPPING else "nowrap" for c in table.columns]
    head = "".join(
        f"<th style='text-align:left;padding:1px 6px'>{html.escape(str(c))}</th>"
        for c in table.columns
    )
    rows = []
    for values in table.itertuples(index=False):
        tds = [
            cell.format(wrap, status_badge(v) if c == "status" else html.escape(v))
            for c, v, wrap in zip(table.columns, values, wraps, strict=True)
        ]
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (
        f"<table class='{css_class}' style='max-width:100%'><tr>{head}</tr>{''.join(rows)}</table>"
    )


#: The columns whose text may wrap in HTML (the others are short).
WRAPPING = frozenset({"command", "waiting", "reason"})


# -- the table a magic returns ------------------------------------------------------------------


class JobTable(pd.DataFrame):
    """A job DataFrame, every column and type, that a notebook shows compact
    (:func:`compact`).  ``.full`` is it as a plain DataFrame, shown whole; anything
    made from it (``t[["id", "status"]]``, ``t.head()``) is a plain DataFrame too."""

    @property
    def _constructor(self) -> Callable[..., pd.DataFrame]:
        return pd.DataFrame

    @property
    def full(self) -> pd.DataFrame:
        """Every column, shown whole."""
        return pd.DataFrame(self)

    @property
    def compact(self) -> pd.DataFrame:
        """The text a notebook shows (:func:`compact`), of every row."""
        return compact(pd.DataFrame(self))

    def _shown(self) -> tuple[pd.DataFrame, int]:
        """The rows shown (the first and the last, of a long table) and how many are not."""
        plain = pd.DataFrame(self)
        if len(plain) <= SHOWN_ROWS:
            return plain, 0
        head, tail = SHOWN_ROWS - SHOWN_TAIL, SHOWN_TAIL
        return pd.concat([plain.head(head), plain.tail(tail)]), len(plain) - head - tail

    def _note(self, columns: int, hidden: int) -> str:
        rows = f" ({hidden:,} rows in the middle not shown)" if hidden else ""
        return (
            f"{len(self):,} job(s){rows}; {columns} of {len(self.columns)} columns shown "
            "(.full: every column)"
        )

    def __repr__(self) -> str:
        if self.empty:
            return "(no jobs)"
        rows, hidden = self._shown()
        return fit(rows, 120) + "\n" + self._note(len(compact(rows).columns), hidden)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        if self.empty:
            return "<p><i>no jobs</i></p>"
        rows, hidden = self._shown()
        table = compact(rows)
        note = html.escape(self._note(len(table.columns), hidden))
        return f"{to_html(table)}<p style='color:#6c757d;margin:2px 0'>{note}</p>"


#: How many rows a :class:`JobTable` shows (of a longer one: the first, then the last
#: :data:`SHOWN_TAIL`), as pandas shows a long table in part.
SHOWN_ROWS = 60
SHOWN_TAIL = 10


def job_table(jobs: pd.DataFrame) -> JobTable:
    """``jobs`` shown compact (the same data: every column and type)."""
    return JobTable(jobs)
