"""A recorded pid is trusted only together with its process start time.

The next engine must never adopt an unrelated process that got the job's pid, and
must still find the job's own process when its recorded start time no longer
matches (the wall clock was stepped, which shifts every process start time that
psutil reports).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.store import Store

from .harness import job_command, read_markers, wait_for


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _scheduler(state: Path) -> GPUJobScheduler:
    return GPUJobScheduler(
        config=SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=1)
    )


def _leave_running(tmp_path: Path, code: int) -> tuple[Path, str, Path, Path]:
    """Start a gated job, then stop the engine without killing the job."""
    state, markers, gate = tmp_path / "state", tmp_path / "markers", tmp_path / "gate"
    s = _scheduler(state).start()
    try:
        jid = s.add_command(job_command(markers, code, gate))
        wait_for(lambda: s.store.get(jid).pid is not None, what="the job's pid")
    finally:
        s.stop()
        s.close()
    return state, jid, markers, gate


def _exit_file(state: Path, jid: str) -> Path:
    store = Store(state / "state.db")
    try:
        return state / "run" / f"{store.get(jid).token}.exit"
    finally:
        store.close()


@pytest.mark.parametrize("exit_file_left", [True, False])
def test_reused_pid_is_not_adopted(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]], exit_file_left: bool
) -> None:
    state, jid, markers, gate = _leave_running(tmp_path, code=23)
    gate.touch()
    exit_file = _exit_file(state, jid)
    wait_for(exit_file.exists, what="the job's exit file")
    wait_for(lambda: read_markers(markers)[1].get(jid), what="the job's end")
    if not exit_file_left:
        exit_file.unlink()  # the launcher itself was killed: no exit code anywhere
    # The job's pid now belongs to an unrelated process, started after the job ended.
    store = Store(state / "state.db")
    job_start = store.get(jid).proc_start
    assert job_start is not None

    def later_sleeper() -> subprocess.Popen[bytes] | None:
        proc = subprocess.Popen(["sleep", "120"])
        sleepers.append(proc)
        return proc if psutil.Process(proc.pid).create_time() > job_start + 0.1 else None

    sleeper = wait_for(later_sleeper, what="a process started after the job")
    store.update(jid, pid=sleeper.pid)
    store.close()

    s = _scheduler(state).start()
    try:
        s.wait([jid], timeout=60)  # promptly: the sleeper is not waited for
        row = s.job(jid)
        assert sleeper.poll() is None  # neither killed nor reaped
        assert row["status"] == "failed"
        if exit_file_left:
            assert row["exit_code"] == 23
        else:
            assert row["exit_code"] is None
            assert f"pid {sleeper.pid} now belongs to another process" in row["reason"]
    finally:
        s.stop()
        s.close()


def test_clock_step_does_not_orphan_a_running_job(tmp_path: Path) -> None:
    """A recorded start time off by a clock step: the job is found by its token, not failed."""
    state, jid, markers, gate = _leave_running(tmp_path, code=0)
    store = Store(state / "state.db")
    job = store.get(jid)
    assert job.proc_start is not None and psutil.pid_exists(job.pid or 0)
    store.update(jid, proc_start=job.proc_start + 3600.0)  # as after `date -s` one hour on
    store.close()

    s = _scheduler(state).start()
    try:
        # Recovery is done once the dispatcher has run its first cycle.
        wait_for(lambda: s._dispatcher is not None and s._dispatcher.cycles > 0, what="recovery")
        assert s.job(jid)["status"] == "running"  # not failed, not queued for a re-run
        extra = s.add_command(job_command(markers, 0))  # must wait: the only GPU is taken
        assert s.job(extra)["status"] == "queued"
        gate.touch()
        rows = s.wait([jid, extra], timeout=60)
        assert list(rows["status"]) == ["succeeded", "succeeded"]
        starts, _, intervals = read_markers(markers)
        assert starts == {jid: 1, extra: 1}
        assert intervals[0].end is not None and intervals[0].end <= intervals[1].start
    finally:
        s.stop()
        s.close()


def test_exit_file_of_a_job_cancelled_while_no_engine_ran_is_removed(tmp_path: Path) -> None:
    state, jid, markers, gate = _leave_running(tmp_path, code=0)
    gate.touch()
    exit_file = _exit_file(state, jid)
    wait_for(exit_file.exists, what="the job's exit file")
    client = _scheduler(state)  # the `nbsched cancel` of a user who thinks it still runs
    try:
        assert client.cancel(jid) is True
    finally:
        client.close()
    s = _scheduler(state).start()
    try:
        wait_for(lambda: s._dispatcher is not None and s._dispatcher.cycles > 0, what="recovery")
        assert s.job(jid)["status"] == "cancelled"
        assert list((state / "run").glob("*.exit")) == []  # (the spawner's files stay)
    finally:
        s.stop()
        s.close()
