"""The GPU charts (nbsched.jupyter.charts): every GPU visible, named, on a time axis a
person reads, drawn for a dense screen."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from nbsched.gpus.base import GpuSnapshot
from nbsched.jupyter.charts import SCALE, WIDTH_PX, GpuChart

NAME = "NVIDIA A100-SXM4-80GB"


def _history(
    n: int, seconds: int, load: float = 1.0
) -> list[tuple[float, tuple[GpuSnapshot, ...]]]:
    now = time.time()
    return [
        (
            now - seconds + k,
            tuple(GpuSnapshot(i, None, NAME, load * 1000, 1000.0, load) for i in range(n)),
        )
        for k in range(seconds)
    ]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _has_colour(pixels: np.ndarray, colour: str) -> bool:
    rgb = np.array([int(255 * c) for c in to_rgb(colour)])
    return bool((np.abs(pixels - rgb).sum(axis=2) < 30).sum() > 50)


def test_every_gpu_shows_when_their_values_are_equal() -> None:
    """Four GPUs at 100 %: one line drawn over another showed only GPU 3's."""
    chart = GpuChart([NAME] * 4)
    pixels = _pixels(chart.render(_history(4, 120)))
    assert all(_has_colour(pixels, f"C{i}") for i in range(4))
    assert len(chart.axes) == 4  # (one panel each)


def test_panels_are_named_and_keep_0_and_100_inside_the_frame() -> None:
    chart = GpuChart([NAME, "Tesla T4"])
    chart.render(_history(2, 30))
    assert chart.axes[0].get_title(loc="left") == "GPU 0 · A100-SXM4-80GB"  # (no "NVIDIA ")
    assert chart.axes[1].get_title(loc="left") == "GPU 1 · Tesla T4"
    low, high = chart.axes[0].get_ylim()
    assert low < 0 and high > 100


@pytest.mark.parametrize(
    "window, labels",
    [
        ("1 min", ["-1 min", "-30 s", "now"]),
        ("10 min", ["-10 min", "-5 min", "now"]),
        ("1 h", ["-1 h", "-30 min", "now"]),
        ("since start", ["-2 min", "-1 min", "now"]),  # (90 s of readings: the next step)
    ],
)
def test_the_time_axis_reads_minutes_before_now(window: str, labels: list[str]) -> None:
    chart = GpuChart([NAME])
    chart.render(_history(1, 90), window=window)
    assert [t.get_text() for t in chart.axes[0].get_xticklabels()] == labels


def test_drawn_at_twice_the_size_it_is_shown() -> None:
    chart = GpuChart([NAME] * 8)
    image = Image.open(io.BytesIO(chart.render(_history(8, 10))))
    assert image.size[0] == int(WIDTH_PX * SCALE) == 2 * chart.size_px[0]
    assert image.size[1] == int(chart.size_px[1] * SCALE)
    assert (
        len(chart.axes) == 8 and chart.axes[4].get_position().y0 < chart.axes[0].get_position().y0
    )


def test_allocation_is_drawn_from_what_was_recorded() -> None:
    chart = GpuChart([NAME] * 2)
    now = time.time()
    for k in range(30):
        chart.record_allocation(now - 30 + k, [0.5, 0.0])
    pixels = _pixels(chart.render(_history(2, 30, load=0.0), metric="allocation"))
    assert chart.values[0].get_text() == "50 %" and chart.values[1].get_text() == "0 %"
    assert _has_colour(pixels, "C0")


def test_a_bad_window_or_metric_is_refused_naming_the_accepted() -> None:
    chart = GpuChart([NAME])
    with pytest.raises(ValueError, match=r"window='2 h': accepted values are 1 min, 10 min"):
        chart.render(window="2 h")
    with pytest.raises(ValueError, match=r"metric='power': accepted values are utilisation"):
        chart.render(metric="power")


@pytest.mark.parametrize("n", [4, 8])
def test_a_long_name_is_cut_so_the_latest_value_beside_it_shows(n: int) -> None:
    chart = GpuChart(["Simulated A100 80GB with a very long name indeed"] * n)
    chart.render(_history(n, 30))
    renderer = chart.canvas.get_renderer()
    for ax, value in zip(chart.axes, chart.values, strict=True):
        title = ax._left_title
        assert title.get_text().startswith("GPU ") and title.get_text().endswith("…")
        assert value.get_text() == "100 %"
        assert title.get_window_extent(renderer).x1 < value.get_window_extent(renderer).x0


@pytest.mark.filterwarnings("ignore:Passing unrecognized arguments to super\\(Toolbar\\)")
def test_interactive_charts_live_in_ipympls_canvas(make_sched: Callable[..., Any]) -> None:
    """``%gpusched dashboard --interactive``: the same panels in matplotlib's widget
    (hover values, pan, zoom), updated in place."""
    from ipympl.backend_nbagg import Canvas

    from nbsched.jupyter import Dashboard

    s = make_sched(start=True, num_gpus=2)
    board = Dashboard(s, autostart=False, interactive=True)
    try:
        chart = board._chart
        assert chart is not None and chart.live
        assert isinstance(board.chart_area.children[0], Canvas)
        assert "nbsched-chart" in board.chart_area.children[0]._dom_classes
        s.monitor.invalidate()
        board.refresh()
        assert len(chart.lines[0].get_xdata()) >= 1 and not chart.lines[0].get_animated()
        board.metric.value = "memory"
        assert chart.axes[0].get_ylabel() == "memory used %"
    finally:
        board.close()


def test_interactive_without_ipympl_says_what_to_install(
    make_sched: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from nbsched.jupyter import Dashboard

    monkeypatch.setitem(sys.modules, "ipympl", None)  # (as if not installed)
    with pytest.raises(ImportError, match="interactive charts need ipympl.*pip install ipympl"):
        Dashboard(make_sched(), autostart=False, interactive=True)
