"""``%gpusched status``: GPUs, queue counts, running and queued jobs in one view.

:class:`StatusReport` is a snapshot read through the public API; it shows itself
as HTML in a notebook (status colours through pandas' ``Styler``) and as plain
text anywhere else.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nbsched.scheduler import GPUJobScheduler

from .tables import STATUS_COLOURS, cell_text, compact, cut, text_table, to_html

__all__ = [
    "STATUS_COLOURS",
    "StatusReport",
    "reading_note",
    "short_reason",
    "status_report",
    "waiting_reasons",
]

MAX_ROWS = 20


@dataclass(frozen=True)
class StatusReport:
    """What ``%gpusched status`` shows; every part is also a plain attribute."""

    engine: str
    gpus: pd.DataFrame
    counts: dict[str, int]
    running: pd.DataFrame
    queued: pd.DataFrame
    waiting: dict[str, str] = field(default_factory=dict)
    #: The latest warnings kept for people (``notices()``): a jobs-file line skipped, an
    #: LLM config not reloaded.
    notices: list[dict[str, Any]] = field(default_factory=list)
    #: When the GPUs were read (``time.time()``; ``None``: never) and what went wrong
    #: with the last reading, if it failed (the one shown is then older).
    read_at: float | None = None
    read_error: str | None = None
    #: When this report was made (``time.time()``).
    made_at: float = field(default_factory=time.time)

    @property
    def reading(self) -> str:
        """``GPUs read 14:03:12, 0.4 s ago``, as of when the report was made."""
        return reading_note(self.read_at, self.made_at, self.read_error)

    # -- plain text -----------------------------------------------------------------------

    def __repr__(self) -> str:
        lines = [self.engine, "jobs: " + _counts_text(self.counts), "", f"{self.reading}:"]
        lines.append(_gpu_text(_gpu_table(self.gpus)))
        for title, df in (("running", self.running), ("queued", self.queued)):
            total = self.counts.get(title, 0)
            lines += ["", f"{title} ({total}):"]
            if df.empty:
                lines.append("  (none)")
            else:
                lines.append(text_table(compact(df)))
                if total > len(df):
                    lines.append(f"  ... and {total - len(df)} more")
        if self.notices:
            lines += ["", "notices:"] + [f"  {_notice_text(n)}" for n in self.notices]
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    # -- HTML -----------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        badges = " ".join(
            _badge(status, n) for status, n in self.counts.items() if n or status == "queued"
        )
        parts = [
            f"<div class='nbsched-status'><b>{html.escape(self.engine)}</b>",
            f"<p>{badges}</p>",
            "<h4 style='margin:0.4em 0'>GPUs</h4>",
            f"<p class='nbsched-reading' style='color:#6c757d;margin:0'>"
            f"{html.escape(self.reading)}</p>",
            _style_gpus(_gpu_table(self.gpus)),
        ]
        for title, df in (("Running", self.running), ("Queued", self.queued)):
            total = self.counts.get(title.lower(), 0)
            parts.append(f"<h4 style='margin:0.4em 0'>{title} ({total})</h4>")
            if df.empty:
                parts.append("<p><i>none</i></p>")
                continue
            parts.append(to_html(compact(df)))
            if total > len(df):
                parts.append(f"<p>... and {total - len(df)} more</p>")
        if self.notices:
            items = "".join(f"<li>{html.escape(_notice_text(n))}</li>" for n in self.notices)
            parts.append(f"<h4 style='margin:0.4em 0'>Notices</h4><ul>{items}</ul>")
        parts.append("</div>")
        return "\n".join(parts)


def status_report(s: GPUJobScheduler, max_rows: int = MAX_ROWS) -> StatusReport:
    """A snapshot of ``s``: GPUs (read afresh: a job that just ended shows as ended),
    counts, the running and the first queued jobs, each with why it waits."""
    counts = s.counts()
    # (the first of the queue only: reading 100,000 queued jobs to show 20 took seconds)
    running = s.jobs(status="running").head(max_rows)
    queued = s.queue(first=max_rows)
    waiting = waiting_reasons(s, queued)
    role = "dispatching" if s.is_dispatcher else ("standby" if s.running else "stopped")
    s.monitor.invalidate()  # (a reading up to a second old shows a job's load after it ended)
    gpus = s.get_gpu_status()
    read_at, error = _read_at(s)
    engine = f"nbsched {role}: {len(gpus)} GPU(s), state in {s.config.state_dir}"
    return StatusReport(
        engine=engine,
        gpus=gpus,
        counts=counts,
        running=running.reset_index(drop=True),
        queued=queued.assign(waiting=queued["id"].map(waiting).fillna("")).reset_index(drop=True),
        waiting=waiting,
        notices=s.notices(NOTICES),
        read_at=read_at,
        read_error=error,
    )


def gpus_text(s: GPUJobScheduler) -> str:
    """The GPUs read afresh, as text: when they were read, then a row per GPU."""
    s.monitor.invalidate()
    table = _gpu_table(s.get_gpu_status())
    read_at, error = _read_at(s)
    return f"{reading_note(read_at, error=error)}:\n{_gpu_text(table)}"


def _read_at(s: GPUJobScheduler) -> tuple[float | None, str | None]:
    """When the GPUs were last read, and why the reading after it failed (if it did)."""
    history, error = s.monitor.history, s.monitor.last_error
    read_at = history[-1][0] if history else None
    return read_at, None if error is None else f"{type(error).__name__}: {error}"


def reading_note(read_at: float | None, now: float | None = None, error: str | None = None) -> str:
    """``GPUs read 14:03:12, 0.4 s ago`` (and why a newer reading failed, if it did)."""
    if read_at is None:
        text = "GPUs not read yet"
    else:
        age = max(0.0, (time.time() if now is None else now) - read_at)
        when = time.strftime("%H:%M:%S", time.localtime(read_at))
        text = f"GPUs read {when}, {age:.1f} s ago"
    return text if error is None else f"{text} (the last reading failed: {cut(error, 80)})"


#: The long reasons of ``why()`` and their short forms for a table row: each names the
#: job, GPU or pause the job waits for.  A reason not listed is cut at its first clause.
_SHORT = (
    (re.compile(r"job (\S+) comes first\b.*"), r"after job \1"),
    (re.compile(r"needs (.+?); GPU\(s\) (\S+) held for it.*"), r"needs \1; GPU \2 held for it"),
    (re.compile(r"needs (.+?); only (\d+) usable GPU\(s\) \((.*)\)$"), r"needs \1; \3"),
    (re.compile(r"none of the GPUs it may use \(([^)]*)\) takes a job now \((.*)\)$"), r"\2"),
    (re.compile(r"no GPU is usable now \((.*)\)$"), r"\1"),
    (re.compile(r"every usable GPU \((\d+)\) is taken.*"), r"all \1 usable GPUs taken"),
    (re.compile(r"it fits now \(GPU (\S+)\).*"), r"starts now on GPU \1"),
    (re.compile(r"held \(release it.*"), "held"),
)


def waiting_reasons(s: GPUJobScheduler, queued: pd.DataFrame) -> dict[str, str]:
    """Why each of ``queued`` (rows of ``jobs()``) waits, in a few words: ``held``, the
    job's own reason where it says what it waits for (``waits for 12``), else
    :func:`short_reason` of ``why()``."""
    out = {}
    for row in queued.itertuples(index=False):
        jid, reason = str(row.id), getattr(row, "reason", None)
        if getattr(row, "held", False):
            out[jid] = "held"
        elif isinstance(reason, str) and reason.startswith("waits for"):
            out[jid] = cut(reason, 60)
        else:
            out[jid] = short_reason(s.why(jid))
    return out


def short_reason(reason: str) -> str:
    """A ``why()`` answer in a few words for a table row (``after job 9``, ``GPU 2
    paused``); the whole answer is ``%gpusched why ID``."""
    text = reason.split(" (no engine runs", 1)[0].strip()  # (the header says so once)
    for pattern, short in _SHORT:
        match = pattern.fullmatch(text)
        if match:
            return cut(match.expand(short), 60)
    return cut(re.split(r"; | \(", text, maxsplit=1)[0], 60)


#: How many of the latest notices a status shows.
NOTICES = 5


def _notice_text(notice: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(notice["at"]))
    return f"{when} {str(notice['level']).upper()}: {notice['source']}: {notice['message']}"


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _badge(status: str, n: int) -> str:
    fg, bg = STATUS_COLOURS.get(status, ("#000", "#eee"))
    return (
        f"<span style='color:{fg};background:{bg};padding:2px 8px;border-radius:8px;"
        f"margin-right:4px'>{n} {html.escape(status)}</span>"
    )


def _gpu_table(gpus: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"gpu": gpus["gpu"], "name": gpus["name"]})
    used, total = gpus["memory_used"], gpus["memory_total"]
    out["memory"] = [
        "n/a" if pd.isna(u) or pd.isna(t) or not t else f"{u / 1024:.1f}/{t / 1024:.0f} GiB"
        for u, t in zip(used, total, strict=True)
    ]
    out["load"] = ["n/a" if pd.isna(x) else f"{x:.0%}" for x in gpus["load"]]
    out["allocated"] = gpus["allocated"].astype(float)
    out["paused"] = ["paused" if p else "" for p in gpus["paused"].astype(bool)]
    out["jobs"] = [", ".join(map(str, j)) for j in gpus["jobs"]]
    known = {"gpu", "name", "memory_used", "memory_total", "load", "allocated", "paused", "jobs"}
    for column in gpus.columns:  # (a column added to get_gpu_status() later shows too)
        if column not in known:
            out[column] = [cell_text(v) for v in gpus[column]]
    return out


def _gpu_text(table: pd.DataFrame) -> str:
    text = table.assign(allocated=[f"{x:.2f}" for x in table["allocated"]])
    return text_table(text.astype(str))


def _styler(df: pd.DataFrame) -> Any:
    # Styler does not escape by default: a command ``cat <in >out`` or a name holding
    # markup would be read as HTML.  Every later ``.format`` escapes too.
    styler = df.style.hide(axis="index").format(escape="html")
    return styler.set_table_attributes("class='nbsched-table'").set_table_styles(
        [{"selector": "th, td", "props": "text-align:left; padding:2px 8px"}]
    )


def _style_map(styler: Any, func: Any, subset: list[str]) -> Any:
    apply = getattr(styler, "map", None) or styler.applymap  # pandas < 2.1: applymap
    return apply(func, subset=subset)


def _style_gpus(df: pd.DataFrame) -> str:
    try:
        styler = _styler(df).bar(subset=["allocated"], vmin=0, vmax=1, color="#9ec5fe")
        styler = styler.format({"allocated": "{:.2f}"}, escape="html")
        styler = _style_map(
            styler, lambda v: "color:#842029;font-weight:bold" if v else "", ["paused"]
        )
        return str(styler.to_html())
    except ImportError:  # Styler needs jinja2
        return str(df.to_html(index=False))
