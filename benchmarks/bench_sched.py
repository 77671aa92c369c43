"""The scheduling goals of issue 13, on the virtual clock (exact and repeatable).

    python3 benchmarks/bench_sched.py [--seeds 20] [--trace PATH]

For each workload: the makespan against the best of several clairvoyant list
schedules (orders that know every duration, each run greedy, strict and with
backfill) and the mean completion time against strict FIFO.  Workloads: the generated
mix (48 jobs, 1/4 to 8 GPUs, lognormal 0.3-4 s, all at once, no estimates); the same
mix again with estimates learned from the first run (the median of the same
command's earlier runs: its one earlier run; durations vary ~10 % between runs); the
Tiresias 60-job trace (times / 100, arrivals as in the trace).  Every time here is
1/100 of a real one (the trace's 121-1,800 s runs take 1.2-18 s), so the engine's
default reserve_after_s=600 s is 6 s; the reservation is also run at once (0) and
after 4 median run times of the workload.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
from pathlib import Path

from nbsched.backfill import Policy
from nbsched.simulation import SimJob, figures, generated_mix, read_trace, replay

#: The engine's default reserve_after_s (600 s) on the workloads' 1/100 time scale.
DEFAULT_RESERVE = 6.0
TRACE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "traces" / "tiresias_60_job.csv"
ORDERS = {
    "longest": lambda j: -(j.duration or 0),
    "widest": lambda j: (-j.required_gpus, -(j.duration or 0)),
    "area": lambda j: -j.required_gpus * (j.duration or 0),
    "given": lambda j: j.seq,
    "shortest": lambda j: j.duration or 0,
}


def clairvoyant(jobs: list[SimJob], gpus: int = 8) -> float:
    best = math.inf
    for key in ORDERS.values():
        ordered = sorted(jobs, key=key)
        known = [
            dataclasses.replace(j, seq=i, estimate_s=j.duration, estimate_source="time limit")
            for i, j in enumerate(ordered)
        ]
        for policy in (Policy("fifo"), Policy(reserve_after_s=math.inf), Policy()):
            best = min(best, figures(replay(known, gpus, policy)).makespan)
    return best


def again(jobs: list[SimJob], seed: int) -> list[SimJob]:
    """The same jobs run again (~10 % slower or faster), their estimates learned."""
    rng = random.Random(seed)
    return [
        dataclasses.replace(
            j, duration=round((j.duration or 0) * math.exp(rng.gauss(0, 0.1)), 3),
            estimate_s=j.duration, estimate_source="command",
        )
        for j in jobs
    ]  # fmt: skip


def ratios(jobs: list[SimJob], policy: Policy) -> tuple[float, float]:
    ours = figures(replay(jobs, 8, policy))
    fifo = figures(replay(jobs, 8, Policy("fifo")))
    return ours.makespan / clairvoyant(jobs), ours.mean_completion / fifo.mean_completion


def packing(seed: int) -> tuple[float, float]:
    """GPU allocation (utilisation) of the engine's policy with fractions packed, vs a
    plain best-fit that holds nothing for anyone (greedy, dispatch order)."""
    mix = generated_mix(48, seed)
    ours = figures(replay(mix, 8, Policy(reserve_after_s=DEFAULT_RESERVE)))
    plain = figures(replay(mix, 8, Policy(reserve_after_s=math.inf, order="fifo")))
    return ours.utilisation, plain.utilisation


def policies(median: float) -> list[tuple[str, Policy]]:
    return [
        ("at once", Policy()),
        ("default", Policy(reserve_after_s=DEFAULT_RESERVE)),
        ("4x median", Policy(reserve_after_s=4 * median)),
    ]


def real_run(seed: int, reserve_after_s: float) -> tuple[float, float, float, float]:
    """The mix of ``seed`` as real ``sleep`` jobs through the engine (8 simulated GPUs):
    (makespan, mean completion) real, then the simulator's for the same policy."""
    import tempfile

    from nbsched import GPUJobScheduler, SchedulerConfig

    mix = generated_mix(48, seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = SchedulerConfig(
            state_dir=Path(tmp), gpu_provider="simulated", num_gpus=8,
            simulated_gpus_file=None, reserve_after_s=reserve_after_s,
        )  # fmt: skip
        with GPUJobScheduler(config=config) as s:
            # (all queued before the engine starts: "all at once")
            ids = [s.add_command(f"sleep {j.duration}", required_gpus=j.required_gpus) for j in mix]
            s.start()
            done = s.wait(ids, timeout=600, progress=False)
    first = done["submitted"].min()
    ends = (done["ended"] - first).dt.total_seconds()
    sim = figures(replay(mix, 8, Policy(reserve_after_s=reserve_after_s)))
    return ends.max(), ends.mean(), sim.makespan, sim.mean_completion


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--real", action="store_true", help="also run the mix as real sleep jobs")
    ns = ap.parse_args()
    if ns.real:
        for reserve in (0.0, 600.0):
            real_ms, real_mc, sim_ms, sim_mc = real_run(0, reserve)
            print(
                f"real sleep jobs, reserve_after_s={reserve:g}: makespan {real_ms:.2f} s "
                f"(simulator {sim_ms:.2f}, {real_ms / sim_ms - 1:+.1%}), mean completion "
                f"{real_mc:.2f} s (simulator {sim_mc:.2f}, {real_mc / sim_mc - 1:+.1%})"
            )
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in range(ns.seeds):
        mix = generated_mix(48, seed)
        median = statistics.median(j.duration or 0 for j in mix)
        second = again(mix, seed + 1000)
        for name, policy in policies(median):
            rows.setdefault(f"mix, no estimates, reserve {name}", []).append(ratios(mix, policy))
            rows.setdefault(f"mix, learned, reserve {name}", []).append(ratios(second, policy))
        rows.setdefault("allocation: default / plain best-fit", []).append(packing(seed))
    if Path(ns.trace).exists():
        trace = read_trace(ns.trace, scale=100, max_gpus=8)
        median = statistics.median(j.duration or 0 for j in trace)
        exact = [
            dataclasses.replace(j, estimate_s=j.duration, estimate_source="time limit")
            for j in trace
        ]
        for name, policy in policies(median):
            rows[f"tiresias, no estimates, reserve {name}"] = [ratios(trace, policy)]
            rows[f"tiresias, time limits, reserve {name}"] = [ratios(exact, policy)]
    print(f"{'workload':<44} {'makespan/clairvoyant':>22} {'mean compl./FIFO':>18}")
    for name, values in rows.items():
        a, b = zip(*values, strict=True)
        if name.startswith("allocation"):
            rate = [x / y for x, y in values]
            print(f"{name:<44} rate ratio mean {statistics.mean(rate):.3f} min {min(rate):.3f}")
            continue
        span = f"{statistics.mean(a):10.3f} (max {max(a):.3f})"
        print(f"{name:<44} {span} {statistics.mean(b):8.3f} (max {max(b):.3f})")


if __name__ == "__main__":
    main()
