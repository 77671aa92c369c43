"""Ownership and privacy of the state directory, under any umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import PermissionDeniedError, StateDirError

from .harness import Engines, job_command, read_markers, wait_for

SECRET = "nbsched-reltest-secret-8c41f0d2"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_files_are_private_under_umask_000(tmp_path: Path, engines: Engines) -> None:
    state, markers, gate = tmp_path / "state", tmp_path / "markers", tmp_path / "gate"
    cfg = {
        "state_dir": str(state),
        "umask": 0,
        "jobs": [
            {"command": job_command(markers, 0)},
            {"command": job_command(markers, 4, gate)},
            {"command": "exit 3", "max_retries": 1},  # leaves a retry in the store
        ],
        "wait": "forever",
    }
    # The secret is in the engine's environment (so in every job's): nbsched must not
    # copy it anywhere into the state directory.
    a = engines.start(cfg, env={"RELTEST_SECRET": SECRET})
    a.event("submitted")
    wait_for(lambda: read_markers(markers)[1].get("1"), what="job 1 to end")
    wait_for(lambda: read_markers(markers)[0].get("2"), what="job 2 to start")
    a.kill_group()  # leaves the WAL, the shared-memory file and an exit file behind
    gate.touch()
    wait_for(lambda: list((state / "run").glob("*.exit")), what="job 2's exit file")

    assert _mode(state) == 0o700
    for sub in ("logs", "run", "results"):
        assert _mode(state / sub) == 0o700, sub
    files = [p for p in state.rglob("*") if not p.is_dir()]
    names = {p.name for p in files}
    for expected in ("state.db", "state.db-wal", "state.db-shm", "dispatcher.lock", "wake.fifo"):
        assert expected in names, names
    assert any(p.suffix == ".exit" for p in files) and any(p.suffix == ".log" for p in files)
    assert {str(p.relative_to(state)): oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}

    for p in files:
        if stat.S_ISREG(os.lstat(p).st_mode):
            assert SECRET.encode() not in p.read_bytes(), p


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _config(state: Path) -> SchedulerConfig:
    return SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=1)


def test_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateDirError, match="symbolic link"):
        GPUJobScheduler(config=_config(link))
    assert list(real.iterdir()) == []  # nothing was written through the link


def test_symlinked_logs_folder_is_refused(tmp_path: Path, state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (state_dir / "logs").symlink_to(elsewhere)
    with pytest.raises(StateDirError, match="symbolic link"):
        GPUJobScheduler(config=_config(state_dir))


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_state_dir_writable_by_others_is_refused(state_dir: Path, mode: int) -> None:
    state_dir.mkdir()
    os.chmod(state_dir, mode)
    with pytest.raises(StateDirError, match="writable by other users") as info:
        GPUJobScheduler(config=_config(state_dir))
    assert str(state_dir) in str(info.value) and f"chmod 700 {state_dir}" in str(info.value)
    assert not (state_dir / "state.db").exists()


@pytest.fixture
def scheduler(state_dir: Path, make_sched: Callable[..., GPUJobScheduler]) -> GPUJobScheduler:
    return make_sched(start=True, config=_config(state_dir), kill_grace_s=0.5)


def _give_away(state: Path, job_id: str, uid: int) -> None:
    """Make the job another user's (the store sets who submitted a job only when it
    is submitted, and this test cannot submit as another user)."""
    raw = sqlite3.connect(state / "state.db", timeout=30)
    with raw:
        raw.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rev'")
        raw.execute(
            "UPDATE jobs SET owner_uid = ?, rev = (SELECT value FROM meta WHERE key = 'rev') "
            "WHERE seq = ?",
            (uid, int(job_id)),
        )
    raw.close()


def test_only_the_owner_may_cancel(
    tmp_path: Path, state_dir: Path, scheduler: GPUJobScheduler
) -> None:
    markers, gate = tmp_path / "markers", tmp_path / "gate"
    assert scheduler.job(scheduler.add_command("exit 0"))  # owner_uid is recorded
    mine = scheduler.store.find()[0]
    assert mine.owner_uid == os.getuid()

    running = scheduler.add_command(job_command(markers, 0, gate))
    queued = scheduler.add_command("exit 0")  # behind the running one on the only GPU
    wait_for(lambda: read_markers(markers)[0].get(running), what="the job to start")
    other = os.getuid() + 4242
    _give_away(state_dir, running, other)
    _give_away(state_dir, queued, other)
    for jid in (running, queued):
        with pytest.raises(PermissionDeniedError, match=f"belongs to uid {other}"):
            scheduler.cancel(jid)
    assert scheduler.job(running)["status"] == "running"
    assert scheduler.job(queued)["status"] == "queued"
    assert not read_markers(markers)[1]  # the running job was not touched
    gate.touch()
    rows = scheduler.wait([running, queued], timeout=60)
    assert list(rows["status"]) == ["succeeded", "succeeded"]
    with pytest.raises(PermissionDeniedError):
        scheduler.retry(running)
