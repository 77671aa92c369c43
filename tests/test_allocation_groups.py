"""plan() with GPU groups (the nodes of a cluster): a multi-GPU job never spans groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from nbsched.allocation import GpuState, gpu_states, plan
from nbsched.gpus.base import GpuSnapshot
from nbsched.jobs import Job, JobSpec, JobStatus


def job(seq: int, req: float, priority: int = 0, allowed: Sequence[int] | None = None) -> Job:
    spec = JobSpec(
        kind="command",
        command="true",
        required_gpus=req,
        priority=priority,
        allowed_gpus=tuple(allowed) if allowed is not None else None,
    )
    return Job(id=str(seq), seq=seq, status=JobStatus.QUEUED, spec=spec, submitted=float(seq))


def nodes(*sizes: int, allocated: dict[int, float] | None = None) -> list[GpuState]:
    """GPUs numbered across nodes: nodes(2, 2) is node a = 0,1 and node b = 2,3."""
    out, index = [], 0
    for n, size in enumerate(sizes):
        for _ in range(size):
            used = (allocated or {}).get(index, 0.0)
            out.append(GpuState(index=index, allocated=used, group="abcdefgh"[n]))
            index += 1
    return out


def placed(p: object) -> dict[str, tuple[int, ...]]:
    return {pl.job_id: pl.gpus for pl in p.placements}  # type: ignore[attr-defined]


def test_two_gpu_job_does_not_span_nodes() -> None:
    # One GPU free on each node: three free GPUs in all, but no node has two.
    gpus = nodes(2, 2, allocated={0: 1.0, 2: 0.5})
    p = plan([job(1, 2)], gpus, now=0)
    assert p.placements == ()
    # It holds the node closest to having two free GPUs (b: 0.5 + 1 free), not GPUs 1 and 3.
    assert dict(p.reserved) == {2: "1", 3: "1"}


def test_two_gpu_job_takes_the_node_with_room() -> None:
    gpus = nodes(2, 2, allocated={1: 0.25})
    assert placed(plan([job(1, 2)], gpus, now=0)) == {"1": (2, 3)}


def test_multi_gpu_job_takes_the_tightest_node_that_fits() -> None:
    # Node a has 4 empty GPUs, node b exactly 2: b is taken, a stays whole for a 4-GPU job.
    gpus = nodes(4, 2)
    p = plan([job(1, 2), job(2, 4)], gpus, now=0)
    assert placed(p) == {"1": (4, 5), "2": (0, 1, 2, 3)}


def test_without_groups_the_old_choice_is_kept() -> None:
    gpus = [GpuState(index=i, allocated=a) for i, a in enumerate([0.5, 0.0, 0.0, 1.0])]
    p = plan([job(1, 2), job(2, 0.25)], gpus, now=0)
    assert placed(p) == {"1": (1, 2), "2": (0,)}


def test_reservation_stays_within_one_node() -> None:
    # Node a: GPU 0 full, 1 half used; node b: GPU 2 full, 3 at a quarter.  The 2-GPU
    # head job reserves the node whose two GPUs are closest to free: b (0 + 0.75 free).
    gpus = nodes(2, 2, allocated={0: 1.0, 1: 0.5, 2: 1.0, 3: 0.25})
    p = plan([job(1, 2), job(2, 0.5)], gpus, now=0)
    assert dict(p.reserved) == {2: "1", 3: "1"}
    # The fraction behind it backfills outside the reservation, on node a.
    assert placed(p) == {"2": (1,)}


def test_fractions_ignore_groups() -> None:
    gpus = nodes(1, 1, allocated={0: 0.5, 1: 0.25})
    p = plan([job(1, 0.5), job(2, 0.25)], gpus, now=0)
    assert placed(p) == {"1": (0,), "2": (1,)}  # best-fit across nodes


def test_allowed_gpus_limit_the_node_choice() -> None:
    gpus = nodes(2, 2)
    assert placed(plan([job(1, 2, allowed=[1, 2, 3])], gpus, now=0)) == {"1": (2, 3)}
    p = plan([job(1, 2, allowed=[1, 2])], gpus, now=0)
    assert p.placements == () and dict(p.reserved) == {}


def test_a_node_too_small_for_the_job_never_takes_it() -> None:
    p = plan([job(1, 3)], nodes(2, 2), now=0)
    assert p.placements == ()
    assert p.head_waiting is not None and "no node has 3" in p.head_waiting[1]


def test_gpu_states_take_the_group_from_the_snapshot_node() -> None:
    snaps = [
        GpuSnapshot(
            index=i,
            uuid=None,
            name=None,
            memory_used_mb=None,
            memory_total_mb=None,
            load=None,
            node=node,
        )
        for i, node in enumerate(["n1", "n1", "n2", None])
    ]
    states = gpu_states(snaps, {}, [], 0.8, 0.8)
    assert [s.group for s in states] == ["n1", "n1", "n2", None]


requirements = st.sampled_from([0.25, 0.5, 0.75, 1.0, 2.0, 3.0])


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    reqs=st.lists(st.tuples(requirements, st.integers(0, 2)), min_size=1, max_size=12),
    used=st.lists(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0]), min_size=16, max_size=16),
)
def test_plans_respect_nodes_and_capacity(
    sizes: list[int], reqs: list[tuple[float, int]], used: list[float]
) -> None:
    gpus = nodes(*sizes, allocated=dict(enumerate(used)))
    queue = sorted(
        (job(i + 1, r, p) for i, (r, p) in enumerate(reqs)), key=lambda j: (j.priority, j.seq)
    )
    p = plan(queue, gpus, now=0)
    group = {g.index: g.group for g in gpus}
    load = {g.index: g.allocated for g in gpus}
    by_id = {j.id: j for j in queue}
    for pl in p.placements:
        req = by_id[pl.job_id].required_gpus
        assert len({group[g] for g in pl.gpus}) == 1  # one node per job
        assert len(pl.gpus) == max(1, int(req))
        for g in pl.gpus:
            load[g] += req if req < 1 else 1.0
    assert all(v <= 1.0 + 1e-9 for v in load.values())  # nothing overbooked
    if p.head_waiting is not None:  # jobs behind the head never take its reserved GPUs
        order = [j.id for j in queue]
        behind = order[order.index(p.head_waiting[0]) + 1 :]
        for pl in p.placements:
            if pl.job_id in behind:
                assert not set(pl.gpus) & set(p.reserved)
    # One group for all is the same as no group at all.
    flat = [replace(g, group=None) for g in gpus]
    same = [replace(g, group="x") for g in gpus]
    assert plan(queue, flat, now=0) == plan(queue, same, now=0)
