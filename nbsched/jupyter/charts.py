"""GPU charts as a PNG, cheap enough to redraw every second.

One small panel per GPU (small multiples: GPUs with equal values never hide each
other), titled with the GPU's index and name; one metric at a time (utilisation,
memory used, or what nbsched has allocated on it) over a chosen time window, on an
axis that reads ``-5 min … now``; 0 % and 100 % sit inside the frame.  The picture is
drawn at twice the size it is shown (:data:`SCALE`), so its text stays sharp on a
high-density screen and is never stretched on any other.

The axes, ticks and titles are drawn once per layout (matplotlib's Agg canvas, no
pyplot, so the notebook's backend does not matter); each update restores that
background, draws only the lines and the latest values (blitting) and encodes the
pixels as a fast-compressed PNG.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image

#: ``(wall time, readings)``: what ``GPUMonitor.history_items()`` holds.
HistoryItem = tuple[float, Sequence[Any]]

#: The time windows a person picks from (seconds; ``None``: since the first reading).
WINDOWS: dict[str, float | None] = {
    "1 min": 60.0,
    "10 min": 600.0,
    "1 h": 3600.0,
    "since start": None,
}
#: The metrics a person picks from, and each one's panel label.
METRICS = {
    "utilisation": "utilisation %",
    "memory": "memory used %",
    "allocation": "nbsched allocation %",
}
#: "since start" grows its axis through these spans (minutes).
SINCE_START_STEPS_MIN = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 360.0, 720.0, 1440.0)

#: The picture's size as shown (CSS pixels) and how many pixels it has per CSS pixel.
WIDTH_PX = 960
PANEL_HEIGHT_PX = 150
SCALE = 2.0
#: Panels per row.
COLUMNS = 4
#: How much history is kept (seconds): more than "since start" shows at one time is
#: averaged down anyway.
KEEP_S = 24 * 3600.0


class _Series:
    """Times and per-GPU values in growing numpy arrays (appending is amortised O(1),
    the window is found by binary search)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reset()

    def reset(self) -> None:
        self.times = np.empty(256)
        self.values = np.empty((256, self.n))
        self.size = 0
        self.start = 0

    def append(self, t: float, row: Sequence[float]) -> None:
        if self.size == len(self.times):
            keep = self.size - self.start
            cap = max(256, 2 * keep)
            times, values = np.empty(cap), np.empty((cap, self.n))
            times[:keep], values[:keep] = self.times[self.start :], self.values[self.start :]
            self.times, self.values, self.size, self.start = times, values, keep, 0
        self.times[self.size] = t
        self.values[self.size] = row
        self.size += 1

    @property
    def last(self) -> float:
        return float(self.times[self.size - 1]) if self.size > self.start else -math.inf

    @property
    def first(self) -> float:
        return float(self.times[self.start]) if self.size > self.start else math.nan

    def forget_before(self, t: float) -> None:
        self.start += int(np.searchsorted(self.times[self.start : self.size], t))

    def since(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        i = self.start + int(np.searchsorted(self.times[self.start : self.size], t))
        return self.times[i : self.size], self.values[i : self.size]


class GpuChart:
    """One panel per GPU; :meth:`render` draws one metric over one window."""

    def __init__(
        self,
        names: Sequence[str] | int,
        max_points: int = 240,
        keep_s: float = KEEP_S,
        canvas: Callable[[Figure], Any] | None = None,
    ) -> None:
        """``canvas``: makes the figure's canvas for :meth:`show` (ipympl's, a widget
        with hover values, pan and zoom); without it, :meth:`render` makes PNGs."""
        self.names = [f"GPU {i}" for i in range(names)] if isinstance(names, int) else list(names)
        self.n_gpus = n = len(self.names)
        self.max_points = max_points
        self.keep_s = keep_s
        self.metric = "utilisation"
        self.window: str = "since start"
        self.series = {m: _Series(n) for m in METRICS}
        cols = max(1, min(n, COLUMNS))
        rows = max(1, math.ceil(n / cols))
        self.live = live = canvas is not None
        dpi = 96 if live else 96 * SCALE  # (ipympl scales for the screen itself)
        self.size_px = (WIDTH_PX, PANEL_HEIGHT_PX * rows + 10)
        self.figure = Figure(figsize=(self.size_px[0] / 96, self.size_px[1] / 96), dpi=dpi)
        self.canvas: Any = (
            canvas(self.figure) if canvas is not None else FigureCanvasAgg(self.figure)
        )
        height = self.size_px[1]
        self.figure.subplots_adjust(
            left=0.055, right=0.99, bottom=30 / height, top=1 - 22 / height,
            wspace=0.16, hspace=46 / PANEL_HEIGHT_PX,
        )  # fmt: skip
        grid = self.figure.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
        self.axes = list(grid.flat[:n])
        for ax in grid.flat[n:]:
            ax.set_visible(False)
        for i, ax in enumerate(self.axes):
            self._style_axes(ax, i, cols)
        self.lines = [
            ax.plot([], [], color=f"C{i % 10}", linewidth=1.6, animated=not live)[0]
            for i, ax in enumerate(self.axes)
        ]
        self.values = [
            ax.text(1.0, 1.0, "", transform=ax.transAxes, ha="right", va="bottom", fontsize=9,
                    fontweight="bold", color=f"C{i % 10}", animated=not live)
            for i, ax in enumerate(self.axes)
        ]  # fmt: skip
        self._fit_titles()
        self._layout: tuple[str, float] | None = None
        self._background: Any = None
        self._palette: Image.Image | None = None

    def _fit_titles(self) -> None:
        """Cut each panel's title so that it and the latest value beside it both show."""
        renderer = self.canvas.get_renderer()
        for ax, value in zip(self.axes, self.values, strict=True):
            value.set_text("100 %")
            room = ax.get_window_extent(renderer).width - value.get_window_extent(renderer).width
            title = ax._left_title  # (the title set with loc="left")
            text = title.get_text()
            while len(text) > 8 and title.get_window_extent(renderer).width > room - 8 * SCALE:
                text = text[:-1]
                title.set_text(text.rstrip() + "…")
            value.set_text("")

    def _style_axes(self, ax: Any, i: int, cols: int) -> None:
        name = self.names[i].removeprefix("NVIDIA ")  # (the model is what tells GPUs apart)
        ax.set_title(f"GPU {i} · {name}", fontsize=9, loc="left", pad=4)
        ax.set_ylim(-6, 106)  # (0 % and 100 % inside the frame, not on it)
        ax.set_yticks([0, 50, 100])
        ax.tick_params(labelsize=8.5, length=2, pad=2)
        ax.grid(alpha=0.3)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.xaxis.set_major_formatter(FuncFormatter(_minutes))

    # -- data -------------------------------------------------------------------------------

    def ingest(self, history: Sequence[HistoryItem]) -> None:
        """Take the readings of ``history`` not seen before."""
        util, mem = self.series["utilisation"], self.series["memory"]
        if history and history[-1][0] < util.last:  # a new history: start over
            util.reset()
            mem.reset()
        seen = util.last
        for t, reading in history:
            if t <= seen:
                continue
            util.append(t, [_pct(_at(reading, i, "load"), 1.0) for i in range(self.n_gpus)])
            mem.append(
                t,
                [
                    _pct(_at(reading, i, "memory_used_mb"), _at(reading, i, "memory_total_mb"))
                    for i in range(self.n_gpus)
                ],
            )
        for series in (util, mem):
            series.forget_before(series.last - self.keep_s)

    def record_allocation(self, t: float, allocated: Sequence[float]) -> None:
        """What nbsched had allocated on each GPU at ``t`` (fractions of one GPU)."""
        series = self.series["allocation"]
        if t > series.last:
            series.append(t, [100.0 * min(1.0, a) for a in allocated])
            series.forget_before(t - self.keep_s)

    # -- drawing ----------------------------------------------------------------------------

    def update(
        self,
        history: Sequence[HistoryItem] = (),
        window: str | None = None,
        metric: str | None = None,
    ) -> bool:
        """Take new readings and set the lines to ``metric`` over ``window`` (the last
        ones chosen if not given); whether the axes changed (and need drawing)."""
        if window is not None:
            self.window = _choice(window, WINDOWS, "window")
        if metric is not None:
            self.metric = _choice(metric, METRICS, "metric")
        self.ingest(history)
        series = self.series[self.metric]
        span_min = self._span_min(series)
        changed = self._set_axes(span_min)
        xs, ys = self._points(series, span_min)
        for i in range(self.n_gpus):
            column = ys[:, i] if len(xs) else np.empty(0)
            self.lines[i].set_data(xs, column)
            latest = column[~np.isnan(column)][-1:] if len(column) else column
            self.values[i].set_text(f"{latest[0]:.0f} %" if len(latest) else "n/a")
        return changed

    def render(
        self,
        history: Sequence[HistoryItem] = (),
        window: str | None = None,
        metric: str | None = None,
    ) -> bytes:
        """The PNG of ``metric`` over ``window`` (the last ones chosen if not given)."""
        if self.update(history, window, metric) or self._background is None:
            self.canvas.draw()  # (the axes only: the lines are animated)
            self._background = self.canvas.copy_from_bbox(self.figure.bbox)
            self._palette = None
        self.canvas.restore_region(self._background)
        for ax, line, value in zip(self.axes, self.lines, self.values, strict=True):
            ax.draw_artist(line)
            ax.draw_artist(value)
        return self._png()

    def show(
        self,
        history: Sequence[HistoryItem] = (),
        window: str | None = None,
        metric: str | None = None,
    ) -> None:
        """:meth:`update`, then draw on the live canvas (``canvas=`` given)."""
        self.update(history, window, metric)
        self.canvas.draw_idle()

    def _span_min(self, series: _Series) -> float:
        seconds = WINDOWS[self.window]
        if seconds is not None:
            return seconds / 60.0
        have = (series.last - series.first) / 60.0 if series.size > series.start else 0.0
        return next((m for m in SINCE_START_STEPS_MIN if m >= have), SINCE_START_STEPS_MIN[-1])

    def _set_axes(self, span_min: float) -> bool:
        """The time axis and the metric's label, set again only when they change."""
        layout = (self.metric, span_min)
        if layout == self._layout:
            return False
        for i, ax in enumerate(self.axes):
            ax.set_xlim(-span_min, 0.0)
            ax.set_xticks([-span_min, -span_min / 2, 0.0])
            ticks = ax.xaxis.get_major_ticks()  # (the ends' labels inside their panel)
            ticks[0].label1.set_horizontalalignment("left")
            ticks[-1].label1.set_horizontalalignment("right")
            ax.set_ylabel(METRICS[self.metric] if i % COLUMNS == 0 else "", fontsize=8)
        self._layout = layout
        return True

    def _points(self, series: _Series, span_min: float) -> tuple[np.ndarray, np.ndarray]:
        """Minutes before the latest reading, and the values, averaged down to at most
        ``max_points`` per line (more than ~1 point per pixel only costs time)."""
        if series.size == series.start:
            return np.empty(0), np.empty((0, self.n_gpus))
        times, values = series.since(series.last - span_min * 60.0)
        xs = (times - series.last) / 60.0
        stride = -(-len(xs) // self.max_points)
        if stride > 1:
            keep = len(xs) // stride * stride
            xs = xs[-keep:].reshape(-1, stride).mean(axis=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bucket is NaN
                values = np.nanmean(values[-keep:].reshape(-1, stride, self.n_gpus), axis=1)
        return xs, values

    def _png(self) -> bytes:
        width, height = self.canvas.get_width_height()
        pixels = self.canvas.buffer_rgba()
        image = Image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)
        # A 64-colour palette: line plots lose nothing, and the PNG is ~3x smaller and
        # faster.  The palette is made once per layout (with every line's colour in it);
        # mapping a frame onto a known palette costs a third of making one.
        image = image.convert("RGB")
        if self._palette is None:
            self._palette = _palette_of(image, [line.get_color() for line in self.lines])
        image = image.quantize(palette=self._palette, dither=Image.Dither.NONE)
        out = io.BytesIO()
        image.save(out, format="PNG", compress_level=1)
        return out.getvalue()


def require_ipympl() -> None:
    """Raise a clear ``ImportError`` where ipympl is not installed."""
    try:
        import ipympl  # noqa: F401
    except ImportError:
        raise ImportError(
            "interactive charts need ipympl (matplotlib's widget backend): "
            "pip install ipympl, or leave interactive off for the PNG charts"
        ) from None


def ipympl_canvas(figure: Any) -> Any:
    """ipympl's canvas widget of ``figure``, with its toolbar (pan, zoom, the values
    under the pointer)."""
    from ipympl.backend_nbagg import Canvas, FigureManager

    canvas = Canvas(figure)
    FigureManager(canvas, 0)
    canvas.header_visible = False
    canvas.add_class("nbsched-chart")
    return canvas


def _palette_of(image: Image.Image, colours: Sequence[Any]) -> Image.Image:
    """A 64-colour palette for ``image`` and for lines of ``colours`` drawn on it."""
    from matplotlib.colors import to_rgb

    swatch = Image.new("RGB", (image.width, image.height + 8 * len(colours)), "white")
    swatch.paste(image, (0, 0))
    for k, colour in enumerate(colours):
        rgb = tuple(int(255 * c) for c in to_rgb(colour))
        swatch.paste(rgb, (0, image.height + 8 * k, image.width, image.height + 8 * (k + 1)))
    return swatch.quantize(64, method=Image.Quantize.FASTOCTREE)


def _minutes(x: float, _pos: object = None) -> str:
    """A tick of the time axis (minutes before now): ``now``, ``-30 s``, ``-5 min``,
    ``-2 h``."""
    if abs(x) < 1e-9:
        return "now"
    if abs(x) < 1:
        return f"{x * 60:.0f} s"
    if abs(x) >= 60 and abs(x) % 60 < 1e-9:
        return f"{x / 60:g} h"
    return f"{x:g} min"


def _choice(value: str, accepted: dict[str, Any], what: str) -> str:
    if value not in accepted:
        raise ValueError(f"{what}={value!r}: accepted values are {', '.join(accepted)}")
    return value


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _at(reading: Sequence[Any], i: int, field: str) -> float | None:
    return getattr(reading[i], field) if i < len(reading) else None


def _pct(value: float | None, total: float | None) -> float:
    if value is None or not total:
        return math.nan
    return 100.0 * value / total
