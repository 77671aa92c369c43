"""How fast a job submitted from a non-dispatching process starts.

Two runs of N one-GPU jobs, submitted one after another (each after the previous
ended), on 2 simulated GPUs:

* reference: submitted from the process that dispatches (the pipe wakes it);
* other process: submitted from a second process on the same state directory that
  does not dispatch (as another kernel or the ``nbsched`` command would): the
  submission is committed to SQLite and wakes the dispatcher through the FIFO.

For each job: from just before ``add_command`` to the dispatcher's "running"
commit (``started``) and to the job's own first line (``$EPOCHREALTIME``).

    PYTHONPATH=$PWD python benchmarks/lease_latency.py [--jobs 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nbsched import GPUJobScheduler, SchedulerConfig  # noqa: E402
from nbsched.engine.lease import DispatcherLease  # noqa: E402

ENGINE = """
import sys, time
from nbsched import GPUJobScheduler, SchedulerConfig
s = GPUJobScheduler(config=SchedulerConfig(state_dir=sys.argv[1], gpu_provider="simulated",
                                           num_gpus=2)).start()
print("ready", flush=True)
sys.stdin.read()   # until the benchmark closes our stdin
s.stop(); s.close()
"""


def measure(s: GPUJobScheduler, markers: Path, n: int) -> tuple[list[float], list[float]]:
    to_running, to_first_line = [], []
    for _ in range(n):
        before = len(markers.read_text().splitlines()) if markers.exists() else 0
        t0 = time.time()
        jid = s.add_command(f'echo "$EPOCHREALTIME" >> {markers}', required_gpus=1)
        deadline = time.monotonic() + 30
        while True:
            lines = markers.read_text().splitlines() if markers.exists() else []
            if len(lines) > before:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {jid} did not start within 30 s")
            time.sleep(0.0005)
        started = s.store.get(jid).started
        assert started is not None
        to_running.append((started - t0) * 1000)
        to_first_line.append((float(lines[before]) - t0) * 1000)
        s.wait([jid], timeout=30)
    return to_running, to_first_line


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    p90 = values[int(0.9 * (len(values) - 1))]
    return f"{name:<40} median {statistics.median(values):6.1f} ms   p90 {p90:6.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbsched-bench-") as tmp:
        base = Path(tmp)
        # Reference: this process dispatches.
        cfg = SchedulerConfig(state_dir=base / "a", gpu_provider="simulated", num_gpus=2)
        s = GPUJobScheduler(config=cfg).start()
        while not s.is_dispatcher:
            time.sleep(0.01)
        ref = measure(s, base / "markers-a", args.jobs)
        s.stop()
        s.close()

        # Another process dispatches; this one only submits.
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        engine = subprocess.Popen(
            [sys.executable, "-c", ENGINE, str(base / "b")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert engine.stdout is not None and engine.stdin is not None
        assert engine.stdout.readline().strip() == "ready"
        lease = DispatcherLease(base / "b")
        while lease.holder_pid() != engine.pid:
            time.sleep(0.01)
        cfg_b = cfg.replace(state_dir=base / "b")
        other = GPUJobScheduler(config=cfg_b)  # never started: it does not dispatch
        remote = measure(other, base / "markers-b", args.jobs)
        other.close()
        engine.stdin.close()
        engine.wait(timeout=30)

    print(f"{args.jobs} jobs each, 2 simulated GPUs, one job at a time")
    print(summary("dispatcher's own process: add -> running", ref[0]))
    print(summary("dispatcher's own process: add -> job runs", ref[1]))
    print(summary("other process:            add -> running", remote[0]))
    print(summary("other process:            add -> job runs", remote[1]))
    ratio = statistics.median(remote[1]) / statistics.median(ref[1])
    print(f"ratio other/own (add -> job runs, medians): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
