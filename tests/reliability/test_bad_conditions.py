"""A full disk, a damaged database, a wall clock that jumps."""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import StateDirError
from nbsched.store import Store

from .harness import REPO, job_command, read_markers, wait_for


def _config(state: Path, **kw: Any) -> SchedulerConfig:
    return SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=1, **kw)


# ------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 16 MiB tmpfs (room for the 4 MiB WAL SQLite checkpoints at), or None where
    mounting is not permitted (then the test limits the file size instead)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16M,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if done.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the disk to the last byte; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while os.write(fd, b"\0" * size) == size:
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_at_submission(small_disk: Path | None, tmp_path: Path) -> None:
    if small_disk is None:
        _full_disk_by_file_size_limit(tmp_path)
        return
    state, gate = small_disk / "state", tmp_path / "gate"
    s = GPUJobScheduler(config=_config(state)).start()
    try:
        # One job runs (and will end while the disk is full); the others queue behind it.
        first = s.add_command(job_command(tmp_path / "markers", 42, gate))
        before = [s.add_command(f"exit {i}", name=f"before-{i}") for i in range(20)]
        wait_for(lambda: s.job(first)["status"] == "running")
        filler = _fill(small_disk)
        with pytest.raises(StateDirError, match="disk is full") as info:
            for i in range(5000):  # the WAL has some room left in its last page
                s.add_command("exit 0", name=f"x{i}" * 50)
        assert str(state / "state.db") in str(info.value)
        assert isinstance(info.value, OSError)  # callers may catch OSError
        gate.touch()  # the running job ends now; its end cannot be written yet
        wait_for(lambda: read_markers(tmp_path / "markers")[1], what="the job's end")
        filler.unlink()
        # Usable again once space is back, with every committed job intact, and the
        # end that could not be written meanwhile recorded with its real exit code.
        after = s.add_command("exit 0", name="after")
        assert [s.job(j)["name"] for j in before] == [f"before-{i}" for i in range(20)]
        rows = s.wait([first, *before, after], timeout=60)
        assert list(rows["exit_code"]) == [42, *range(20), 0]
        check = sqlite3.connect(state / "state.db").execute("PRAGMA integrity_check")
        assert check.fetchone()[0] == "ok"
    finally:
        s.stop(kill=True)
        s.close()


_FSIZE_CHILD = """
import os, resource, signal, sys
from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import StateDirError
cfg = SchedulerConfig(state_dir=sys.argv[1], gpu_provider="simulated", num_gpus=1)
s = GPUJobScheduler(config=cfg)
ids = [s.add_command(f"exit {i}") for i in range(20)]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
size = os.path.getsize(sys.argv[1] + "/state.db-wal")
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8192, resource.RLIM_INFINITY))
try:
    for i in range(5000):
        s.add_command("exit 0", name=f"x{i}" * 50)
except StateDirError as exc:
    print("ERROR", exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
s.add_command("exit 0", name="after")
print("OK", len(s.store.find()))
"""


def _full_disk_by_file_size_limit(tmp_path: Path) -> None:
    """Where no tmpfs can be mounted: the same check with RLIMIT_FSIZE (SIGXFSZ ignored)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert "ERROR cannot write" in out.stdout and "state.db" in out.stdout, out
    assert "OK" in out.stdout, out
    assert resource.getrlimit(resource.RLIMIT_FSIZE)  # (this process was never limited)


# ------------------------------------------------------------------------ a damaged db


def _damaged(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"this is not a database\n" * 200)
    elif how == "directory":
        path.mkdir()
    else:  # "pages": a real database whose pages were overwritten
        store = Store(path)
        store.close()
        data = bytearray(path.read_bytes())
        data[100:] = b"\xa5" * (len(data) - 100)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["garbage", "directory", "pages"])
def test_damaged_database_is_named_never_reset(tmp_path: Path, how: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = state / "state.db"
    _damaged(db, how)
    before = db.read_bytes() if db.is_file() else None
    with pytest.raises(StateDirError) as info:
        s = GPUJobScheduler(config=_config(state))
        s.jobs()  # a damage SQLite only notices when reading must still be reported
        s.close()
    assert str(db) in str(info.value)
    assert "will not reset it" in str(info.value) or "cannot" in str(info.value)
    if before is not None:
        assert db.read_bytes() == before  # untouched: not reset, not "repaired"


# ------------------------------------------------------------------------ clock jumps


class SteppedClock:
    """time.time() of this process, plus an offset a test can step."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._real = time.time

    def __call__(self) -> float:
        return self._real() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    c = SteppedClock()
    monkeypatch.setattr(time, "time", c)
    return c


def test_clock_stepped_back_during_a_back_off(tmp_path: Path, clock: SteppedClock) -> None:
    """The retry starts after its back-off, not an hour later; and it runs once."""
    markers = tmp_path / "markers"
    flag = tmp_path / "failed-once"
    # Fails the first time, succeeds the second.
    cmd = f"[ -e {flag} ] && exit 0; touch {flag}; exit 1"
    s = GPUJobScheduler(config=_config(tmp_path / "state", retry_backoff_s=1.0)).start()
    try:
        jid = s.add_command(cmd, max_retries=2)
        wait_for(lambda: s.job(jid)["attempts"] == 1 and s.job(jid)["status"] == "queued")
        clock.offset = -3600.0  # NTP steps the wall clock back an hour
        s.store.update(jid, cancel_requested=False)  # any write: the dispatcher looks again
        t0 = time.monotonic()
        rows = s.wait([jid], timeout=60)
        assert time.monotonic() - t0 < 30  # (an hour without the fix)
        assert rows.iloc[0]["status"] == "succeeded"
        assert s.job(jid)["attempts"] == 2
        assert read_markers(markers) == ({}, {}, [])
    finally:
        s.stop(kill=True)
        s.close()


def test_clock_stepped_forward_during_wait(tmp_path: Path, clock: SteppedClock) -> None:
    """wait(timeout=...) measures with the monotonic clock: no spurious TimeoutError."""
    gate = tmp_path / "gate"
    s = GPUJobScheduler(config=_config(tmp_path / "state")).start()
    try:
        jid = s.add_command(job_command(tmp_path / "markers", 0, gate))
        wait_for(lambda: s.job(jid)["status"] == "running")

        def step_then_release() -> None:
            clock.offset = 7200.0  # two hours on, in the middle of the wait below
            gate.touch()

        timer = threading.Timer(0.3, step_then_release)
        timer.start()
        try:
            rows = s.wait([jid], timeout=60)
        finally:
            timer.join()
        assert clock.offset == 7200.0
        assert rows.iloc[0]["status"] == "succeeded"
    finally:
        s.stop(kill=True)
        s.close()
        shutil.rmtree(tmp_path / "state", ignore_errors=True)
