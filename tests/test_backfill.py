"""plan()'s backfill into a reservation, by estimates; reserve_after_s; the ETA words."""

from __future__ import annotations

import time

import pytest

from nbsched import SchedulerConfig
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
