"""The replay on a virtual clock (nbsched.simulation) through the real plan(): every
generated workload keeps the promises of the policy (docs/scheduling.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from nbsched.backfill import Policy
from nbsched.simulation import SimJob, figures, read_trace, replay

DATA = Path(__file__).parent / "data"


@st.composite
def workloads(draw: st.DrawFn) -> list[SimJob]:
    """Up to 20 jobs on 4 GPUs, arriving over 10 s, each with its exact run time as
    its estimate (a time limit or a learned one), or none."""
    n = draw(st.integers(1, 20))
    arrivals = sorted(
        draw(st.lists(st.sampled_from([0.0, 0.0, 1.5, 4.0, 9.0]), min_size=n, max_size=n))
    )
    jobs = []
    for i, submit in enumerate(arrivals):
        need = draw(st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 4.0]))
        run = draw(st.floats(0.1, 5.0)).__round__(2)
        source = draw(st.sampled_from(["time limit", "command", None]))
        estimate = None if source is None else run
        jobs.append(SimJob(str(i + 1), need, submit, run, estimate, source, seq=i))
    return jobs


@settings(max_examples=200, deadline=None)
@given(workloads(), st.sampled_from([0.0, 2.0]))
def test_the_policy_keeps_its_promises(jobs: list[SimJob], reserve_after_s: float) -> None:
    """No GPU is over-booked; no job waits, once first in line, past the starvation
    bound (reserve_after_s + the longest run), estimates or none; with exact estimates
    for all, the makespan is never more than strict FIFO's + the longest run."""
    policy = Policy("backfill", reserve_after_s=reserve_after_s)
    result = replay(jobs, 4, policy)
    assert result.peak_booking <= 1.0 + 1e-9
    longest = max(j.duration or 0.0 for j in jobs)
    for out in result.outcomes.values():
        assert out.start is not None and out.end is not None  # (all ran)
        if out.first_in_line is not None:
            assert out.start <= out.first_in_line + reserve_after_s + longest + 1e-9
    if all(j.estimate_s is not None for j in jobs):
        fifo = figures(replay(jobs, 4, Policy("fifo")))
        assert figures(result).makespan <= fifo.makespan + longest + 1e-9


def test_backfill_into_the_reservation_beats_waiting_for_it() -> None:
    """An 8-GPU job waits for a long 1-GPU job; short jobs with time limits run on the
    other GPUs meanwhile (EASY would leave them idle)."""
    jobs = [
        SimJob("1", 1.0, 0.0, 10.0, 10.0, "time limit", seq=0),
        SimJob("2", 8.0, 0.0, 1.0, 1.0, "time limit", seq=1),
        *[SimJob(str(i), 1.0, 0.0, 2.0, 2.0, "time limit", seq=i) for i in range(3, 17)],
    ]
    easy = replay(jobs, 8, Policy("easy")).outcomes
    backfill = replay(jobs, 8, Policy("backfill")).outcomes
    assert easy["3"].start == 11.0 and backfill["3"].start == 0.0
    assert backfill["2"].start == easy["2"].start == 10.0  # (not delayed by them)


def test_jobs_without_estimates_do_not_backfill_into_the_reservation() -> None:
    jobs = [
        SimJob("1", 1.0, 0.0, 10.0, 10.0, "time limit", seq=0),
        SimJob("2", 8.0, 0.0, 1.0, seq=1),
        SimJob("3", 1.0, 0.0, 2.0, seq=2),
    ]
    assert replay(jobs, 8, Policy("backfill")).outcomes["3"].start == 11.0


def test_read_the_tiresias_trace_and_a_jobs_table(tmp_path: Path) -> None:
    jobs = read_trace(DATA / "tiresias_15_job.csv", scale=100)
    assert len(jobs) == 15 and jobs[0].submit == 0.0 and jobs[1].required_gpus == 8.0
    table = tmp_path / "jobs.csv"
    table.write_text(
        "id,status,required_gpus,submitted,started,ended,priority\n"
        "1,succeeded,1,2026-01-01T00:00:00,2026-01-01T00:00:01,2026-01-01T00:00:11,0\n"
        "2,queued,2,2026-01-01T00:00:05,,,0\n"
    )
    (only,) = read_trace(table)
    assert (only.id, only.required_gpus, only.duration) == ("1", 1.0, 10.0)


def test_nbsched_simulate_prints_the_figures(tmp_path: Path) -> None:
    env = {**os.environ, "NBSCHED_HOME": str(tmp_path / "state")}
    trace = str(DATA / "tiresias_15_job.csv")
    run = [sys.executable, "-m", "nbsched.cli", "simulate", trace, "--gpus", "8"]
    out = subprocess.run([*run, "--scale", "100"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for label in ("makespan", "mean completion", "p95 completion", "mean wait", "p95 wait"):
        assert label in out.stdout
    assert "GPU utilisation" in out.stdout
    fifo = subprocess.run(
        [*run, "--policy", "fifo", "--json"], env=env, capture_output=True, text=True
    )
    assert json.loads(fifo.stdout)["jobs"] == 15
    bad = subprocess.run([*run, "--policy", "sjf"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "sjf" in bad.stderr
