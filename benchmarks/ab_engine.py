"""Two checkouts of nbsched, alternated run by run on the same machine: an A/B of the engine.

Each run is a fresh process that imports nbsched from one checkout, starts an engine on
4 simulated GPUs in a fresh state directory, submits the jobs with ``add_command`` and
waits for them.  Runs alternate between the checkouts (A B, B A, ...), so a machine whose
speed drifts (other work sharing it) weighs on both alike.

    tput: N ``true`` jobs: jobs/s from the first submission to the return of ``wait()``;
    eff:  N ``sleep 0.05`` jobs: N x 0.05 s / (4 x that time).

Each also reports the CPU per job of the benchmark process (engine and submitting thread)
and, where the engine has one, of its spawner process (not of the jobs).

Usage::

    git worktree add /tmp/before <commit>
    python benchmarks/ab_engine.py /tmp/before . --kind tput --jobs 300 --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import scratch


def one_run(kind: str, n: int) -> dict[str, float]:
    """One measurement, in this process, with whichever nbsched is on sys.path."""
    import pandas  # noqa: F401  (imported before timing: the first wait() would import it)

    from nbsched import GPUJobScheduler, SchedulerConfig

    d = scratch.scratch_dir("ab-")
    config = SchedulerConfig(state_dir=d / "state", gpu_provider="simulated", num_gpus=4)
    s = GPUJobScheduler(config=config).start()
    try:
        s.add_command("true")
        s.wait()
        command = "true" if kind == "tput" else "sleep 0.05"
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        s0 = _spawner_cpu(config.run_dir)
        t0 = time.perf_counter()
        for _ in range(n):
            s.add_command(command, required_gpus=1)
        s.wait(timeout=600)
        elapsed = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        spawner = _spawner_cpu(config.run_dir) - s0
    finally:
        s.stop(kill=True)
        s.close()
        shutil.rmtree(d, ignore_errors=True)
    value = n / elapsed if kind == "tput" else n * 0.05 / (4 * elapsed)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime + spawner) / n * 1e3
    return {"value": value, "cpu_ms": cpu}


def _spawner_cpu(run_dir: Path) -> float:
    """Own CPU seconds of the spawner process of ``run_dir`` (engines that have one
    start jobs there rather than in their own process), 0.0 if none runs."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) >= 2 and cmd[-2].endswith("spawner.py") and cmd[-1] == str(run_dir):
            t = proc.cpu_times()
            return float(t.user + t.system)
    return 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkouts", nargs=2, help="two folders holding an nbsched package")
    ap.add_argument("--kind", choices=["tput", "eff"], default="tput")
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(args.kind, args.jobs)))
        return 0
    dirs = [str(Path(d).resolve()) for d in args.checkouts]
    folder, _ = scratch.root()  # (chosen once: both checkouts run in the same folder)
    print(scratch.describe(), file=sys.stderr)
    results: dict[str, list[dict[str, float]]] = {d: [] for d in dirs}
    for r in range(args.runs):
        for d in dirs if r % 2 == 0 else dirs[::-1]:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    *dirs,
                    "--one",
                    "--kind",
                    args.kind,
                    "--jobs",
                    str(args.jobs),
                ],  # fmt: skip
                cwd=d,
                env={**os.environ, "PYTHONPATH": d, scratch.ENV: str(folder)},
                capture_output=True,
                text=True,
                check=True,
            )
            results[d].append(json.loads(out.stdout.strip().splitlines()[-1]))
    label = "jobs/s" if args.kind == "tput" else "efficiency"
    for d in dirs:
        values = [x["value"] for x in results[d]]
        cpu = statistics.median(x["cpu_ms"] for x in results[d])
        print(
            f"{d}: {label} median {statistics.median(values):.3f} "
            f"(min {min(values):.3f}, max {max(values):.3f}); "
            f"engine CPU {cpu:.2f} ms/job"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
