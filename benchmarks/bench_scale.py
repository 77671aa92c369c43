"""nbsched with a long queue: 100,000 jobs waiting behind 4 paused GPUs.

    PYTHONPATH=. python benchmarks/bench_scale.py [--jobs 100000] [--json]

One scheduler on 4 simulated GPUs, its engine started, every GPU paused; then:

- ``add_sweep`` of ``--jobs`` combinations (``--seed {1..N}``): microseconds a job;
- the process's RSS before the sweep and after it (once the engine is idle again),
  and after a ``jobs()`` of every row;
- ``jobs()`` of every row (median of ``--rounds``);
- one ``add_command`` with the queue full (median of 20, 50 ms apart);
- ``why()`` of the last queued job (median of 5, 1.1 s apart: ``why`` keeps its answer
  for a second);
- ``nbsched status`` from a shell (a subprocess on the same state directory, median of
  3), and the same command on an empty state directory: Python's and nbsched's start-up;
- an urgent job (``add_command("true", priority=-10)``), then at once ``resume_gpu(g)``:
  the time until ``job(id)["status"]`` leaves ``queued``; once right after ``add_sweep``
  returned (the engine has yet to take the 100,000 jobs in) and 3 times at the end, a GPU
  each (paused again after); the goal is for the slowest.

Only the public API (``GPUJobScheduler``, ``SchedulerConfig``, the ``nbsched``
command), so it measures whatever the engine's insides are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from scratch import describe, scratch_dir

from nbsched import GPUJobScheduler, SchedulerConfig

GPUS = 4

#: figure -> (goal, unit) of the issue: each goal is a ceiling.
GOALS = {
    "sweep_us_per_job": (30.0, "us/job"),
    "jobs_ms": (1000.0, "ms"),
    "rss_growth_mb": (150.0, "MB"),
    "add_command_ms": (1.0, "ms"),
    "why_ms": (100.0, "ms"),
    "status_ms": (100.0, "ms"),
    "urgent_start_ms": (20.0, "ms"),
}

LABELS = {
    "sweep_us_per_job": "add_sweep, per job",
    "rss_sweep_mb": "RSS growth after add_sweep (engine idle)",
    "rss_growth_mb": "RSS growth after add_sweep + jobs()",
    "jobs_ms": "jobs(), every row",
    "add_command_ms": "add_command, one job",
    "add_command_max_ms": "add_command, slowest of 20",
    "why_ms": "why() of the last queued job",
    "status_ms": "nbsched status, minus empty-dir start-up",
    "status_wall_ms": "nbsched status, wall",
    "status_empty_ms": "nbsched status, empty state dir",
    "urgent_start_ms": "urgent job: resume_gpu -> running, slowest of 4",
    "urgent_cold_ms": "... right after add_sweep returned",
}


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def settle(limit_s: float = 120.0) -> float:
    """Wait until this process (the engine's threads) is idle: under 5% of a CPU over
    half a second; returns the seconds waited."""
    me = psutil.Process()
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        c0 = sum(me.cpu_times()[:2])
        time.sleep(0.5)
        if sum(me.cpu_times()[:2]) - c0 < 0.025:
            break
    return time.monotonic() - t0


def median_ms(fn: Callable[[], object], n: int, gap_s: float = 0.0) -> tuple[float, float]:
    """(median, max) milliseconds of ``n`` calls of ``fn``, ``gap_s`` apart."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
        time.sleep(gap_s)
    return statistics.median(times), max(times)


def cli_ms(state_dir: Path, n: int) -> float:
    """Median wall milliseconds of ``nbsched status`` on ``state_dir``, in a subprocess."""
    cmd = [sys.executable, "-m", "nbsched.cli", "status", "--state-dir", str(state_dir)]
    cmd += ["--simulate", str(GPUS)]

    def run() -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    return median_ms(run, n)[0]


def urgent_ms(s: GPUJobScheduler, gpu: int) -> float:
    """Milliseconds from ``resume_gpu(gpu)`` to an urgent job no longer queued; the GPU
    is paused again after."""
    jid = s.add_command("true", priority=-10, required_gpus=1)
    t0 = time.perf_counter()
    s.resume_gpu(gpu)
    while s.job(jid)["status"] == "queued":
        time.sleep(0.0005)  # (not a busy loop: the engine needs the GIL)
        if time.perf_counter() - t0 > 60:
            raise RuntimeError(f"the urgent job {jid} did not start in 60 s")
    took = 1e3 * (time.perf_counter() - t0)
    s.pause_gpu(gpu)
    return took


def measure(n: int, rounds: int, root: Path) -> dict[str, Any]:
    state = root / "state"
    config = SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=GPUS)
    s = GPUJobScheduler(config=config)
    out: dict[str, Any] = {"jobs": n}
    try:
        s.start()
        for g in range(GPUS):
            s.pause_gpu(g)
        script = root / "train.py"
        script.write_text("import time\ntime.sleep(30)\n")
        s.jobs()  # (pandas imported, first use paid)
        settle()
        rss0 = rss_mb()
        t0 = time.perf_counter()
        ids = s.add_sweep(script, args=f"--seed {{1..{n}}}", required_gpus=1, limit=n)
        out["sweep_us_per_job"] = 1e6 * (time.perf_counter() - t0) / n
        if len(ids) != n:
            raise RuntimeError(f"add_sweep queued {len(ids)} jobs, not {n}")
        # (at once: the engine has not taken the new jobs in yet)
        out["urgent_cold_ms"] = urgent_ms(s, GPUS - 1)
        out["settle_s"] = settle()
        out["rss_sweep_mb"] = rss_mb() - rss0
        out["jobs_ms"] = median_ms(s.jobs, rounds)[0]
        out["rss_growth_mb"] = rss_mb() - rss0
        out["add_command_ms"], out["add_command_max_ms"] = median_ms(
            lambda: s.add_command("true", required_gpus=1), 20, 0.05
        )
        settle()
        out["why_ms"] = median_ms(lambda: s.why(ids[-1]), 5, 1.1)[0]
        empty = root / "empty"
        out["status_empty_ms"] = cli_ms(empty, rounds)
        out["status_wall_ms"] = cli_ms(state, rounds)
        out["status_ms"] = out["status_wall_ms"] - out["status_empty_ms"]
        settle()
        warm = [urgent_ms(s, g) for g in range(3)]
        out["urgent_warm_ms"] = warm
        out["urgent_start_ms"] = max(out["urgent_cold_ms"], *warm)
    finally:
        s.stop(kill=True)
        s.close()
    return out


def table(out: dict[str, Any]) -> str:
    lines = [
        f"| figure ({out['jobs']:,} queued jobs) | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for key, label in LABELS.items():
        value = out[key]
        goal, unit = GOALS.get(key, (None, "MB" if key.startswith("rss") else "ms"))
        met = "" if goal is None else ("yes" if value <= goal else "no")
        goal_text = "" if goal is None else f"<= {goal:,.0f} {unit}"
        lines.append(f"| {label} | {value:,.1f} {unit} | {goal_text} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs in the sweep (100000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of jobs() and status (3)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    print(describe(), file=sys.stderr)
    root = scratch_dir("scale-")
    try:
        out = measure(args.jobs, args.rounds, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["load_average"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(out))
    else:
        print(table(out))
        print(
            f"(load average {out['load_average']:.1f}; engine idle {out['settle_s']:.1f} s "
            "after the sweep)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
