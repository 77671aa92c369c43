"""The Ray executor's cost per job, against bare Ray tasks doing the same work.

    PYTHONPATH=$PWD python benchmarks/bench_ray.py [--jobs 200] [--repeat 3]

One local Ray declaring 4 GPUs serves every measurement of a run, so the figures
compare within the run:

* **bare task, reused worker**: ``@ray.remote(max_calls=0)``, ``num_gpus=1`` per call,
  running the same trivial command (``bash -c true``) as a subprocess; all tasks
  submitted at once, Ray runs 4 at a time.  The reference.
* **bare task, fresh worker**: the same with ``num_gpus=1`` in ``@ray.remote``, Ray's
  default for GPU tasks (a new worker process per task).
* **nbsched, executor="ray"**: the same command as ``add_command(..., required_gpus=1)``
  jobs, submitted at once; nbsched's queue, store, log files, exit codes.
* **packing**: eight jobs of 0.5 GPU (``sleep S``) on the 4 GPUs, with ``executor="ray"``
  and ``executor="direct"``: makespan / S (1.0 = all eight ran at once, two per GPU).
  The first Ray packing run needs more workers than the runs before warmed up (Ray
  starts them a few at a time); the third finds all eight warm.

Wall time per job = time for all jobs / number of jobs (medians of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.jobs import JobStatus
from nbsched.raycluster import cluster_for

CMD = ["bash", "-c", "true"]


def _bare(argv: list[str]) -> int:
    return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode


def bare_per_job(n: int, fresh: bool) -> float:
    if fresh:
        task = ray.remote(num_gpus=1, num_cpus=0.01, max_retries=0)(_bare)
    else:
        task = ray.remote(max_calls=0)(_bare).options(num_gpus=1, num_cpus=0.01, max_retries=0)
    ray.get([task.remote(CMD) for _ in range(4 if fresh else 8)])  # warm up
    start = time.perf_counter()
    codes = ray.get([task.remote(CMD) for _ in range(n)])
    elapsed = time.perf_counter() - start
    assert codes == [0] * n
    return elapsed / n


def nbsched_per_job(root: Path, n: int) -> float:
    cfg = SchedulerConfig(
        state_dir=root / "state-ray", executor="ray", gpu_provider="simulated", num_gpus=4
    )
    s = GPUJobScheduler(config=cfg).start()
    try:
        s.wait([s.add_command("true", required_gpus=1) for _ in range(8)], timeout=120)
        specs = [s.make_spec(command="true", required_gpus=1) for _ in range(n)]
        start = time.perf_counter()
        ids = s.submit(specs)
        rows = s.wait(ids, timeout=600)
        elapsed = time.perf_counter() - start
        assert (rows["status"] == JobStatus.SUCCEEDED.value).all(), rows["reason"].unique()
    finally:
        s.stop(kill=True)
        s.close()
    return elapsed / n


def packing(root: Path, executor: str, seconds: float) -> dict[str, float]:
    cfg = SchedulerConfig(
        state_dir=root / f"state-pack-{executor}-{time.monotonic_ns()}",
        executor=executor,
        gpu_provider="simulated",
        num_gpus=4,
    )
    s = GPUJobScheduler(config=cfg).start()
    try:
        start = time.perf_counter()
        ids = [s.add_command(f"sleep {seconds}", required_gpus=0.5) for _ in range(8)]
        rows = s.wait(ids, timeout=120)
        makespan = time.perf_counter() - start
        assert (rows["status"] == JobStatus.SUCCEEDED.value).all()
        per_gpu: dict[int, int] = {}
        for gpus in rows["gpus"]:
            for g in gpus:
                per_gpu[g] = per_gpu.get(g, 0) + 1
    finally:
        s.stop(kill=True)
        s.close()
    return {"makespan_over_job": makespan / seconds, "max_jobs_per_gpu": max(per_gpu.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sleep", type=float, default=2.0, help="job length for the packing run")
    ap.add_argument("--fresh-jobs", type=int, default=12, help="tasks for the fresh-worker run")
    ns = ap.parse_args()
    cluster_for(None, 4).connect()  # Ray as nbsched starts it: 4 GPUs declared
    with tempfile.TemporaryDirectory(prefix="nbsched-bench-ray-") as tmp:
        root = Path(tmp)
        reused, ours = [], []
        for i in range(ns.repeat):  # alternate which goes first
            if i % 2:
                ours.append(nbsched_per_job(root, ns.jobs))
                reused.append(bare_per_job(ns.jobs, fresh=False))
            else:
                reused.append(bare_per_job(ns.jobs, fresh=False))
                ours.append(nbsched_per_job(root, ns.jobs))
        pack_ray_cold = packing(root, "ray", ns.sleep)  # needs 8 workers: some start now
        packing(root, "ray", ns.sleep)
        pack_ray = packing(root, "ray", ns.sleep)  # all 8 workers warm
        pack_direct = packing(root, "direct", ns.sleep)
        fresh = [bare_per_job(ns.fresh_jobs, fresh=True)]  # last: it leaves workers dying
    ray.shutdown()
    out = {
        "jobs": ns.jobs,
        "repeat": ns.repeat,
        "bare_reused_ms_each": [round(x * 1000, 2) for x in reused],
        "nbsched_ray_ms_each": [round(x * 1000, 2) for x in ours],
        "bare_reused_ms": statistics.median(reused) * 1000,
        "bare_fresh_worker_ms": statistics.median(fresh) * 1000,
        "nbsched_ray_ms": statistics.median(ours) * 1000,
        "ratio_nbsched_to_bare_reused": statistics.median(ours) / statistics.median(reused),
        "packing_ray_first_burst": pack_ray_cold,
        "packing_ray_warm": pack_ray,
        "packing_direct": pack_direct,
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
