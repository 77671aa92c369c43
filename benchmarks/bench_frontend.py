"""Front-end costs: one dashboard refresh, and expanding + submitting a 1,000-job sweep.

    PYTHONPATH=. python benchmarks/bench_frontend.py

Goals (issue 5): a refresh with 8 GPUs and 10 minutes of history costs <= 50 ms of the
kernel's CPU; expanding and submitting a 1,000-job sweep takes <= 1 s.  Each figure comes
with a reference measured in the same run (machines are noisy: compare ratios).
"""

from __future__ import annotations

import dataclasses
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.jupyter import Dashboard

N_GPUS = 8
HISTORY_S = 600
REFRESHES = 30
SWEEP_RUNS = 5


def _scheduler(root: Path, **overrides: object) -> GPUJobScheduler:
    fields: dict[str, object] = {
        "state_dir": root / "state",
        "gpu_provider": "simulated",
        "num_gpus": N_GPUS,
    }
    fields.update(overrides)
    return GPUJobScheduler(config=SchedulerConfig(**fields))  # type: ignore[arg-type]


def _fill_history(s: GPUJobScheduler, seconds: int) -> None:
    """Ten minutes of one-second readings: a random walk of load and memory per GPU."""
    monitor = s.monitor
    base = monitor.snapshot()
    levels = [random.random() for _ in base]
    now = time.time()
    monitor.history.clear()
    for k in range(seconds):
        levels = [min(1.0, max(0.0, x + random.gauss(0, 0.03))) for x in levels]
        reading = tuple(
            dataclasses.replace(
                g, load=levels[i], memory_used_mb=levels[i] * (g.memory_total_mb or 0)
            )
            for i, g in enumerate(base)
        )
        monitor.history.append((now - seconds + k, reading))


def bench_refresh(root: Path) -> dict[str, float]:
    s = _scheduler(root / "dash", gpu_monitor_interval_s=3600.0)
    s.start()
    try:
        script = root / "t.py"
        script.write_text("")
        done = s.add_sweep(script, args="--seed {1..10}", required_gpus=0.5)
        s.wait(done, timeout=120, progress=False)
        for g in range(N_GPUS):  # what follows stays queued: a steady job table
            s.pause_gpu(g)
        s.add_sweep(script, args="--lr {1..50}", required_gpus=0.5)
        _fill_history(s, HISTORY_S)
        board = Dashboard(s, autostart=False)
        history = s.monitor.history
        last_reading = history[-1][1]
        cpu, thread_cpu, wall = [], [], []
        for k in range(REFRESHES):
            history.append((history[-1][0] + 1.0, last_reading))  # a new second: redraw
            c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            board.refresh()
            cpu.append(time.process_time() - c0)
            thread_cpu.append(time.thread_time() - t0)
            wall.append(time.perf_counter() - w0)
            if k == 0:
                (root / "dashboard.png").write_bytes(bytes(board.chart.value))
        # Reference: the same chart drawn from scratch (a full matplotlib savefig).
        chart = board._chart
        assert chart is not None
        full = []
        for _ in range(5):
            c0 = time.process_time()
            chart.canvas.draw()
            buf = io.BytesIO()
            chart.figure.savefig(buf, format="png")
            full.append(time.process_time() - c0)
        board.close()
    finally:
        s.stop(kill=True)
        s.close()
    return {
        "refresh_cpu_ms": 1000 * statistics.median(cpu),
        "refresh_cpu_p90_ms": 1000 * sorted(cpu)[int(0.9 * len(cpu))],
        "refresh_thread_cpu_ms": 1000 * statistics.median(thread_cpu),
        "refresh_wall_ms": 1000 * statistics.median(wall),
        "full_redraw_cpu_ms": 1000 * statistics.median(full),
    }


def bench_sweep(root: Path) -> dict[str, float]:
    sweep, resubmit, loop = [], [], []
    for run in range(SWEEP_RUNS):
        s = _scheduler(root / f"sweep{run}")
        script = root / "t.py"
        script.write_text("")
        try:
            assert s.num_gpus == N_GPUS  # read the GPUs once, as a started scheduler has
            w0 = time.perf_counter()
            ids = s.add_sweep(script, args="--lr {1..10} --seed {1..100}", required_gpus=0.5)
            sweep.append(time.perf_counter() - w0)
            assert len(ids) == 1000
            w0 = time.perf_counter()
            again = s.add_sweep(script, args="--lr {1..10} --seed {1..100}", required_gpus=0.5)
            assert again.queued == []  # (every id of the sweep, none of them new)
            resubmit.append(time.perf_counter() - w0)
            if run < 2:  # reference: the same 1,000 jobs one add_job call at a time
                w0 = time.perf_counter()
                for lr in range(1, 11):
                    for seed in range(1, 101):
                        s.add_job(
                            script, args=["--x", str(lr), "--y", str(seed)], required_gpus=0.5
                        )
                loop.append(time.perf_counter() - w0)
        finally:
            s.close()
    return {
        "sweep_1000_s": statistics.median(sweep),
        "resubmit_1000_s": statistics.median(resubmit),
        "add_job_loop_1000_s": statistics.median(loop),
    }


def main() -> int:
    random.seed(1)
    with tempfile.TemporaryDirectory(prefix="nbsched-bench-") as tmp:
        root = Path(tmp)
        r = bench_refresh(root)
        w = bench_sweep(root)
    print(f"python {sys.version.split()[0]}, {N_GPUS} simulated GPUs, {HISTORY_S} s of history")
    print()
    print("| what | figure | reference (same run) |")
    print("|---|---|---|")
    print(
        f"| dashboard refresh, process CPU (median of {REFRESHES}) | "
        f"{r['refresh_cpu_ms']:.1f} ms (p90 {r['refresh_cpu_p90_ms']:.1f}; this thread "
        f"{r['refresh_thread_cpu_ms']:.1f}; wall {r['refresh_wall_ms']:.1f}) | "
        f"full matplotlib redraw of the same chart: {r['full_redraw_cpu_ms']:.1f} ms "
        f"({r['full_redraw_cpu_ms'] / r['refresh_cpu_ms']:.1f}x the refresh) |"
    )
    print(
        f"| expand + submit a 1,000-job sweep, wall (median of {SWEEP_RUNS}) | "
        f"{w['sweep_1000_s'] * 1000:.0f} ms | 1,000 add_job calls: "
        f"{w['add_job_loop_1000_s'] * 1000:.0f} ms "
        f"({w['add_job_loop_1000_s'] / w['sweep_1000_s']:.1f}x the sweep) |"
    )
    print(
        "| the same sweep again (all 1,000 deduplicated) | "
        f"{w['resubmit_1000_s'] * 1000:.0f} ms | |"
    )
    ok = r["refresh_cpu_ms"] <= 50 and w["sweep_1000_s"] <= 1.0
    print()
    print("goals met" if ok else "GOAL MISSED (refresh <= 50 ms CPU, sweep <= 1 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
