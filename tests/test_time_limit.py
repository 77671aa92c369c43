"""Time limits with real processes: a job past its ``time_limit`` is ended as a cancel
ends it (its whole process tree: SIGTERM, then SIGKILL after the grace) and fails
with the reason ``time limit (...)`` and its real exit code, under the direct and the
screen executor, and also when the kernel that started it is gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.dispatcher.ends import decide_end
from nbsched.dispatcher.limits import Deadlines
from nbsched.executors.base import Exit
from nbsched.executors.screen import list_sessions
from nbsched.jobs import Job, JobSpec, JobStatus

TIMEOUT = 60.0  # generous: 2 cores shared with other test runs


@pytest.fixture
def scheduler_config() -> dict[str, Any]:
    return {"num_gpus": 2, "start": True, "kill_grace_s": 1.0}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tree_command(tmp_path: Path, trap_term: bool = False) -> str:
    """A parent shell with a sleeping child, both writing their pids; the parent
    outlives any sensible limit.  ``trap_term``: the parent ignores SIGTERM (only the
    SIGKILL after the grace ends it)."""
    trap = "trap '' TERM; " if trap_term else ""
    return (
        f"{trap}echo $$ > {tmp_path}/parent; sleep 300 & echo $! > {tmp_path}/child; "
        "sleep 301; wait"
    )


def pids(tmp_path: Path) -> tuple[int, int]:
    def read() -> tuple[int, int] | None:
        try:
            return int((tmp_path / "parent").read_text()), int((tmp_path / "child").read_text())
        except (OSError, ValueError):
            return None

    found = wait_for(read, what="the job to write its pids", timeout=TIMEOUT)
    assert found is not None
    return found


@pytest.mark.parametrize("executor", ["direct", "screen"])
def test_a_job_past_its_limit_is_ended_with_its_whole_tree(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path, executor: str
) -> None:
    s = make_sched(executor=executor)
    began = time.monotonic()
    job_id = s.add_command(tree_command(tmp_path), required_gpus=1, time_limit=1)
    parent, child = pids(tmp_path)
    s.wait([job_id], timeout=TIMEOUT)
    row = s.job(job_id)
    assert row["status"] == "failed", row
    assert row["reason"] == "time limit (1s)"
    assert row["exit_code"] is not None and row["exit_code"] != 0
    assert row["ended"] is not None and row["started"] is not None
    assert (row["ended"] - row["started"]).total_seconds() >= 0.9  # (file times are coarse)
    wait_for(lambda: not alive(parent) and not alive(child), what="both processes to end")
    assert time.monotonic() - began < 30  # (ended at its limit, not by sleep 300 ending)
    assert "time limit (1s) reached" in s.logs(job_id)
    if executor == "screen":  # (and no session is left behind)
        wait_for(
            lambda: not [n for n in list_sessions() if n.endswith(f".nbsched-{job_id}")],
            what="the job's screen session to end",
        )


def test_sigterm_ignored_then_sigkill_after_the_grace(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    s = make_sched()
    job_id = s.add_command(tree_command(tmp_path, trap_term=True), required_gpus=1, time_limit=1)
    parent, child = pids(tmp_path)
    s.wait([job_id], timeout=TIMEOUT)
    row = s.job(job_id)
    assert (row["status"], row["reason"]) == ("failed", "time limit (1s)")
    assert row["exit_code"] not in (None, 0)
    wait_for(lambda: not alive(parent) and not alive(child), what="both processes to end")


def test_a_job_within_its_limit_succeeds(make_sched: Callable[..., GPUJobScheduler]) -> None:
    s = make_sched()
    job_id = s.add_command("sleep 0.2", required_gpus=0.5, time_limit="1m")
    s.wait([job_id], timeout=TIMEOUT)
    row = s.job(job_id)
    assert (row["status"], row["exit_code"], row["reason"]) == ("succeeded", 0, None)


def test_the_limit_holds_across_a_kernel_restart(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """The deadline is the start time plus the limit, both in the store: an engine that
    starts after the first one stopped ends the job there."""
    state = tmp_path / "shared"
    first = make_sched(state_dir=state)
    job_id = first.add_command(tree_command(tmp_path), required_gpus=1, time_limit=4)
    parent, child = pids(tmp_path)
    first.stop()  # the job goes on without an engine
    first.close()
    assert alive(parent)
    second = make_sched(state_dir=state)
    second.wait([job_id], timeout=TIMEOUT)
    row = second.job(job_id)
    assert (row["status"], row["reason"]) == ("failed", "time limit (4s)")
    assert row["exit_code"] not in (None, 0)
    wait_for(lambda: not alive(parent) and not alive(child), what="both processes to end")


def test_a_job_past_its_limit_is_not_retried(make_sched: Callable[..., GPUJobScheduler]) -> None:
    s = make_sched()
    job_id = s.add_command("sleep 300", required_gpus=1, time_limit=0.5, max_retries=3)
    s.wait([job_id], timeout=TIMEOUT)
    row = s.job(job_id)
    assert (row["status"], row["attempts"], row["reason"]) == ("failed", 1, "time limit (0.5s)")


# -- the parts alone ------------------------------------------------------------------------


def running_job(seq: int, started: float, limit: float | None, token: str = "t") -> Job:
    spec = JobSpec(kind="command", required_gpus=1.0, command="sleep 9", time_limit=limit)
    return Job(
        id=str(seq),
        seq=seq,
        status=JobStatus.RUNNING,
        spec=spec,
        submitted=started,
        started=started,
        token=token,
    )


def test_deadlines_give_the_nearest_and_each_due_job_once() -> None:
    d = Deadlines()
    a, b, free = running_job(1, 100.0, 10.0), running_job(2, 100.0, 5.0), running_job(3, 0, None)
    for job in (a, b, b, free):
        d.add(job)
    assert len(d) == 2 and d.wait_s(100.0) == 5.0 and d.wait_s(200.0) == 0.0
    running = {j.id: j for j in (a, b, free)}
    assert d.due(104.9, running) == []
    assert d.due(105.0, running) == [b]
    assert d.due(105.0, running) == []
    # an attempt that ended (or another attempt of the job) is not ended
    assert d.due(111.0, {"1": running_job(1, 100.0, 10.0, token="next")}) == []
    assert d.wait_s(0.0) == float("inf")


def test_an_end_at_or_past_the_limit_fails_with_its_code() -> None:
    job = running_job(1, 1000.0, 9000.0)
    end = decide_end(job, Exit(-15, at=10000.0), 1.0, now=10000.5)
    assert (end.status, end.exit_code, end.reason) == (
        JobStatus.FAILED,
        -15,
        "time limit (2h30m)",
    )
    inside = decide_end(job, Exit(0, at=9999.0), 1.0, now=10000.5)
    assert (inside.status, inside.reason) == (JobStatus.SUCCEEDED, None)


def test_the_dispatcher_sleeps_no_longer_than_the_nearest_deadline(
    make_sched: Callable[..., GPUJobScheduler],
) -> None:
    s = make_sched()
    far = s.add_command("sleep 300", required_gpus=0.5, time_limit=120)
    near = s.add_command("sleep 300", required_gpus=0.5, time_limit="1m")
    wait_for(lambda: {s.job(j)["status"] for j in (far, near)} == {"running"}, what="both to run")
    d = s._dispatcher
    assert d is not None
    # (armed as the dispatcher starts them, just after it marks them running)
    wait_for(lambda: len(d._cache.deadlines) == 2, what="both deadlines armed")
    assert 40 < d._cache.deadlines.wait_s(time.time()) <= 60  # (the nearer one's)
    started = s.store.get(near).started
    assert started is not None
    assert d._sleep_s(started + 59.5, time.monotonic(), []) <= 0.5  # (not the 2 s safety net)
    for j in (far, near):
        s.cancel(j)
