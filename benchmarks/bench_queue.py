"""A long queue: submitting behind busy GPUs, and the jobs table of a big sweep.

    PYTHONPATH=. python benchmarks/bench_queue.py [--jobs 5000] [--rounds 3]

(1) ``add_command`` while every GPU runs a job, on a running engine, against the same
    calls on a scheduler whose engine is not started (the store's write alone): what
    the engine adds per submission it cannot start yet.
(2) ``jobs()`` of ``--jobs`` queued jobs, against the same table built the plain way,
    one decoded job at a time (``Store.find`` + ``frames.job_row``, what ``job(id)``
    returns).

Each figure is the median of ``--rounds`` rounds, both sides measured in each round.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
from scratch import describe, scratch_dir

from nbsched import GPUJobScheduler, SchedulerConfig, frames


def _scheduler(root: Path) -> GPUJobScheduler:
    config = SchedulerConfig(state_dir=root, gpu_provider="simulated", num_gpus=4)
    return GPUJobScheduler(config=config)


def submit_us(n: int, engine: bool) -> float:
    """Microseconds per add_command, with (engine) every GPU busy on a running engine."""
    root = scratch_dir("queue-")
    s = _scheduler(root / "state")
    gate = root / "gate"
    try:
        if engine:
            s.start()
            hold = f"while [ ! -e {gate} ]; do sleep 0.05; done"
            busy = [s.add_command(hold, required_gpus=1) for _ in range(4)]
            deadline = time.monotonic() + 60
            while set(s.jobs()["status"]) != {"running"} or len(busy) != 4:
                if time.monotonic() > deadline:
                    raise RuntimeError("the 4 busy jobs did not start")
                time.sleep(0.05)
        t0 = time.perf_counter()
        for i in range(n):
            s.add_command(f"python train.py --seed {i}", required_gpus=1)
        return 1e6 * (time.perf_counter() - t0) / n
    finally:
        gate.touch()
        s.stop(kill=True)
        s.close()
        shutil.rmtree(root, ignore_errors=True)


def table_ms(n: int) -> tuple[float, float]:
    """(jobs(), the plain row-by-row table) in ms for n queued jobs."""
    root = scratch_dir("queue-")
    s = _scheduler(root / "state")
    try:
        script = root / "train.py"
        script.write_text("print('hi')\n")
        s.add_sweep(script, args=f"--seed {{1..{n}}}", limit=n)
        s.jobs()  # (warm: the page cache, pandas' first use)
        t0 = time.perf_counter()
        fast = s.jobs()
        t1 = time.perf_counter()
        plain = pd.DataFrame([frames.job_row(j) for j in s.store.find()])
        plain["exit_code"] = plain["exit_code"].astype("Int64")
        t2 = time.perf_counter()
        if len(fast) != n or list(fast["command"]) != list(plain["command"]):
            raise RuntimeError("the two tables differ")
        return 1e3 * (t1 - t0), 1e3 * (t2 - t1)
    finally:
        s.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    print(describe(), file=sys.stderr)
    busy, alone, fast, plain = [], [], [], []
    for r in range(args.rounds):
        busy.append(submit_us(args.jobs, engine=True))
        alone.append(submit_us(args.jobs, engine=False))
        f, p = table_ms(args.jobs)
        fast.append(f)
        plain.append(p)
        print(
            f"round {r + 1}: submit {busy[-1]:.0f} us (store alone {alone[-1]:.0f}); "
            f"jobs() {f:.0f} ms (row by row {p:.0f})",
            file=sys.stderr,
        )
    med = statistics.median
    print(
        f"add_command behind 4 busy GPUs: {med(busy):.0f} us a job; the store's write "
        f"alone: {med(alone):.0f} us ({med(busy) / med(alone):.2f}x)\n"
        f"jobs() of {args.jobs:,} queued jobs: {med(fast):.0f} ms; row by row: "
        f"{med(plain):.0f} ms ({med(plain) / med(fast):.1f}x slower)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
