"""Tests of nbsched.allocation: the pure plan() on hand-built states."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nbsched.allocation import (
    GpuState,
    Plan,
    booked_share,
    could_start,
    explain,
    gpu_states,
    most_room,
    plan,
    queue_key,
)
from nbsched.gpus.base import GpuSnapshot
from nbsched.jobs import Job, JobSpec, JobStatus

NOW = 1000.0


def job(
    seq: int,
    req: float,
    priority: int = 0,
    allowed: Sequence[int] | None = None,
    not_before: float | None = None,
) -> Job:
    spec = JobSpec(
        kind="command",
        command="true",
        required_gpus=req,
        priority=priority,
        allowed_gpus=tuple(allowed) if allowed is not None else None,
    )
    return Job(
        id=str(seq),
        seq=seq,
        status=JobStatus.QUEUED,
        spec=spec,
        submitted=float(seq),
        not_before=not_before,
    )


def gpus(
    *allocated: float, paused: Sequence[int] = (), blocked: Sequence[int] = ()
) -> list[GpuState]:
    return [
        GpuState(i, a, paused=i in paused, blocked="busy elsewhere" if i in blocked else None)
        for i, a in enumerate(allocated)
    ]


def run(queue: Sequence[Job], states: Sequence[GpuState], now: float = NOW) -> Plan:
    return plan(sorted(queue, key=queue_key), states, now, 0.01)


def placed(p: Plan) -> dict[str, tuple[int, ...]]:
    return {pl.job_id: pl.gpus for pl in p.placements}


# ------------------------------------------------------------------ packing


def test_fraction_goes_to_the_fullest_gpu_that_fits() -> None:
    assert placed(run([job(1, 0.5)], gpus(0.5, 0.25, 0.0))) == {"1": (0,)}
    # 0.6 does not fit on GPU 0 (0.5 free); GPU 1 (0.75 free) is fuller than GPU 2
    assert placed(run([job(1, 0.6)], gpus(0.5, 0.25, 0.0))) == {"1": (1,)}
    # ties go to the lower index
    assert placed(run([job(1, 0.3)], gpus(0.0, 0.0))) == {"1": (0,)}


def test_fractions_pack_into_one_gpu_within_a_plan() -> None:
    queue = [job(i, 0.25) for i in range(1, 6)]
    got = placed(run(queue, gpus(0.0, 0.0, 0.0)))
    assert got == {"1": (0,), "2": (0,), "3": (0,), "4": (0,), "5": (1,)}


def test_thirds_fill_a_gpu_despite_float_rounding() -> None:
    got = placed(run([job(i, 1 / 3) for i in range(1, 4)], gpus(0.0)))
    assert len(got) == 3


def test_whole_gpu_needs_an_empty_one() -> None:
    assert placed(run([job(1, 1)], gpus(0.01, 0.5, 0.0))) == {"1": (2,)}
    assert placed(run([job(1, 1)], gpus(0.01, 0.5))) == {}


def test_n_gpus_need_n_empty_gpus() -> None:
    assert placed(run([job(1, 2)], gpus(0.0, 0.5, 0.0, 0.0))) == {"1": (0, 2)}
    assert placed(run([job(1, 3)], gpus(0.0, 0.5, 0.0, 0.0))) == {"1": (0, 2, 3)}
    assert placed(run([job(1, 3)], gpus(0.0, 0.5, 0.0, 0.01))) == {}
    assert placed(run([job(1, 4)], gpus(0, 0, 0, 0))) == {"1": (0, 1, 2, 3)}


def test_fractions_leave_whole_gpus_free_for_multi_gpu_jobs() -> None:
    queue = [job(1, 0.5), job(2, 0.5), job(3, 0.25), job(4, 2)]
    got = placed(run(queue, gpus(0, 0, 0)))
    assert got["1"] == got["2"] == (0,)
    assert got["3"] == (1,)
    assert "4" not in got  # only GPU 2 is empty


def test_allowed_gpus() -> None:
    assert placed(run([job(1, 0.5, allowed=[2, 3])], gpus(0.5, 0, 0, 0))) == {"1": (2,)}
    assert placed(run([job(1, 2, allowed=[1, 3])], gpus(0, 0, 0, 0))) == {"1": (1, 3)}
    assert placed(run([job(1, 1, allowed=[0])], gpus(0.5, 0))) == {}


def test_paused_and_blocked_gpus_get_nothing() -> None:
    states = gpus(0, 0, 0, paused=[0], blocked=[1])
    assert placed(run([job(1, 0.5), job(2, 0.5), job(3, 0.5)], states)) == {
        "1": (2,),
        "2": (2,),
    }
    assert placed(run([job(1, 1)], gpus(0, 0, paused=[0], blocked=[1]))) == {}


def test_thresholds_from_snapshots() -> None:
    def snap(i: int, mem: float | None, load: float | None) -> GpuSnapshot:
        return GpuSnapshot(
            index=i,
            uuid=None,
            name="g",
            memory_used_mb=None,
            memory_total_mb=100.0,
            load=None,
            external_memory_used_mb=mem,
            external_load=load,
        )

    snaps = [snap(0, 95.0, 0.0), snap(1, 0.0, 0.95), snap(2, 80.0, 0.8), snap(3, None, None)]
    states = gpu_states(snaps, {2: 0.5}, paused=[3], memory_threshold=0.8, load_threshold=0.8)
    assert [s.index for s in states] == [0, 1, 2, 3]
    assert states[0].blocked is not None and "memory" in states[0].blocked
    assert states[1].blocked is not None and "load" in states[1].blocked
    assert states[2].blocked is None and states[2].allocated == 0.5  # at the threshold is fine
    assert states[3].blocked is None and states[3].paused  # unknown readings do not block
    assert placed(run([job(1, 0.5), job(2, 0.5)], states)) == {"1": (2,)}


# ------------------------------------------------------------------ order


def test_priority_first_then_fifo() -> None:
    queue = [
        job(1, 1, priority=5),
        job(2, 1, priority=0),
        job(3, 1, priority=0),
        job(4, 1, priority=-1),
    ]
    assert [j.id for j in sorted(queue, key=queue_key)] == ["4", "2", "3", "1"]
    got = placed(run(queue, gpus(0, 0)))
    assert got == {"4": (0,), "2": (1,)}


def test_back_off_is_skipped_until_due() -> None:
    queue = [job(1, 1, not_before=NOW + 5), job(2, 1, not_before=NOW + 3), job(3, 1)]
    p = run(queue, gpus(0, 0, 0))
    assert placed(p) == {"3": (0,)}
    assert p.next_wakeup == NOW + 3
    p = run(queue, gpus(0, 0, 0), now=NOW + 5)
    assert placed(p) == {"1": (0,), "2": (1,), "3": (2,)}
    assert p.next_wakeup is None


# ------------------------------------------------------------------ reservation (no starvation)


def test_blocked_head_job_reserves_and_backfill_stays_outside() -> None:
    # GPUs 0 and 3 are half used; the head job needs 3 whole GPUs.
    states = gpus(0.5, 0.0, 0.0, 0.5)
    queue = [job(1, 3), job(2, 1), job(3, 0.25), job(4, 0.5), job(5, 0.5)]
    p = run(queue, states)
    # It holds the 3 GPUs closest to being free: 1, 2 (empty) and 0 (the lower of the ties).
    assert dict(p.reserved) == {0: "1", 1: "1", 2: "1"}
    assert p.head_waiting is not None and p.head_waiting[0] == "1"
    # Job 2 (a whole GPU) would have to take GPU 1 or 2: not allowed.  Small jobs fit on GPU 3.
    assert placed(p) == {"3": (3,)}


def test_jobs_ahead_of_the_blocked_head_are_not_restricted() -> None:
    p = run([job(1, 1, priority=0), job(2, 2, priority=1), job(3, 0.5, priority=2)], gpus(0, 0.5))
    assert placed(p) == {"1": (0,)}
    assert p.head_waiting is not None and p.head_waiting[0] == "2"
    assert set(p.reserved) == {0, 1}


def test_only_the_first_blocked_job_reserves() -> None:
    p = run([job(1, 2), job(2, 1, allowed=[2]), job(3, 0.5)], gpus(0.5, 0, 0.5))
    assert set(p.reserved.values()) == {"1"}
    assert placed(p) == {"3": (2,)}


def test_head_job_that_can_never_run_here_holds_nothing() -> None:
    # Its only allowed GPU is paused: reserving the others would stop everyone for nothing.
    p = run([job(1, 1, allowed=[0]), job(2, 1)], gpus(0, 0, paused=[0]))
    assert dict(p.reserved) == {}
    assert placed(p) == {"2": (1,)}
    assert p.head_waiting is not None and "usable" in p.head_waiting[1]


def test_head_job_starts_despite_a_stream_of_small_jobs() -> None:
    """Simulated time: two small jobs arrive each tick; each runs 2-4 ticks.  The big job,
    queued early, must start; small jobs must also have run meanwhile (backfill)."""
    running: dict[str, tuple[float, tuple[int, ...], float]] = {}  # id -> (req, gpus, end)
    queue: list[Job] = [job(i, 0.5) for i in range(1, 5)]
    seq = 5
    queue.append(big := job(seq, 2))  # needs both GPUs
    started_at: dict[str, int] = {}
    for tick in range(60):
        for jid in [j for j, (_, _, end) in running.items() if end <= tick]:
            del running[jid]
        for _ in range(2):
            seq += 1
            queue.append(job(seq, 0.5))
        alloc: dict[int, float] = {}
        for req, gs, _ in running.values():
            for g in gs:
                alloc[g] = alloc.get(g, 0.0) + booked_share(req, len(gs))
        states = [GpuState(i, alloc.get(i, 0.0)) for i in range(2)]
        p = run(queue, states, now=float(tick))
        for pl in p.placements:
            j = next(q for q in queue if q.id == pl.job_id)
            queue.remove(j)
            running[j.id] = (j.required_gpus, pl.gpus, tick + 2 + j.seq % 3)  # staggered ends
            started_at[j.id] = tick
        if big.id in started_at:
            break
    assert big.id in started_at, "the 2-GPU job starved"
    assert started_at[big.id] <= 10
    assert len([j for j in started_at if j != big.id]) >= 4


# ------------------------------------------------------------------ properties

REQS = st.one_of(
    st.sampled_from([0.01, 0.1, 0.25, 1 / 3, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0]),
    st.floats(min_value=1e-6, max_value=1.0),
)


@st.composite
def scenarios(draw: st.DrawFn, max_jobs: int = 25) -> tuple[list[Job], list[GpuState], float]:
    n = draw(st.integers(1, 6))
    states = []
    for i in range(n):
        alloc = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)))
        states.append(
            GpuState(
                i,
                alloc,
                paused=draw(st.booleans()) and draw(st.booleans()),
                blocked="x" if draw(st.booleans()) and draw(st.booleans()) else None,
            )
        )
    queue = []
    for seq in range(1, draw(st.integers(0, max_jobs)) + 1):
        allowed = draw(
            st.one_of(
                st.none(), st.lists(st.integers(0, n + 1), min_size=1, max_size=n, unique=True)
            )
        )
        queue.append(
            job(
                seq,
                draw(REQS),
                priority=draw(st.integers(-2, 2)),
                allowed=sorted(allowed) if allowed is not None else None,
                not_before=draw(st.one_of(st.none(), st.floats(NOW - 10, NOW + 10))),
            )
        )
    precision = draw(st.sampled_from([0.01, 0.05, 0.001]))
    return queue, states, precision


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_plan_properties(scenario: tuple[list[Job], list[GpuState], float]) -> None:
    queue, states, precision = scenario
    ordered = sorted(queue, key=queue_key)
    p = plan(ordered, states, NOW, precision)
    by_id = {j.id: j for j in queue}
    by_gpu = {s.index: s for s in states}
    alloc = {s.index: s.allocated for s in states}
    ids = [pl.job_id for pl in p.placements]
    assert len(ids) == len(set(ids)), "a job placed twice"
    position = {j.id: i for i, j in enumerate(ordered)}
    head = p.head_waiting[0] if p.head_waiting else None
    for pl in p.placements:
        j = by_id[pl.job_id]
        assert j.not_before is None or j.not_before <= NOW
        assert len(pl.gpus) == len(set(pl.gpus))
        if j.required_gpus < 1:
            assert len(pl.gpus) == 1
        else:
            assert len(pl.gpus) == round(j.required_gpus)
        for g in pl.gpus:
            st_ = by_gpu[g]
            assert st_.eligible, "placed on a paused or blocked GPU"
            if j.allowed_gpus is not None:
                assert g in j.allowed_gpus
            if j.required_gpus >= 1:
                assert alloc[g] == 0.0 or st_.allocated <= precision / 2, "whole GPU not empty"
            if head is not None and position[j.id] > position[head]:
                assert g not in p.reserved, "a job behind the head took a reserved GPU"
            alloc[g] += booked_share(j.required_gpus, len(pl.gpus))
    for g, total in alloc.items():
        if total > by_gpu[g].allocated:  # only what this plan added is its responsibility
            assert total <= 1 + precision, f"GPU {g} booked {total}"


@settings(max_examples=300, deadline=None)
@given(scenarios(max_jobs=4))
@example(([job(1, 2.0)], gpus(0.0, 0.0), 0.01))
def test_no_room_means_no_start(scenario: tuple[list[Job], list[GpuState], float]) -> None:
    """The dispatcher skips planning for new jobs that ``could_start`` says cannot start:
    plan() must then place none of them, whatever the queue around them."""
    queue, states, precision = scenario
    room = most_room(states)
    p = plan(sorted(queue, key=queue_key), states, NOW, precision)
    placed_ids = {pl.job_id for pl in p.placements}
    for j in queue:
        if not could_start(j.required_gpus, room, precision):
            assert j.id not in placed_ids, f"job needing {j.required_gpus} placed, room {room}"


def test_most_room() -> None:
    assert most_room(gpus(1.0, 0.25, 0.5)) == 0.75
    assert most_room(gpus(1.0, 0.0, paused=[1])) == 0.0  # a paused GPU has no room
    assert most_room(gpus(0.0, 1.0, blocked=[0])) == 0.0  # nor one others use
    assert most_room([]) == 0.0
    assert could_start(0.75, 0.75) and could_start(0.5, 0.75) and not could_start(1, 0.75)
    assert could_start(1, 1.0) and could_start(3, 1.0)  # (plan() decides the number)
    assert not could_start(2, 0.99)
    assert not could_start(0.01, 0.0)


@settings(max_examples=25, deadline=None)
@given(scenarios())
def test_plan_is_deterministic_and_pure(scenario: tuple[list[Job], list[GpuState], float]) -> None:
    queue, states, precision = scenario
    ordered = sorted(queue, key=queue_key)
    assert plan(ordered, states, NOW, precision) == plan(
        list(ordered), list(states), NOW, precision
    )


@pytest.mark.parametrize("req", [0.0149, 0.006, 0.334])
def test_rounding_never_overbooks(req: float) -> None:
    n = int(2 / req)
    p = run([job(i, req) for i in range(1, n + 1)], gpus(0.0))
    total = sum(booked_share(req, 1) for _ in p.placements)
    assert total <= 1 + 0.01
    assert total > 1 - req - 0.01  # and the GPU is still filled


# ------------------------------------------------------------------ explain (why())


def test_explain_says_why_each_queued_job_has_not_started() -> None:
    queue = sorted(
        [
            job(1, 0.5),  # fits now
            job(2, 2.0),  # the head: needs 2 empty GPUs, holds GPUs for itself
            job(3, 0.25),  # behind it
            job(4, 0.5, not_before=NOW + 60),  # in a retry's back-off
        ],
        key=queue_key,
    )
    why = explain(queue, gpus(0.5, 1.0, 0.0), NOW)
    assert why["1"] == "it fits now (GPU 0): it starts at the engine's next turn"
    assert why["2"].startswith("needs 2 free GPUs; GPU(s)") and "held for it" in why["2"]
    assert why["3"].startswith("job 2 comes first (needs 2 free GPUs")
    assert why["3"].endswith("it needs 0.25 of a GPU, and may use only GPUs that job does not hold")
    assert why["4"].startswith("a retry's back-off, until ")
    assert set(why) == {"1", "2", "3", "4"}


def test_explain_when_everything_is_taken_or_paused() -> None:
    queue = [job(1, 1.0), job(2, 1.0), job(3, 0.5)]
    why = explain(queue, gpus(0.0), NOW)
    assert why["1"].startswith("it fits now (GPU 0)")
    assert (
        why["2"]
        == why["3"]
        == ("every usable GPU (1) is taken by running jobs and jobs ahead of it")
    )
    why = explain([job(1, 0.5)], gpus(0.0, 0.0, paused=[0, 1]), NOW)
    assert why["1"] == "needs 0.5 of a GPU; only 0 usable GPU(s) (others paused or busy elsewhere)"


def test_explain_a_job_whose_own_gpus_take_no_job() -> None:
    """Behind a waiting head, a job whose allowed GPUs are all paused waits for that,
    not for the head."""
    queue = [job(1, 2.0), job(2, 1.0, allowed=[2])]
    why = explain(queue, gpus(1.0, 1.0, 0.0, paused=[2]), NOW)
    assert why["1"].startswith("needs 2 free GPUs")
    assert why["2"] == (
        "none of the GPUs it may use (2) takes a job now (paused, or busy with others' work)"
    )


@given(
    reqs=st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=8),
    alloc=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=4),
)
def test_explain_agrees_with_plan(reqs: list[float], alloc: list[float]) -> None:
    """A job explain() says fits now is exactly one plan() starts."""
    queue = [job(i + 1, r) for i, r in enumerate(reqs)]
    states = gpus(*alloc)
    why = explain(queue, states, NOW)
    assert set(why) == {j.id for j in queue}
    starting = {k for k, v in why.items() if v.startswith("it fits now")}
    assert starting == set(placed(run(queue, states)))
