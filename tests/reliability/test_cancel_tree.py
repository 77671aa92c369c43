"""Cancel ends the job's whole process tree, wherever its processes went.

The job below leaves background children, ``bash -c`` children, children in new
sessions (``setsid``), children that ignore SIGTERM, and two orphans that left the
tree altogether (double fork, as daemons do): only the token in their environment
still ties those to the job.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from nbsched import GPUJobScheduler
from nbsched.executors.base import Launch, Started

from .harness import job_command, processes_with_env, read_markers, wait_for

TREE = """
bash -c 'sleep 300' &
sleep 300 &
setsid sleep 300 &
setsid bash -c 'trap "" TERM; sleep 300 & wait' &
bash -c 'trap "" TERM; while true; do sleep 0.2; done' &
(trap '' TERM; exec sleep 300) &
(setsid sleep 300 &)
setsid bash -c 'trap "" TERM; sleep 300 &'
echo ready > {ready}
wait
"""


@pytest.fixture
def scheduler(make_sched: Callable[..., GPUJobScheduler]) -> GPUJobScheduler:
    return make_sched(start=True, num_gpus=1, kill_grace_s=0.5)


@pytest.mark.parametrize("from_other_process", [False, True])
def test_cancel_leaves_no_process(
    tmp_path: Path, scheduler: GPUJobScheduler, from_other_process: bool
) -> None:
    tag = uuid.uuid4().hex
    ready = tmp_path / "ready"
    jid = scheduler.add_command(TREE.format(ready=ready), env={"RELTEST_TAG": tag})
    wait_for(ready.exists, what="the job's tree")
    job = scheduler.store.get(jid)
    token = job.token
    # launcher, the command's bash and 9 more (sleeps, bashes, setsid ones) carry the token
    wait_for(lambda: len(processes_with_env(f"NBSCHED_JOB_TOKEN={token}")) >= 11, what="tree")
    if from_other_process:
        # A second scheduler on the same state dir, not dispatching (as another kernel).
        other = GPUJobScheduler(config=scheduler.config)
        try:
            assert other.cancel(jid) is True
        finally:
            other.close()
    else:
        assert scheduler.cancel(jid) is True
    assert processes_with_env(f"NBSCHED_JOB_TOKEN={token}") == []
    assert [
        p
        for p in processes_with_env(f"NBSCHED_JOB_ID={jid}")
        if p in processes_with_env(f"RELTEST_TAG={tag}")
    ] == []
    row = scheduler.wait([jid], timeout=30)
    assert list(row["status"]) == ["cancelled"]


def test_cancel_before_the_process_exists(
    tmp_path: Path, scheduler: GPUJobScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another kernel cancels a job between "marked running" and "spawned": its cancel
    finds no process to kill, so the dispatcher must end the process it then spawns."""
    markers, gate = tmp_path / "markers", tmp_path / "gate"
    scheduler.pause_gpu(0)
    victim = scheduler.add_command(job_command(markers, 0, gate))
    follower = scheduler.add_command(job_command(markers, 0))
    other = GPUJobScheduler(config=scheduler.config)  # another kernel, not dispatching
    executor = scheduler._engine.executors("direct")
    real_start = executor.start

    def start_after_a_cancel(launch: Launch) -> Started:
        if launch.job.id == victim:
            assert other.cancel(victim) is True  # nothing to kill yet
        return real_start(launch)

    monkeypatch.setattr(executor, "start", start_after_a_cancel)
    try:
        scheduler.resume_gpu(0)
        rows = scheduler.wait([victim, follower], timeout=60)
    finally:
        other.close()
    assert list(rows["status"]) == ["cancelled", "succeeded"]
    token = scheduler.store.get(victim).token
    wait_for(lambda: not processes_with_env(f"NBSCHED_JOB_TOKEN={token}"), what="the kill")
    assert victim not in read_markers(markers)[1]  # it never got past its gate
