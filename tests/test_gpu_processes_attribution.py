"""Attribution of GPU processes to nbsched jobs, on real processes: through the job's
process tree, through its token, else someone else's with user and command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from nbsched.gpus import GpuProcess, GpuSnapshot
from nbsched.gpus.attribution import (
    UNREADABLE,
    Attributor,
    JobProcess,
    memory_by_gpu,
    memory_by_job,
    this_user,
)


def _gpu(index: int, *procs: tuple[int | None, float]) -> GpuSnapshot:
    return GpuSnapshot(
        index, None, "GPU", 0.0, 80000.0, 0.0,
        processes=tuple(GpuProcess(index, pid, mb) for pid, mb in procs),
    )  # fmt: skip


def _children(pid: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process(pid).children(recursive=True)
        if kids and all(k.cmdline()[:1] == ["sleep"] for k in kids):  # (exec'd)
            return [k.pid for k in kids]
        time.sleep(0.02)
    raise AssertionError("no child appeared")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def test_a_descendant_of_a_job_is_the_jobs(procs: list[subprocess.Popen[bytes]]) -> None:
    root = subprocess.Popen(["bash", "-c", "sleep 30 & wait"])
    procs.append(root)
    (child,) = _children(root.pid)
    rows = Attributor().attribute([_gpu(0, (child, 1000.0))], [JobProcess("7", root.pid, "t")])
    assert [(r.pid, r.job, r.used_mb) for r in rows] == [(child, "7", 1000.0)]
    assert rows[0].user == this_user() and "sleep 30" in (rows[0].command or "")


def test_a_process_that_left_the_job_is_found_by_its_token(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    env = {**os.environ, "NBSCHED_JOB_TOKEN": "tok-42"}
    stray = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    procs.append(stray)
    deadline = time.monotonic() + 5
    while psutil.Process(stray.pid).cmdline() != ["sleep", "30"]:
        assert time.monotonic() < deadline  # (until it has exec'd, with its environment)
        time.sleep(0.01)
    jobs = [JobProcess("3", 999_999_999, "tok-42"), JobProcess("4", None, "other")]
    (row,) = Attributor().attribute([_gpu(1, (stray.pid, 5.0))], jobs)
    assert (row.gpu, row.job) == (1, "3")


def test_someone_elses_process_shows_user_and_command(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "a b"])
    procs.append(other)
    deadline = time.monotonic() + 5
    while "time.sleep" not in " ".join(psutil.Process(other.pid).cmdline()):
        assert time.monotonic() < deadline  # (until it has exec'd)
        time.sleep(0.01)
    (row,) = Attributor().attribute(
        [_gpu(0, (other.pid, 2048.0))], [JobProcess("1", 999_999_998, None)]
    )
    assert row.job is None and row.readable
    assert row.user == this_user()
    assert row.command is not None and "time.sleep(30)" in row.command


def test_an_unreadable_process_is_shown_not_dropped() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # (its pid now names no process this user can see: as under hidepid)
    (row,) = Attributor().attribute([_gpu(2, (gone.pid, 300.0))], [])
    assert (row.gpu, row.pid, row.used_mb, row.job) == (2, gone.pid, 300.0, None)
    assert row.command == UNREADABLE and not row.readable
    assert memory_by_gpu([row]) == {2: (0.0, 300.0)}


def test_provider_described_processes_keep_their_words() -> None:
    snap = GpuSnapshot(
        0, None, None, 0.0, 1.0, 0.0,
        processes=(GpuProcess(0, None, 10.0, "bob", "python x.py"),),
    )  # fmt: skip
    (row,) = Attributor().attribute([snap], [])
    assert (row.user, row.command, row.job) == ("bob", "python x.py", None)


def test_memory_sums_per_job_and_per_gpu(procs: list[subprocess.Popen[bytes]]) -> None:
    root = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 31 & wait"])
    procs.append(root)
    deadline = time.monotonic() + 5
    while len(kids := _children(root.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    a, b = kids[:2]
    other = subprocess.Popen(["sleep", "30"])
    procs.append(other)
    reading = [_gpu(0, (a, 100.0), (b, 50.0), (other.pid, 7.0)), _gpu(1, (a, 120.0))]
    rows = Attributor().attribute(reading, [JobProcess("5", root.pid, None)])
    assert memory_by_job(rows) == {"5": 150.0}  # the most on one GPU: 100 + 50 on GPU 0
    assert memory_by_gpu(rows) == {0: (150.0, 7.0), 1: (120.0, 0.0)}


def test_cache_forgets_pids_that_left_the_gpus(procs: list[subprocess.Popen[bytes]]) -> None:
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)
    attributor = Attributor()
    attributor.attribute([_gpu(0, (p.pid, 1.0))], [])
    assert p.pid in attributor._seen
    attributor.attribute([_gpu(0)], [])
    assert attributor._seen == {}
