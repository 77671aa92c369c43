"""What users see of GPU memory: jobs()/job() gpu_memory and gpu_memory_peak,
get_gpu_status()'s memory held by jobs and by others, the gpu_processes() table."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbsched import GPUJobScheduler
from nbsched.gpus import write_simulated_gpus

ALICE = {"pid": 4242, "user": "alice", "command": "vllm serve Qwen", "memory_mb": 20480}


@pytest.fixture
def scheduler_config(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [{"processes": [ALICE]}, {}])
    return {"num_gpus": 2, "simulated_gpus_file": str(path), "gpu_monitor_interval_s": 0.05}


def _until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


#: A job that holds 6 GiB, then 3 GiB, until told to end.
HOLDER = (
    'echo 6144 > "$NBSCHED_RESULT_FILE.gpu_memory"; sleep 0.6; '
    'echo 3072 > "$NBSCHED_RESULT_FILE.gpu_memory"; '
    'while [ ! -e "$NBSCHED_RESULT_FILE.stop" ]; do sleep 0.05; done'
)


def _stop(s: GPUJobScheduler, job_id: str) -> None:
    results = Path(s.config.state_dir) / "results"
    (results / f"{job_id}.json.stop").touch()


def test_running_job_memory_and_peak_are_shown_and_kept(
    running: GPUJobScheduler, make_sched: Callable[..., GPUJobScheduler]
) -> None:
    # (a small share: a simulated job uses its share until it reports)
    job_id = running.add_command(HOLDER, required_gpus=0.01)
    _until(lambda: running.job(job_id)["gpu_memory"] == 3072)
    row = running.job(job_id)
    assert row["gpu_memory_peak"] == 6144  # the peak, though it holds less now
    table = running.jobs()
    (mine,) = table[table["id"] == job_id].itertuples()
    assert (mine.gpu_memory, mine.gpu_memory_peak) == (3072, 6144)

    procs = running.gpu_processes()
    assert list(procs.columns) == ["gpu", "pid", "user", "command", "memory", "job"]
    alice = procs[procs["user"] == "alice"].iloc[0]
    assert (alice["gpu"], alice["pid"], alice["memory"], alice["job"]) == (0, 4242, 20480, None)
    ours = procs[procs["job"] == job_id].iloc[0]
    assert ours["memory"] == 3072 and ours["pid"] == running.store.get(job_id).pid

    gpus = running.get_gpu_status().set_index("gpu")
    g = running.job(job_id)["gpus"][0]
    assert gpus.loc[g, "memory_jobs"] == 3072
    assert gpus.loc[0, "memory_others"] == 20480
    assert "alice 20.0G" in gpus.loc[0, "who"] and f"job {job_id} 3.0G" in gpus.loc[g, "who"]

    _stop(running, job_id)
    running.wait([job_id], timeout=20)
    ended = running.job(job_id)
    assert ended["gpu_memory"] is None or ended["gpu_memory"] != ended["gpu_memory"]
    assert ended["gpu_memory_peak"] == 6144
    running.stop()
    running.close()
    again = make_sched()  # (a restart: the peak is stored with the job)
    assert again.job(job_id)["gpu_memory_peak"] == 6144


def test_queued_and_unknown_memory_is_missing_not_zero(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command("true")
    row = sched.job(job_id)
    assert row["gpu_memory"] is None and row["gpu_memory_peak"] is None
    table = sched.jobs()
    assert table["gpu_memory"].isna().all() and str(table["gpu_memory"].dtype) == "float64"
    assert sched.gpu_processes()["job"].isna().all()


def test_a_job_that_reports_no_memory_is_not_counted_as_someone_elses(
    running: GPUJobScheduler,
) -> None:
    """The simulated GPU charges a job its share until it reports; that memory is the
    job's in get_gpu_status(), not others' (the demo showed a full GPU as others')."""
    job_id = running.add_command(
        'while [ ! -e "$NBSCHED_RESULT_FILE.stop" ]; do sleep 0.05; done', required_gpus=1
    )
    _until(lambda: running.job(job_id)["status"] == "running")
    g = running.job(job_id)["gpus"][0]
    external = 20480 if g == 0 else 0  # (alice's, on GPU 0)
    _until(lambda: running.get_gpu_status().set_index("gpu").loc[g, "memory_used"] > external)
    gpus = running.get_gpu_status().set_index("gpu")
    assert gpus.loc[g, "memory_others"] == external
    assert gpus.loc[g, "memory_jobs"] == gpus.loc[g, "memory_used"] - external > 0
    # what it holds is not known (it reported nothing): shown as unknown, not as 0
    shown = running.job(job_id)["gpu_memory"]
    assert shown != shown  # NaN
    assert gpus.loc[g, "who"].split(";")[0] == f"job {job_id}"  # (not "job 1 0.0G")
    _stop(running, job_id)
    running.wait([job_id], timeout=20)
