"""A big submission (issue 19: a long queue): of each job only the dispatcher's light
entry is made as its rows are stored, no whole job, and no spec is kept past its chunk;
the jobs are queued, wait for their dependencies and start as a small submission's do.
Real SQLite, a real engine with real processes on simulated GPUs."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from store_support import count_reads
from test_dispatcher import FakeExecutor, Rig
from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.dispatcher.entries import SMALL_BATCH, Entries, entry_maker
from nbsched.jobs import JobSpec, JobStatus
from nbsched.store.adding import ROWS

MakeSched = Callable[..., GPUJobScheduler]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "state", FakeExecutor())
    yield r
    r.close()


def _until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_for(check, "the condition", timeout)


def test_a_big_submission_keeps_no_spec_of_the_rows_already_stored(
    make_sched: MakeSched,
) -> None:
    """Once a chunk of a sweep's rows is in, nothing keeps its specs: 100,000 specs and
    whole jobs kept until the call returned were ~100 MB more of the kernel's memory."""
    s = make_sched(start=True, num_gpus=2)
    for g in range(2):
        s.pause_gpu(g)
    n = 2 * ROWS + 500
    refs: list[weakref.ref[JobSpec]] = []
    alive_at_end: list[int] = []

    def specs() -> Iterator[JobSpec]:
        base = s.make_spec(command="true", required_gpus=1)
        for i in range(n):
            spec = base.evolve(command=f"true {i}")
            refs.append(weakref.ref(spec))
            if i == n - 1:
                alive_at_end.append(sum(r() is not None for r in refs[: 2 * ROWS]))
            yield spec

    ids = s.submit(specs())
    assert alive_at_end == [0]  # (the first two chunks' specs: gone before the last is made)
    assert len(ids) == n and ids == [str(int(ids[0]) + i) for i in range(n)]
    assert s.job(ids[-1])["command"] == f"true {n - 1}"
    s.resume_gpu(0)
    _until(lambda: s.job(ids[0])["status"] != "queued")  # (offered: the engine has them)


def test_a_big_submission_offers_only_the_jobs_that_wait_for_nothing(
    make_sched: MakeSched,
) -> None:
    """Half of one submission of more than SMALL_BATCH jobs waits for a job that fails:
    none of that half ever starts, each is cancelled with the reason; the other half runs."""
    s = make_sched(start=True, num_gpus=2)
    first = s.add_command("sleep 1; exit 3", required_gpus=1)
    waits = s.make_spec(command="true", required_gpus=0.25, after=first)
    free = s.make_spec(command="true", required_gpus=0.25)
    half = SMALL_BATCH // 2 + 1
    ids = s.submit([waits.evolve(command=f"true w{i}") for i in range(half)] + [free] * half)
    assert len(ids) == 2 * half > SMALL_BATCH
    waiting, running = ids[:half], ids[half:]
    assert all(s.job(i)["waiting"] for i in waiting)
    assert not any(s.job(i)["waiting"] for i in running)
    _until(lambda: all(s.job(i)["status"] in ("succeeded", "cancelled") for i in ids))
    assert [s.job(i)["status"] for i in running] == ["succeeded"] * half
    for i in waiting:
        job = s.job(i)
        assert (job["status"], job["reason"]) == ("cancelled", f"dependency {first} failed")
        assert job["started"] is None  # (never started)


def test_a_turn_while_this_process_stores_a_sweep_does_not_read_it_back(rig: Rig) -> None:
    """A timed turn that comes while this process stores jobs it will offer reads
    nothing: it would read every row of the sweep back once stored (100,000 rows, and
    their entries made twice), the offer then of no use.  The next turn takes the offer."""
    specs = [JobSpec(kind="command", command=f"true {i}", required_gpus=1.0) for i in range(300)]
    with rig.dispatcher.inbox.storing_offer():
        rev, made, waiting = rig.store.add_made_at(
            specs, entry_maker(None), owner_uid=os.getuid(), executor="fake"
        )
        rig.cycle(5.0)  # a timed turn, the rows committed, the offer not yet made
        assert rig.executor.launches == []
        rig.dispatcher.offer(rev, Entries(e for e in made if e is not None))
    assert waiting == [False] * 300
    ids = [str(e.seq) for e in made if e is not None]
    rows = count_reads(rig.store)
    rig.cycle()
    assert rows[0] < 20  # (the 300 new rows were not read back)
    assert [launch.job.id for launch in rig.executor.launches] == ids[:2]
    assert rig.job(ids[0]).status == JobStatus.RUNNING
    assert [e.id for e in rig.dispatcher._cache.ordered()] == ids[2:]
