"""``%gpusched status``: GPUs, queue counts, running and queued jobs in one view.

:class:`StatusReport` is a snapshot read through the public API; it shows itself
as HTML in a notebook (status colours through pandas' ``Styler``) and as plain
text anywhere else.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nbsched.scheduler import GPUJobScheduler

#: Text and background colour of each job status.
STATUS_COLOURS = {
    "queued": ("#495057", "#e9ecef"),
    "running": ("#084298", "#cfe2ff"),
    "succeeded": ("#0f5132", "#d1e7dd"),
    "failed": ("#842029", "#f8d7da"),
    "cancelled": ("#664d03", "#fff3cd"),
}

_JOB_COLUMNS = ["id", "status", "priority", "name", "command", "required_gpus", "gpus", "sweep"]
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

    # -- plain text -----------------------------------------------------------------------

    def __repr__(self) -> str:
        lines = [self.engine, "jobs: " + _counts_text(self.counts), "", "GPUs:"]
        lines.append(_gpu_table(self.gpus).to_string(index=False))
        for title, df in (("running", self.running), ("queued", self.queued)):
            total = self.counts.get(title, 0)
            lines += ["", f"{title} ({total}):"]
            if df.empty:
                lines.append("  (none)")
            else:
                lines.append(_job_table(df).to_string(index=False, max_colwidth=60))
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
            _style_gpus(_gpu_table(self.gpus)),
        ]
        for title, df in (("Running", self.running), ("Queued", self.queued)):
            total = self.counts.get(title.lower(), 0)
            parts.append(f"<h4 style='margin:0.4em 0'>{title} ({total})</h4>")
            if df.empty:
                parts.append("<p><i>none</i></p>")
                continue
            parts.append(_style_jobs(_job_table(df)))
            if total > len(df):
                parts.append(f"<p>... and {total - len(df)} more</p>")
        if self.notices:
            items = "".join(f"<li>{html.escape(_notice_text(n))}</li>" for n in self.notices)
            parts.append(f"<h4 style='margin:0.4em 0'>Notices</h4><ul>{items}</ul>")
        parts.append("</div>")
        return "\n".join(parts)


def status_report(s: GPUJobScheduler, max_rows: int = MAX_ROWS) -> StatusReport:
    """A snapshot of ``s``: GPUs, counts, the running and the first queued jobs."""
    counts = s.counts()
    # (the first of the queue only: reading 100,000 queued jobs to show 20 took seconds)
    running = s.jobs(status="running").head(max_rows)
    queued = s.queue(first=max_rows)
    waiting = {str(i): s.why(str(i)) for i in queued["id"].head(5)}
    for i, held, note in zip(queued["id"], queued["held"], queued["reason"], strict=True):
        if str(i) not in waiting and (held or str(note).startswith("waits for")):
            waiting[str(i)] = "held" if held else str(note)  # (the rest: holds and waits)
    role = "dispatching" if s.is_dispatcher else ("standby" if s.running else "stopped")
    gpus = s.get_gpu_status()
    engine = f"nbsched {role}: {len(gpus)} GPU(s), state in {s.config.state_dir}"
    return StatusReport(
        engine=engine,
        gpus=gpus,
        counts=counts,
        running=running.reset_index(drop=True),
        queued=queued.assign(waiting=queued["id"].map(waiting).fillna("")).reset_index(drop=True),
        waiting=waiting,
        notices=s.notices(NOTICES),
    )


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
    out["paused"] = gpus["paused"].astype(bool)
    out["jobs"] = [", ".join(map(str, j)) for j in gpus["jobs"]]
    return out


def _job_table(jobs: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in _JOB_COLUMNS if c in jobs.columns]
    out = jobs[cols].copy()
    out["command"] = [c if len(c) <= 80 else c[:77] + "..." for c in out["command"]]
    out["gpus"] = [", ".join(map(str, g)) for g in out["gpus"]]
    out = out.fillna("")
    if "waiting" in jobs.columns:
        out["waiting"] = jobs["waiting"]
    return out


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


def _style_jobs(df: pd.DataFrame) -> str:
    def colour(status: object) -> str:
        fg, bg = STATUS_COLOURS.get(str(status), ("", ""))
        return f"color:{fg};background-color:{bg}" if fg else ""

    try:
        styler = _style_map(_styler(df), colour, ["status"])
        return str(styler.format({"required_gpus": "{:g}"}, escape="html").to_html())
    except ImportError:
        return str(df.to_html(index=False))
