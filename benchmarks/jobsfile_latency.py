"""How fast a line appended to the jobs file is picked up and started; screen vs direct.

Run: ``PYTHONPATH=. python benchmarks/jobsfile_latency.py [--lines 100]``

1. Appends ``--lines`` lines to a watched jobs file, one at a time at random gaps
   (0-50 ms, so they land at every phase of the 0.1 s poll), and reports the time
   from the append to the job being stored (picked up) and to its start, as
   percentiles.  Reference, in the same run: ``add_command`` (API) -> start.
2. Start -> recorded end of trivial jobs with the direct and the screen
   executor (what a screen session costs).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from nbsched import GPUJobScheduler, SchedulerConfig


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def show(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"{name:<38} p50 {pct(ms, 0.5):7.1f} ms   p99 {pct(ms, 0.99):7.1f} ms   "
        f"max {max(ms):7.1f} ms   (n={len(ms)})"
    )


def jobs_file(tmp: Path, lines: int) -> tuple[list[float], list[float], list[float]]:
    script = tmp / "job.sh"
    script.write_text("exit 0\n")
    path = tmp / "jobs.txt"
    path.write_text("# benchmark\n")
    cfg = SchedulerConfig(
        state_dir=tmp / "state", gpu_provider="simulated", num_gpus=4, jobs_file=str(path)
    )
    s = GPUJobScheduler(config=cfg).start()
    rng = random.Random(1)
    written: dict[str, float] = {}
    try:
        for i in range(lines):
            time.sleep(rng.uniform(0.0, 0.05))
            with path.open("a") as fh:
                fh.write(f"0,job.sh,,--n {i},\n")
                fh.flush()
                written[f"--n {i}"] = time.time()
        deadline = time.monotonic() + 60
        while len(s.store.find()) < lines and time.monotonic() < deadline:
            time.sleep(0.05)
        s.wait(timeout=60)
        picked, started = [], []
        for job in s.store.find():
            t0 = written[" ".join(job.spec.args)]
            picked.append(job.submitted - t0)
            assert job.started is not None
            started.append(job.started - t0)
        api = []
        for _ in range(lines // 2):
            time.sleep(rng.uniform(0.0, 0.02))
            jid = s.add_command("true", required_gpus=1)
            s.wait([jid], timeout=30)
            job = s.store.get(jid)
            assert job.started is not None
            api.append(job.started - job.submitted)
    finally:
        s.stop(kill=True)
        s.close()
    return picked, started, api


def executor(tmp: Path, name: str, n: int) -> list[float]:
    cfg = SchedulerConfig(
        state_dir=tmp / f"state-{name}", gpu_provider="simulated", num_gpus=1, executor=name
    )
    s = GPUJobScheduler(config=cfg).start()
    to_end = []
    try:
        for _ in range(n):
            jid = s.add_command("true", required_gpus=1)
            s.wait([jid], timeout=30)
            job = s.store.get(jid)
            assert job.started is not None and job.ended is not None
            assert job.status.value == "succeeded"
            to_end.append(job.ended - job.started)
    finally:
        s.stop(kill=True)
        s.close()
    return to_end


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--jobs", type=int, default=30)
    ns = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        picked, started, api = jobs_file(tmp, ns.lines)
        show("jobs file: append -> stored", picked)
        show("jobs file: append -> started", started)
        show("reference: add_command -> started", api)
        print(
            f"ratio of medians, append->started / add_command->started: "
            f"{statistics.median(started) / statistics.median(api):.0f}x"
        )
        for name in ("direct", "screen"):
            to_end = executor(tmp, name, ns.jobs)
            show(f"{name}: `true` start -> end recorded", to_end)
        print("(start -> end includes spawning the wrapper, and for screen the session)")


if __name__ == "__main__":
    main()
