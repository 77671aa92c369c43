"""executor="slurm" against a running Slurm (scripts/slurm.sh up; SLURM_CONF set).

    PYTHONPATH=$PWD SLURM_CONF=.../slurm.conf python benchmarks/bench_slurm.py [--jobs 30]

* **added time**: ``add_command`` called -> ``sbatch`` returned, minus sbatch's own time,
  one job at a time (median over ``--jobs``).  Goal <= 20 ms.  Beside it: sbatch's own
  time, and Slurm's start latency (sbatch returned -> the job's first instruction, read
  from the clock the job prints), which nbsched does not control.
* **1,000-combination sweep**: ``add_sweep`` called -> the last of its jobs handed to
  Slurm (its Slurm id known).  Goal <= 1 s, as a job array.  The jobs are cancelled
  afterwards.
* **dashboard refresh** against Slurm's GPUs (4 GPUs, its job table): the kernel's CPU for
  one ``Dashboard.refresh()`` (median of 30).  Goal <= 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nbsched.executors.slurm as slurm_executor
from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.executors.slurm_array import read_tasks

_calls: list[tuple[str, float, float]] = []
_lock = threading.Lock()
_real = slurm_executor.slurm


def _timed(argv: Any, *args: Any, **kwargs: Any) -> str:
    t0 = time.perf_counter()
    try:
        return _real(argv, *args, **kwargs)
    finally:
        with _lock:
            _calls.append(
                (
                    argv[0] + (" " + argv[1] if argv[0] == "scontrol" else ""),
                    t0,
                    time.perf_counter(),
                )
            )


slurm_executor.slurm = _timed  # type: ignore[assignment]


def bench_added(root: Path, jobs: int) -> dict[str, float]:
    s = GPUJobScheduler(config=SchedulerConfig(state_dir=root / "added", executor="slurm"))
    s.start()
    added, own, start_latency = [], [], []
    try:
        s.add_command("true", required_gpus=1)  # warm: first job after start
        time.sleep(1.0)
        for _ in range(jobs):
            with _lock:
                _calls.clear()
            t0 = time.perf_counter()
            w0 = time.time()
            job = s.add_command('date +"first=%s.%N"', required_gpus=1)
            while True:
                with _lock:
                    sb = [c for c in _calls if c[0] == "sbatch"]
                if sb:
                    break
                time.sleep(0.0005)
            _, c0, c1 = sb[0]
            added.append(c1 - t0 - (c1 - c0))
            own.append(c1 - c0)
            returned_wall = w0 + (c1 - t0)
            s.wait([job], timeout=60, progress=False)
            text = s.logs(job)
            first = float(text.split("first=")[1].split()[0])
            start_latency.append(first - returned_wall)
    finally:
        s.stop()
        s.close()
    return {
        "added_ms": 1000 * statistics.median(added),
        "added_p90_ms": 1000 * sorted(added)[int(0.9 * len(added))],
        "sbatch_ms": 1000 * statistics.median(own),
        "start_latency_s": statistics.median(start_latency),
    }


def bench_sweep(root: Path, n: int = 1000) -> dict[str, float]:
    s = GPUJobScheduler(
        config=SchedulerConfig(state_dir=root / "sweep", executor="slurm", max_sweep_jobs=n)
    )
    s.start()
    script = root / "t.sh"
    script.write_text("true\n")
    run = s.config.run_dir
    try:
        t0 = time.perf_counter()
        ids = s.add_sweep(str(script), args=f"--seed {{1..{n}}}", required_gpus=0.01)
        stored = time.perf_counter() - t0
        while True:  # (its array's ids are written once sbatch answered)
            sids = [p.read_text().strip() for p in run.glob("*.id")]
            sids += [p.read_text().strip() for p in run.glob("*.slurm")]
            if _handed(run) >= n:
                break
            time.sleep(0.005)
        handed = time.perf_counter() - t0
    finally:
        s.stop()
        s.close()
    for k in range(0, len(sids), 200):
        subprocess.run(["scancel", *sids[k : k + 200]], check=False, capture_output=True)
    return {"sweep_jobs": len(ids), "sweep_stored_s": stored, "sweep_handed_s": handed}


def _handed(run: Path) -> int:
    """How many attempts have their Slurm id: arrays' tasks and single jobs."""
    count = len(list(run.glob("*.slurm")))
    for path in run.glob("*.id"):
        count += len(read_tasks(path.with_suffix(".tasks")))
    return count


def bench_refresh(root: Path, n: int = 30) -> dict[str, float]:
    from nbsched.jupyter.dashboard import Dashboard

    s = GPUJobScheduler(config=SchedulerConfig(state_dir=root / "dash", executor="slurm"))
    s.start()
    try:
        running = [s.add_command("sleep 30", required_gpus=g) for g in (1, 0.5, 0.25)]
        time.sleep(2.0)
        board = Dashboard(s, autostart=False)
        board.refresh()
        cpu, thread_cpu = [], []
        for _ in range(n):
            c0, t0 = time.process_time(), time.thread_time()
            board.refresh()
            cpu.append(time.process_time() - c0)
            thread_cpu.append(time.thread_time() - t0)
            time.sleep(0.1)
        board.close()
        for job in running:
            s.cancel(job)
    finally:
        s.stop()
        s.close()
    return {
        "refresh_cpu_ms": 1000 * statistics.median(cpu),
        "refresh_thread_cpu_ms": 1000 * statistics.median(thread_cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--sweep", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a = bench_added(root, args.jobs)
        w = bench_sweep(root, args.sweep)
        r = bench_refresh(root)
    print("| what | figure | goal |")
    print("|---|---|---|")
    print(
        f"| add_job -> sbatch returned, nbsched's own time (median of {args.jobs}) | "
        f"{a['added_ms']:.1f} ms (p90 {a['added_p90_ms']:.1f}) | <= 20 ms |"
    )
    print(f"| sbatch itself (median) | {a['sbatch_ms']:.1f} ms | (Slurm's) |")
    print(
        f"| sbatch returned -> job's first instruction | {a['start_latency_s']:.2f} s | (Slurm's) |"
    )
    print(
        f"| {w['sweep_jobs']:.0f}-combination sweep: stored / all handed to Slurm | "
        f"{w['sweep_stored_s']:.2f} s / {w['sweep_handed_s']:.2f} s | <= 1 s |"
    )
    print(
        f"| dashboard refresh against Slurm, process CPU (this thread) | "
        f"{r['refresh_cpu_ms']:.1f} ms ({r['refresh_thread_cpu_ms']:.1f}) | <= 50 ms |"
    )


if __name__ == "__main__":
    main()
