"""plan()'s backfill into a reservation, by estimates; reserve_after_s; the ETA words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.allocation import GpuState, plan
from nbsched.backfill import Policy, Running
from nbsched.reasons import explain
from nbsched.simulation import SimJob

NOW = 1000.0


def q(i: int, need: float, estimate: float | None = None, source: str | None = None) -> SimJob:
    return SimJob(str(i), need, 0.0, None, estimate, source, seq=i)


#: Two GPUs: GPU 0 runs job 9 until NOW + 100 (time limit), GPU 1 is free.
GPUS = [GpuState(0, 1.0), GpuState(1, 0.0)]
RUN = [Running("9", (0,), 1.0, NOW - 50, 150.0, "time limit")]


def placed(queue: list[SimJob], policy: Policy = Policy()) -> dict[str, tuple[int, ...]]:
    decision = plan(queue, GPUS, NOW, running=RUN, policy=policy)
    return {p.job_id: p.gpus for p in decision.placements}


def test_a_job_that_ends_before_the_reserved_start_uses_the_reserved_gpu() -> None:
    decision = plan([q(1, 2.0), q(2, 1.0, 60.0, "time limit")], GPUS, NOW, running=RUN)
    assert decision.reserved == {0: "1", 1: "1"}
    assert decision.head_eta is not None and decision.head_eta.at == NOW + 100
    assert {p.job_id: p.gpus for p in decision.placements} == {"2": (1,)}


def test_no_estimate_or_one_too_long_keeps_off_the_reservation() -> None:
    assert placed([q(1, 2.0), q(2, 1.0)]) == {}
    assert placed([q(1, 2.0), q(2, 1.0, 120.0, "time limit")]) == {}
    # a learned estimate counts with the margin: 90 s * 1.25 ends after the start
    assert placed([q(1, 2.0), q(2, 1.0, 90.0, "command")]) == {}
    assert placed([q(1, 2.0), q(2, 1.0, 90.0, "time limit")]) == {"2": (1,)}
    assert placed([q(1, 2.0), q(2, 1.0, 90.0, "command")], Policy(margin=0.0)) == {"2": (1,)}


def test_easy_and_fifo_never_use_the_reservation() -> None:
    queue = [q(1, 2.0), q(2, 1.0, 1.0, "time limit")]
    assert placed(queue, Policy("easy")) == {}
    assert placed(queue, Policy("fifo")) == {}


def test_reserve_after_s_holds_gpus_only_once_the_job_has_waited() -> None:
    queue = [q(1, 2.0), q(2, 1.0)]
    policy = Policy(reserve_after_s=30.0)
    early = plan(queue, GPUS, NOW, running=RUN, policy=policy, head_since=("1", NOW - 10))
    assert early.reserved == {} and [p.job_id for p in early.placements] == ["2"]
    late = plan(queue, GPUS, NOW, running=RUN, policy=policy, head_since=("1", NOW - 31))
    assert late.reserved == {0: "1", 1: "1"} and late.placements == ()


def test_a_job_keeps_the_gpus_held_for_it_unless_others_are_free_now() -> None:
    """Held GPUs only drain: a job needing 1 GPU, with both GPUs half taken by jobs of
    no known end, keeps GPU 1 held for it although GPU 0 now has more room (moving
    would let GPU 1 take new work, and so on, with no bound on its wait)."""
    gpus = [GpuState(0, 0.25), GpuState(1, 0.5)]
    first = plan([q(1, 1.0)], gpus, NOW)
    assert first.reserved == {0: "1"}  # (the most room)
    moved = [GpuState(0, 0.5), GpuState(1, 0.25)]
    assert plan([q(1, 1.0)], moved, NOW, reserved_before={0: "1"}).reserved == {0: "1"}
    assert plan([q(1, 1.0)], moved, NOW).reserved == {1: "1"}
    free = [GpuState(0, 0.5), GpuState(1, 0.0)]  # (GPU 1 empty: it starts there)
    assert [p.gpus for p in plan([q(1, 1.0)], free, NOW, reserved_before={0: "1"}).placements] == [
        (1,)
    ]


def test_the_eta_says_when_and_why() -> None:
    words = explain([q(1, 2.0), q(2, 1.0, 500.0, "hint")], GPUS, NOW, running=RUN)
    clock = time.strftime("%H:%M:%S", time.localtime(NOW + 100))
    assert words["1"].endswith(f"; starts ≈ {clock}, when job 9 ends (time limit)")
    assert words["2"].startswith("job 1 comes first (needs 2 free GPUs; GPU(s) 0,1 held")
    assert "only if its estimate says it ends before then" in words["2"]


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), "soon"])
def test_reserve_after_s_is_checked(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="reserve_after_s"):
        SchedulerConfig(reserve_after_s=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy='sjf'"):
        Policy("sjf")


# -- through a real engine: the reservation's time in why(), jobs()' eta, simulate() --


def _until(pred: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = pred()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_why_says_from_when_gpus_are_held_and_jobs_pass_until_then(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """With reserve_after_s, a blocked job's GPUs are held only once it has been first
    in line that long: why() says from when (by the engine's own clock, in this
    process; from its submission in another), and a job behind it starts meanwhile."""
    engine = make_sched(num_gpus=2, reserve_after_s=300, start=True)
    gate = tmp_path / "gate"
    hold = engine.add_command(f"while [ ! -e {gate} ]; do sleep 0.05; done", required_gpus=1)
    _until(lambda: engine.job(hold)["status"] == "running", "the first job to start")
    big = engine.add_command("true", required_gpus=2)
    small = engine.add_command(f"while [ ! -e {gate} ]; do sleep 0.05; done", required_gpus=1)
    try:
        _until(lambda: engine.job(small)["status"] == "running", "the job behind to pass")
        since = _until(lambda: engine._dispatcher and engine._dispatcher.head_since, "a head")
        assert since[0] == big
        clock = time.strftime("%H:%M:%S", time.localtime(since[1] + 300))
        assert engine.why(big) == (
            f"needs 2 free GPUs; GPUs are held for it from {clock} (reserve_after_s)"
        )
        other = GPUJobScheduler(config=engine.config)  # (no engine of its own)
        try:
            submitted = engine.job(big)["submitted"].timestamp()
            clock = time.strftime("%H:%M:%S", time.localtime(submitted + 300))
            assert other.why(big).startswith(
                f"needs 2 free GPUs; GPUs are held for it from {clock}"
            )
        finally:
            other.close()
    finally:
        gate.touch()


def test_simulate_the_queue_as_it_is(make_sched: Callable[..., GPUJobScheduler]) -> None:
    """No engine runs: simulate() says the jobs that fit start now, and gives no time
    to one waiting for GPUs whose jobs have no estimate (nor to any end)."""
    s = make_sched(num_gpus=2, reserve_after_s=0)
    a = s.add_command("sleep 1", required_gpus=1)
    b = s.add_command("sleep 1", required_gpus=1)
    c = s.add_command("sleep 1", required_gpus=2)
    before = time.time()
    table = s.simulate().set_index("id")
    assert list(table.columns) == ["status", "required_gpus", "start", "end", "estimate_source"]
    for job in (a, b):
        assert before - 1 <= table.loc[job, "start"].timestamp() <= time.time() + 1
        assert pd.isna(table.loc[job, "end"])  # (no estimate: it never ends here)
    assert pd.isna(table.loc[c, "start"])
    assert pd.isna(s.jobs()["eta"]).all()  # (no engine: nothing starts)
    assert len(s.simulate(first=1)) == 1
    with pytest.raises(ValueError, match="first=-1"):
        s.simulate(first=-1)


def test_eta_of_queued_jobs_in_jobs(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """jobs() and queue() give queued jobs an eta (NaT where it depends on a job with no
    estimate), a time column like the others; the other jobs have none."""
    s = make_sched(num_gpus=2, reserve_after_s=0, start=True)
    gate = tmp_path / "gate"
    hold = s.add_command(f"while [ ! -e {gate} ]; do sleep 0.05; done", required_gpus=1)
    _until(lambda: s.job(hold)["status"] == "running", "the first job to start")
    big = s.add_command("true", required_gpus=2)
    try:
        table = s.jobs().set_index("id")
        assert str(table["eta"].dtype).startswith("datetime64[ns,")
        assert pd.isna(table.loc[big, "eta"]) and pd.isna(table.loc[hold, "eta"])
        assert list(s.queue()["id"]) == [big] and pd.isna(s.queue()["eta"]).all()
        (row,) = s.simulate().query("id == @hold").itertuples()
        assert abs(row.start.timestamp() - s.job(hold)["started"].timestamp()) < 1e-3
    finally:
        gate.touch()


def test_nbsched_simulate_reads_a_jobs_table(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    s = make_sched(num_gpus=2, start=True)
    ids = [s.add_command("sleep 0.2", required_gpus=g) for g in (1, 0.5, 2)]
    s.wait(ids, timeout=60, progress=False)
    table = tmp_path / "jobs.csv"
    s.jobs().to_csv(table, index=False)
    env = {**os.environ, "NBSCHED_HOME": str(tmp_path / "elsewhere")}
    out = subprocess.run(
        [sys.executable, "-m", "nbsched.cli", "simulate", str(table), "--gpus", "2", "--json"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["jobs"] == found["finished"] == 3
    assert found["makespan"] >= 0.4  # (the 2-GPU job waits for the others)


def test_why_gives_the_expected_start_and_its_grounds(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """A real engine, a running job with a 300 s time limit: why() of the 2-GPU job
    waiting for it says when it should start and why then; a job behind it whose hint
    ends before then starts on a GPU held for it, one whose hint does not waits."""
    s = make_sched(num_gpus=2, reserve_after_s=0, start=True)
    gate = tmp_path / "gate"
    loop = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    hold = s.add_command(loop, required_gpus=1, time_limit=300)
    try:
        _until(lambda: s.job(hold)["status"] == "running", "the first job to start")
        big = s.add_command("true", required_gpus=2)
        small = s.add_command("true", required_gpus=1, expected_s=400)
        short = s.add_command(loop, required_gpus=1, expected_s=60)
        _until(lambda: s.job(short)["status"] == "running", "the short job to backfill")
        assert s.job(small)["status"] == "queued"
        started = s.job(hold)["started"].timestamp()
        clock = time.strftime("%H:%M:%S", time.localtime(started + 300))
        grounds = f"starts ≈ {clock}, when job {hold} ends (time limit)"
        assert s.why(big) == f"needs 2 free GPUs; GPU(s) 0,1 held for it; {grounds}"
        assert s.why(small) == (
            f"job {big} comes first (needs 2 free GPUs; GPU(s) 0,1 held for it; {grounds}); "
            "it needs 1 free GPU, and may use the GPUs that job holds only if its estimate "
            "says it ends before then"
        )
        eta = s.jobs().set_index("id")["eta"]
        assert abs(eta[big].timestamp() - (started + 300)) < 1.0
    finally:
        gate.touch()


def test_simulate_uses_the_estimates_learned_from_earlier_runs(
    make_sched: Callable[..., GPUJobScheduler],
) -> None:
    """A command that ran before is expected to run about as long again: simulate()
    gives the queued copies of it an end, one after the other on the one GPU."""
    s = make_sched(num_gpus=1, start=True)
    s.wait([s.add_command("sleep 0.3") for _ in range(2)], timeout=60, progress=False)
    s.stop()
    again = [s.add_command("sleep 0.3") for _ in range(2)]
    table = s.simulate().set_index("id")
    assert list(table.loc[again, "estimate_source"]) == ["command", "command"]
    first, second = (table.loc[j] for j in again)
    run = (first["end"] - first["start"]).total_seconds()
    assert 0.25 <= run <= 5.0  # (the learned run time: ~0.3 s and the start-up)
    assert second["start"] == first["end"]


def test_why_plans_with_the_learned_estimates_as_the_engine_does(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """A command that ran before has a learned estimate; the engine backfills a queued
    copy of it onto a GPU held for a blocked job if that estimate ends in time, and
    why() (here with the engine stopped, so nothing starts) says so too, rather than
    planning the job as one with no estimate."""
    s = make_sched(num_gpus=2, reserve_after_s=0, start=True)
    s.wait([s.add_command("sleep 0.1") for _ in range(2)], timeout=60, progress=False)
    gate = tmp_path / "gate"
    hold = s.add_command(
        f"while [ ! -e {gate} ]; do sleep 0.05; done", required_gpus=1, time_limit=300
    )
    try:
        _until(lambda: s.job(hold)["status"] == "running", "the first job to start")
        s.stop()
        big = s.add_command("true", required_gpus=2)
        short = s.add_command("sleep 0.1", required_gpus=1)
        unknown = s.add_command("sleep 0.2", required_gpus=1)
        assert s.job(short)["estimate_source"] == "command"
        assert s.why(short).startswith("it fits now (GPU 1)")
        assert s.why(unknown).startswith(f"job {big} comes first (")
    finally:
        gate.touch()
