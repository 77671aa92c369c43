"""``%gpusched dashboard``: live GPU charts, allocation, the job table and sweep progress.

A background thread calls :meth:`Dashboard.refresh` about once a second; the
kernel stays free.  The charts are matplotlib figures rendered to PNG (Agg) into
an ``ipywidgets.Image``, so they work with the default inline backend.  The
dashboard reads only the scheduler's public API (``get_gpu_status``, ``jobs``,
``counts``, ``monitor.history_items()``); it stops refreshing when closed or when
the engine stops, and an error in the thread is logged and shown, never raised.
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import pandas as pd

from nbsched.checks import check_interval
from nbsched.scheduler import GPUJobScheduler

from .charts import GpuChart
from .status import STATUS_COLOURS

logger = logging.getLogger(__name__)

#: Re-read the job table at least this often even when no job changed status.
JOBS_MAX_AGE_S = 5.0
SHOWN_QUEUED = 20
SHOWN_ENDED = 10
ENDED = ("succeeded", "failed", "cancelled")


class Dashboard(widgets.VBox):  # type: ignore[misc]  # (ipywidgets is untyped)
    """The live dashboard of one scheduler; ``refresh()`` updates it once."""

    def __init__(
        self,
        scheduler: GPUJobScheduler,
        interval: float = 1.0,
        window_s: float = 600.0,
        autostart: bool = True,
    ) -> None:
        self.interval = check_interval(interval)
        self.scheduler = scheduler
        self.window_s = float(window_s)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._updating = False
        self._errors_logged: set[str] = set()
        self._counts_key: tuple[Any, ...] | None = None
        self._jobs_at = -math.inf
        self._plotted_at: float | None = None
        self._sweep: str | None = None
        self.refreshes = 0

        self.header = widgets.HTML()
        self.message = widgets.HTML()
        self.stop_button = widgets.Button(description="Stop refreshing", icon="stop")
        self.stop_button.on_click(lambda _: self._safely(self.stop))
        self.chart = widgets.Image(format="png")
        self.gpu_rows = widgets.VBox()
        self._gpu_widgets: list[
            tuple[widgets.FloatProgress, widgets.HTML, widgets.ToggleButton]
        ] = []
        self.job_select = widgets.Dropdown(description="job", options=[], layout={"width": "420px"})
        self.cancel_button = widgets.Button(description="Cancel job", button_style="danger")
        self.cancel_button.on_click(lambda _: self._safely(self.cancel_selected))
        self.job_select.observe(lambda _: self._sync_cancel(), names="value")
        self._sync_cancel()
        self.jobs_table = widgets.HTML()
        self.sweep_bar = widgets.IntProgress(min=0, max=1, value=0, description="sweep")
        self.sweep_label = widgets.HTML()
        self._chart: GpuChart | None = None
        super().__init__(
            children=[
                widgets.HBox([self.header, self.stop_button]),
                self.chart,
                widgets.HTML("<b>Allocation</b> (toggle to pause a GPU)"),
                self.gpu_rows,
                widgets.HBox([self.sweep_bar, self.sweep_label]),
                widgets.HBox([self.job_select, self.cancel_button]),
                self.jobs_table,
                self.message,
            ]
        )
        self._safely(self.refresh)
        if autostart:
            self.start()

    # -- the refresh thread ---------------------------------------------------------------

    def start(self) -> Dashboard:
        """Refresh every ``interval`` seconds from a background thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name="nbsched-dashboard", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing (the widgets stay as they are)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None
        self.stop_button.disabled = True
        self.stop_button.description = "Stopped"

    @property
    def refreshing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop refreshing and close every widget of the dashboard."""
        if "stop_button" not in self.__dict__:  # __init__ refused its arguments; ipywidgets'
            super().close()  # __del__ still calls close(): there is nothing to stop
            return
        self.stop()
        for w in self._own_widgets():
            w.close()
        super().close()

    def _own_widgets(self) -> list[widgets.Widget]:
        out: list[widgets.Widget] = []
        stack = list(self.children)
        while stack:
            w = stack.pop()
            out.append(w)
            stack.extend(getattr(w, "children", ()))
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.scheduler.running:
                self._show_message("the engine stopped; the dashboard no longer refreshes")
                self._stop.set()
                self.stop_button.disabled = True
                self.stop_button.description = "Engine stopped"
                return
            self._safely(self.refresh)

    def _safely(self, action: Any) -> None:
        """Run ``action``; an error is logged once and shown, never raised (thread and
        button callbacks are boundaries)."""
        try:
            action()
        except Exception as exc:
            key = f"{type(exc).__name__}: {exc}"
            if key not in self._errors_logged:
                self._errors_logged.add(key)
                logger.warning("nbsched dashboard: %s", key, exc_info=True)
            self._show_message(f"error: {key}", error=True)

    def _show_message(self, text: str, error: bool = False) -> None:
        colour = "#842029" if error else "#495057"
        self.message.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    # -- refresh --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the scheduler once and update every part of the dashboard."""
        with self._lock:
            s = self.scheduler
            gpus = s.get_gpu_status()  # takes a fresh reading when the cached one is old
            self._update_chart(s.monitor.history_items())
            self._update_allocation(gpus)
            counts = s.counts()
            key = tuple(counts.items())
            now = time.monotonic()
            if key != self._counts_key or now - self._jobs_at > JOBS_MAX_AGE_S:
                self._update_jobs(s, counts)
                self._counts_key, self._jobs_at = key, now
            active = counts.get("running", 0) + counts.get("queued", 0)
            role = "dispatching" if s.is_dispatcher else ("standby" if s.running else "stopped")
            self.header.value = (
                f"<b>nbsched</b> {role} · {len(gpus)} GPU(s) · {counts.get('running', 0)} "
                f"running · {counts.get('queued', 0)} queued · {active} active · "
                f"updated {time.strftime('%H:%M:%S')}"
            )
            self.refreshes += 1

    def _update_chart(self, history: Sequence[tuple[float, Sequence[Any]]]) -> None:
        if not history or history[-1][0] == self._plotted_at:
            return
        n = len(history[-1][1])
        if self._chart is None or self._chart.n_gpus != n:
            self._chart = GpuChart(n, self.window_s)
        self.chart.value = self._chart.render(history)
        self._plotted_at = history[-1][0]

    def _update_allocation(self, gpus: pd.DataFrame) -> None:
        if len(self._gpu_widgets) != len(gpus):
            rows = []
            self._gpu_widgets = []
            for gpu in gpus["gpu"]:
                bar = widgets.FloatProgress(min=0.0, max=1.0, description=f"GPU {gpu}")
                label = widgets.HTML()
                toggle = widgets.ToggleButton(description="pause", layout={"width": "90px"})
                toggle.observe(self._toggle_handler(int(gpu)), names="value")
                self._gpu_widgets.append((bar, label, toggle))
                rows.append(widgets.HBox([bar, toggle, label]))
            self.gpu_rows.children = rows
        self._updating = True
        try:
            for (bar, label, toggle), row in zip(self._gpu_widgets, _rows(gpus), strict=True):
                alloc = float(row.allocated)
                bar.value = min(alloc, 1.0)
                bar.bar_style = "warning" if row.paused else ("success" if alloc else "")
                toggle.value = bool(row.paused)
                toggle.description = "paused" if row.paused else "pause"
                jobs = ", ".join(map(str, row.jobs)) or "-"
                load = "n/a" if pd.isna(row.load) else f"{row.load:.0%}"
                label.value = f"{alloc:.2f} allocated · load {load} · jobs {html.escape(jobs)}"
        finally:
            self._updating = False

    def _toggle_handler(self, gpu: int) -> Any:
        def on_change(change: dict[str, Any]) -> None:
            if self._updating:
                return

            def act() -> None:
                if change["new"]:
                    self.scheduler.pause_gpu(gpu)
                    self._show_message(f"GPU {gpu} paused: no new job starts on it")
                else:
                    self.scheduler.resume_gpu(gpu)
                    self._show_message(f"GPU {gpu} resumed")

            self._safely(act)

        return on_change

    def _update_jobs(self, s: GPUJobScheduler, counts: dict[str, int]) -> None:
        running = s.jobs("running")
        queued = s.jobs("queued", first=SHOWN_QUEUED)
        ended = s.jobs("ended", last=SHOWN_ENDED)
        self.jobs_table.value = _jobs_html(running, queued, ended[::-1], counts)
        options = [
            (f"{r.id} · {r.status} · {_short(_text(r.name) or r.command, 40)}", str(r.id))
            for df in (running, queued)
            for r in _rows(df)
        ]
        if options != list(self.job_select.options):
            keep = self.job_select.value
            self.job_select.options = options
            # The job the user chose, or none: ipywidgets would pick one itself (the first
            # job, once the chosen one is gone), and Cancel would act on a job not chosen.
            self.job_select.value = keep if keep in [v for _, v in options] else None
        self._sync_cancel()
        self._update_sweep(s, running, queued, ended)

    def _update_sweep(
        self, s: GPUJobScheduler, running: pd.DataFrame, queued: pd.DataFrame, ended: pd.DataFrame
    ) -> None:
        active = [x for df in (running, queued) for x in df["sweep"] if isinstance(x, str)]
        if active:  # the newest sweep with jobs still to run
            self._sweep = max(active, key=_sweep_number)
        else:  # none active: the newest sweep seen
            past = [x for x in ended["sweep"] if isinstance(x, str)]
            if self._sweep is not None:
                past.append(self._sweep)
            self._sweep = max(past, key=_sweep_number) if past else None
        if self._sweep is None:
            self.sweep_bar.layout.visibility = "hidden"
            self.sweep_label.value = ""
            return
        counts = s.counts(sweep=self._sweep)
        total = sum(counts.values())
        done = sum(counts.get(k, 0) for k in ENDED)
        self.sweep_bar.layout.visibility = "visible"
        self.sweep_bar.max = max(total, 1)
        self.sweep_bar.value = done
        self.sweep_bar.bar_style = "danger" if counts.get("failed") else "info"
        detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        self.sweep_label.value = f"{self._sweep}: {done}/{total} ended ({detail})"

    def _sync_cancel(self) -> None:
        """Cancel is enabled only with a job chosen in the drop-down; else it says why."""
        chosen = self.job_select.value
        self.cancel_button.disabled = chosen is None
        no_job = "choose a job in the list first" if self.job_select.options else "no active job"
        self.cancel_button.tooltip = no_job if chosen is None else f"cancel job {chosen}"

    def cancel_selected(self) -> bool:
        """Cancel the job chosen in the drop-down; returns whether it was cancelled."""
        job_id = self.job_select.value
        if not job_id:
            self._show_message("no job selected")
            return False
        done = self.scheduler.cancel(job_id)
        self._show_message(f"job {job_id} cancelled" if done else f"job {job_id} had ended")
        self._safely(self.refresh)
        return bool(done)


def _rows(df: pd.DataFrame) -> list[Any]:
    """The rows as named tuples (typed loosely: cells hold any type)."""
    return list(df.itertuples(index=False))


def _queued_note(r: Any) -> str:
    """`` held`` or `` waits for 12`` after a queued job's status ("" for the others)."""
    if r.status != "queued":
        return ""
    if getattr(r, "held", False):
        return " held"
    return f" {_text(r.reason)}" if getattr(r, "waiting", False) else ""


def _sweep_number(sweep_id: str) -> int:
    digits = sweep_id[2:]
    return int(digits) if digits.isdigit() else -1


def _text(value: object) -> str:
    """A text cell of the jobs table; "" where it has none (None, or pandas' NaN)."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "" if missing else str(value)


def _short(text: object, n: int) -> str:
    s = _text(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def _jobs_html(
    running: pd.DataFrame, queued: pd.DataFrame, ended: pd.DataFrame, counts: dict[str, int]
) -> str:
    head = "".join(
        f"<th style='text-align:left;padding:1px 8px'>{c}</th>"
        for c in ("id", "status", "name", "GPUs", "on", "time (s)", "command")
    )
    now = time.time()
    body = []
    for df in (running, queued, ended):
        for r in _rows(df):
            fg, bg = STATUS_COLOURS.get(r.status, ("#000", "#fff"))
            if pd.notna(r.started):
                end = r.ended.timestamp() if pd.notna(r.ended) else now
                took = f"{end - r.started.timestamp():.1f}"
            else:
                took = ""
            cells = [
                str(r.id),
                f"<span style='color:{fg};background:{bg};padding:0 6px'>{r.status}</span>"
                + html.escape(_queued_note(r)),
                html.escape(_short(_text(r.name), 20)),
                f"{r.required_gpus:g}",
                html.escape(",".join(map(str, r.gpus))),
                took,
                html.escape(_short(r.command, 70)),
            ]
            body.append("<tr>" + "".join(f"<td style='padding:1px 8px'>{c}</td>" for c in cells))
    more = counts.get("queued", 0) - len(queued)
    tail = f"<p>... and {more} more queued</p>" if more > 0 else ""
    if not body:
        return "<p><i>no jobs yet</i></p>"
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{tail}"
