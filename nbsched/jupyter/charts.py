"""GPU utilisation and memory over time as a PNG, cheap enough to redraw every second.

The axes, ticks and legend are drawn once (matplotlib's Agg canvas, no pyplot, so
the notebook's backend does not matter); each update restores that background,
draws only the lines (blitting) and encodes the pixels as a fast-compressed PNG.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

#: The time axis grows through these spans (minutes) as readings accumulate.
TIME_STEPS_MIN = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)

#: ``(wall time, readings)``: what ``GPUMonitor.history_items()`` holds.
HistoryItem = tuple[float, Sequence[Any]]


class GpuChart:
    """Two panels (utilisation %, memory used %) with one line per GPU."""

    def __init__(
        self, n_gpus: int, window_s: float = 600.0, dpi: int = 80, max_points: int = 240
    ) -> None:
        self.n_gpus = n_gpus
        self.window_s = window_s
        self.figure = Figure(figsize=(9.5, 2.3), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(left=0.045, right=0.9, bottom=0.2, top=0.87, wspace=0.14)
        self.axes = self.figure.subplots(1, 2, sharex=True, sharey=True)
        for ax, title in zip(self.axes, ("utilisation (%)", "memory used (%)"), strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_ylim(0, 100)
            ax.set_xlabel("minutes ago", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        self.lines = [
            [
                ax.plot([], [], label=f"GPU {i}", linewidth=1.2, animated=True)[0]
                for i in range(n_gpus)
            ]
            for ax in self.axes
        ]
        self.axes[1].legend(
            loc="upper left", bbox_to_anchor=(1.01, 1.02), fontsize=7, frameon=False
        )
        self._shown_minutes = 0.0
        self._background: Any = None
        self.max_points = max_points
        self._times: deque[float] = deque()
        self._util: deque[list[float]] = deque()
        self._mem: deque[list[float]] = deque()

    def render(self, history: Sequence[HistoryItem]) -> bytes:
        """The PNG of the readings in the last ``window_s`` seconds of ``history``."""
        self._ingest(history)
        xs, util, mem = self._series()
        span = self._times[-1] - self._times[0] if self._times else 0.0
        self._draw_background(span)
        self.canvas.restore_region(self._background)  # type: ignore[no-untyped-call]  # (matplotlib's Agg canvas)
        for ax, lines, values in zip(self.axes, self.lines, (util, mem), strict=True):
            for i, line in enumerate(lines):
                line.set_data(xs, values[:, i] if len(xs) else [])
                ax.draw_artist(line)
        width, height = self.canvas.get_width_height()
        pixels = self.canvas.buffer_rgba()  # type: ignore[no-untyped-call]  # (matplotlib's Agg)
        image = Image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)
        # A 64-colour palette: line plots lose nothing, and the PNG is ~3x smaller and faster.
        image = image.convert("RGB").quantize(64, method=Image.Quantize.FASTOCTREE)
        out = io.BytesIO()
        image.save(out, format="PNG", compress_level=1)
        return out.getvalue()

    def _draw_background(self, span_s: float) -> None:
        """Axes, ticks and legend, redrawn only when the time axis grows a step
        (1, 2, 5, 10, ... minutes, up to ``window_s``)."""
        window_min = self.window_s / 60.0
        minutes = next((m for m in TIME_STEPS_MIN if m * 60 >= span_s), window_min)
        minutes = min(minutes, window_min)
        if self._background is not None and minutes == self._shown_minutes:
            return
        for ax in self.axes:
            ax.set_xlim(-minutes, 0.0)
        self.canvas.draw()  # type: ignore[no-untyped-call]  # (matplotlib's Agg canvas)
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)  # type: ignore[no-untyped-call]  # (matplotlib's Agg canvas)
        self._shown_minutes = minutes

    def _ingest(self, history: Sequence[HistoryItem]) -> None:
        """Convert only the readings not seen before; forget those out of the window."""
        if not history:
            return
        if self._times and history[-1][0] < self._times[-1]:  # a new history: start over
            self._times.clear()
            self._util.clear()
            self._mem.clear()
        seen = self._times[-1] if self._times else -math.inf
        for t, reading in history:
            if t <= seen:
                continue
            self._times.append(t)
            self._util.append([_pct(_at(reading, i, "load"), 1.0) for i in range(self.n_gpus)])
            self._mem.append(
                [
                    _pct(_at(reading, i, "memory_used_mb"), _at(reading, i, "memory_total_mb"))
                    for i in range(self.n_gpus)
                ]
            )
        cutoff = self._times[-1] - self.window_s
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
            self._util.popleft()
            self._mem.popleft()

    def _series(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Times (minutes before the last reading) and values, averaged down to at
        most ``max_points`` per line: more than ~1 point per pixel only costs time."""
        if not self._times:
            empty = np.empty((0, self.n_gpus))
            return np.empty(0), empty, empty
        times = np.fromiter(self._times, dtype=float, count=len(self._times))
        util = np.asarray(self._util, dtype=float)
        mem = np.asarray(self._mem, dtype=float)
        xs = (times - times[-1]) / 60.0
        stride = -(-len(xs) // self.max_points)
        if stride > 1:
            keep = len(xs) // stride * stride
            xs = xs[-keep:].reshape(-1, stride).mean(axis=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bucket is NaN
                util = np.nanmean(util[-keep:].reshape(-1, stride, self.n_gpus), axis=1)
                mem = np.nanmean(mem[-keep:].reshape(-1, stride, self.n_gpus), axis=1)
        return xs, util, mem


def _at(reading: Sequence[Any], i: int, field: str) -> float | None:
    return getattr(reading[i], field) if i < len(reading) else None


def _pct(value: float | None, total: float | None) -> float:
    if value is None or not total:
        return math.nan
    return 100.0 * value / total
