"""``%gpusched dashboard``: live GPU charts, allocation, the job table and sweep progress.

A background thread calls :meth:`Dashboard.refresh` about once a second; the
kernel stays free.  The charts (:mod:`.charts`: one panel per GPU, a time window and
a metric chosen with the buttons above them) are matplotlib figures rendered to PNG
(Agg) into an ``ipywidgets.Image``, so they work with the default inline backend.
Each control's message shows beside it; the widgets a browser test looks for carry a
CSS class (``nbsched-...``, listed in docs/dashboard.md).  The
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

from .charts import METRICS, WINDOWS, GpuChart, ipympl_canvas, require_ipympl
from .status import reading_note, waiting_reasons
from .tables import compact, to_html

logger = logging.getLogger(__name__)

#: Re-read the job table at least this often even when no job changed status.
JOBS_MAX_AGE_S = 5.0
SHOWN_RUNNING = 20
SHOWN_QUEUED = 20
SHOWN_ENDED = 10
ENDED = ("succeeded", "failed", "cancelled")


class Dashboard(widgets.VBox):  # type: ignore[misc]  # (ipywidgets is untyped)
    """The live dashboard of one scheduler; ``refresh()`` updates it once."""

    def __init__(
        self,
        scheduler: GPUJobScheduler,
        interval: float = 1.0,
        window: str = "since start",
        autostart: bool = True,
        interactive: bool = False,
    ) -> None:
        """``interactive``: charts in ipympl's widget (hover values, pan, zoom; a full
        redraw each second, several times the CPU of the default PNG)."""
        self.interval = check_interval(interval)
        self.scheduler = scheduler
        self.interactive = bool(interactive)
        if self.interactive:
            require_ipympl()
        if window not in WINDOWS:
            raise ValueError(f"window={window!r}: accepted values are {', '.join(WINDOWS)}")
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
        self.message = _message("nbsched-message")  # (the refresh's own: errors, engine stop)
        self.stop_button = widgets.Button(description="Stop refreshing", icon="stop")
        self.stop_button.on_click(lambda _: self._safely(self.stop))
        self._make_chart(window)
        self.gpu_rows = widgets.VBox()
        self._gpu_widgets: list[
            tuple[widgets.FloatProgress, widgets.HTML, widgets.ToggleButton, widgets.HTML]
        ] = []
        self._make_cancel()
        self.jobs_table = widgets.HTML(layout={"overflow": "auto", "max_width": "100%"})
        self.jobs_table.add_class("nbsched-jobs")
        self.sweep_bar = widgets.IntProgress(min=0, max=1, value=0, description="sweep")
        self.sweep_label = widgets.HTML()
        self._chart: GpuChart | None = None
        super().__init__(
            children=[
                widgets.HBox([self.header, self.stop_button, self.message]),
                widgets.HBox([self.window, self.metric]),
                self.chart_area,
                widgets.HTML("<b>Allocation</b> (toggle to pause a GPU)"),
                self.gpu_rows,
                widgets.HBox([self.sweep_bar, self.sweep_label]),
                widgets.HBox([self.job_select, self.cancel_button, self.job_message]),
                self.jobs_table,
            ]
        )
        self._safely(self.refresh)
        if autostart:
            self.start()

    def _make_cancel(self) -> None:
        """The job list, Cancel (enabled once a job is chosen) and its message."""
        self.job_select = widgets.Dropdown(description="job", options=[], layout={"width": "420px"})
        self.job_select.add_class("nbsched-job-select")
        self.cancel_button = widgets.Button(description="Cancel job", button_style="danger")
        self.cancel_button.add_class("nbsched-cancel")
        self.job_message = _message("nbsched-job-message")
        self.cancel_button.on_click(lambda _: self._safely(self.cancel_selected, self.job_message))
        self.job_select.observe(lambda _: self._sync_cancel(), names="value")
        self._sync_cancel()

    def _make_chart(self, window: str) -> None:
        """The chart's image and the buttons that choose its time window and metric."""
        self.window = widgets.ToggleButtons(options=list(WINDOWS), value=window)
        self.metric = widgets.ToggleButtons(options=list(METRICS), value="utilisation")
        for control, name in ((self.window, "window"), (self.metric, "metric")):
            control.style.button_width = "auto"
            control.add_class(f"nbsched-{name}")
            control.observe(lambda _: self._safely(self._redraw_chart), names="value")
        self.chart = widgets.Image(format="png", layout={"max_width": "100%", "height": "auto"})
        self.chart.add_class("nbsched-chart")
        self.chart_area = widgets.Box([self.chart])  # (interactive: ipympl's canvas instead)

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

    def _safely(self, action: Any, where: widgets.HTML | None = None) -> None:
        """Run ``action``; an error is logged once and shown (beside the control that
        caused it: ``where``), never raised (thread and button callbacks are boundaries)."""
        try:
            action()
        except Exception as exc:
            key = f"{type(exc).__name__}: {exc}"
            if key not in self._errors_logged:
                self._errors_logged.add(key)
                logger.warning("nbsched dashboard: %s", key, exc_info=True)
            _say(self.message if where is None else where, f"error: {key}", error=True)

    def _show_message(self, text: str, error: bool = False) -> None:
        _say(self.message, text, error)

    # -- refresh --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the scheduler once and update every part of the dashboard."""
        with self._lock:
            s = self.scheduler
            counts = s.counts()
            key = tuple(counts.items())
            changed = key != self._counts_key
            if changed:  # a job started or ended: read the GPUs now, not up to 1 s ago
                s.monitor.invalidate()
            gpus = s.get_gpu_status()  # takes a fresh reading when the cached one is old
            history = s.monitor.history_items()
            self._update_chart(history, gpus)
            self._update_allocation(gpus)
            now = time.monotonic()
            if changed or now - self._jobs_at > JOBS_MAX_AGE_S:
                self._update_jobs(s, counts)
                self._counts_key, self._jobs_at = key, now
            active = counts.get("running", 0) + counts.get("queued", 0)
            role = "dispatching" if s.is_dispatcher else ("standby" if s.running else "stopped")
            read_at = history[-1][0] if history else None
            self.header.value = (
                f"<b>nbsched</b> {role} · {len(gpus)} GPU(s) · {counts.get('running', 0)} "
                f"running · {counts.get('queued', 0)} queued · {active} active · "
                f"updated {time.strftime('%H:%M:%S')} · "
                f"<span class='nbsched-reading'>{html.escape(reading_note(read_at))}</span>"
            )
            self.refreshes += 1

    def _update_chart(self, history: Sequence[tuple[float, Sequence[Any]]], gpus: Any) -> None:
        if not history:
            return
        names = [_text(x) or "GPU" for x in gpus["name"]]
        if self._chart is None or self._chart.names != names:
            if self.interactive:
                self._chart = GpuChart(names, canvas=ipympl_canvas)
                self.chart_area.children = [self._chart.canvas]
            else:
                self._chart = GpuChart(names)
                # shown at its CSS size: drawn at twice it, sharp on a dense screen
                self.chart.width = str(self._chart.size_px[0])
        self._chart.record_allocation(time.time(), [float(a) for a in gpus["allocated"]])
        if history[-1][0] == self._plotted_at and self.metric.value != "allocation":
            return
        self._draw(history)
        self._plotted_at = history[-1][0]

    def _draw(self, history: Sequence[tuple[float, Sequence[Any]]]) -> None:
        chart, window, metric = self._chart, self.window.value, self.metric.value
        assert chart is not None
        if chart.live:
            chart.show(history, window, metric)
        else:
            self.chart.value = chart.render(history, window, metric)

    def _redraw_chart(self) -> None:
        """Draw the chart again at once (a window or metric was chosen)."""
        with self._lock:
            if self._chart is not None:
                self._draw(())

    def _update_allocation(self, gpus: pd.DataFrame) -> None:
        if len(self._gpu_widgets) != len(gpus):
            rows = []
            self._gpu_widgets = []
            for gpu in gpus["gpu"]:
                bar = widgets.FloatProgress(min=0.0, max=1.0, description=f"GPU {gpu}")
                label = widgets.HTML()
                toggle = widgets.ToggleButton(description="pause", layout={"width": "90px"})
                toggle.add_class("nbsched-pause")
                toggle.add_class(f"nbsched-pause-{int(gpu)}")
                note = _message(f"nbsched-gpu-message-{int(gpu)}")
                note.add_class("nbsched-gpu-message")
                toggle.observe(self._toggle_handler(int(gpu), note), names="value")
                self._gpu_widgets.append((bar, label, toggle, note))
                rows.append(widgets.HBox([bar, toggle, label, note]))
            self.gpu_rows.children = rows
        self._updating = True
        try:
            for widget_row, row in zip(self._gpu_widgets, _rows(gpus), strict=True):
                _show_gpu(*widget_row[:3], row)
        finally:
            self._updating = False

    def _toggle_handler(self, gpu: int, note: widgets.HTML) -> Any:
        def on_change(change: dict[str, Any]) -> None:
            if self._updating:
                return

            def act() -> None:
                if change["new"]:
                    self.scheduler.pause_gpu(gpu)
                    _say(note, f"GPU {gpu} paused: no new job starts on it")
                else:
                    self.scheduler.resume_gpu(gpu)
                    _say(note, f"GPU {gpu} resumed")
                self.refresh()

            self._safely(act, note)

        return on_change

    def _update_jobs(self, s: GPUJobScheduler, counts: dict[str, int]) -> None:
        running = s.jobs("running", first=SHOWN_RUNNING)
        queued = s.queue(first=SHOWN_QUEUED)  # (in the order they start)
        queued["waiting"] = queued["id"].map(waiting_reasons(s, queued))
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
            _say(self.job_message, "no job selected")
            return False
        done = self.scheduler.cancel(job_id)
        _say(self.job_message, f"job {job_id} cancelled" if done else f"job {job_id} had ended")
        self._safely(self.refresh)
        return bool(done)


def _rows(df: pd.DataFrame) -> list[Any]:
    """The rows as named tuples (typed loosely: cells hold any type)."""
    return list(df.itertuples(index=False))


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


def _message(css_class: str) -> widgets.HTML:
    """An empty message area, with the CSS class a browser test finds it by."""
    area = widgets.HTML()
    area.add_class(css_class)
    return area


def _say(area: widgets.HTML, text: str, error: bool = False) -> None:
    colour = "#842029" if error else "#495057"
    area.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"


def _show_gpu(
    bar: widgets.FloatProgress, label: widgets.HTML, toggle: widgets.ToggleButton, row: Any
) -> None:
    """One GPU's allocation row; a paused GPU is marked plainly (an idle one too)."""
    alloc = float(row.allocated)
    paused = bool(row.paused)
    bar.value = min(alloc, 1.0)
    bar.bar_style = "warning" if paused else ("success" if alloc else "")
    toggle.value = paused
    toggle.description = "paused" if paused else "pause"
    toggle.button_style = "warning" if paused else ""
    toggle.icon = "pause" if paused else ""
    jobs = ", ".join(map(str, row.jobs)) or "-"
    load = "n/a" if pd.isna(row.load) else f"{row.load:.0%}"
    text = f"{alloc:.2f} allocated · load {load} · jobs {html.escape(jobs)}"
    who = getattr(row, "who", None)  # who holds its memory (issue 14)
    if isinstance(who, str) and who:
        text += f" · memory: {html.escape(who)}"
    if paused:
        text += " · <b style='color:#997404'>PAUSED: no new job starts here</b>"
    label.value = text


def _jobs_html(
    running: pd.DataFrame, queued: pd.DataFrame, ended: pd.DataFrame, counts: dict[str, int]
) -> str:
    """The running, the first queued and the last ended jobs, compact (.tables), with
    how many of each are not shown."""
    frames = [df for df in (running, queued, ended) if not df.empty]
    if not frames:
        return "<p><i>no jobs yet</i></p>"
    table = compact(pd.concat(frames, ignore_index=True), command_width=50)
    ended_total = sum(counts.get(k, 0) for k in ENDED)
    cuts = (
        (counts.get("running", 0) - len(running), "running"),
        (counts.get("queued", 0) - len(queued), "queued"),
        (ended_total - len(ended), "ended (%gpusched jobs --status ended)"),
    )
    more = [f"{n:,} more {what}" for n, what in cuts if n > 0]
    tail = f"<p class='nbsched-more'>... and {'; '.join(more)}</p>" if more else ""
    return to_html(table) + tail
