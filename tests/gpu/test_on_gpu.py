"""nbsched on a real NVIDIA GPU (``pytest -m gpu tests/gpu``; ``tests/gpu/check_on_gpu.sh``).

Skipped, with the reason, where no NVIDIA driver is present.  Needs nothing from the
network: memory is allocated through the driver's ``libcuda.so`` with ctypes
(``cuda_alloc.py``).  Checks:

- NVML's readings against ``nvidia-smi --query-gpu`` and ``--query-compute-apps``;
- a job allocating memory is attributed to the right job, with the right peak;
- two jobs with memory requests share one GPU as promised, and a third that would not
  fit beside them waits.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.gpus import NvmlProvider

ALLOC = str(Path(__file__).with_name("cuda_alloc.py"))


def _why_not() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA driver here (nvidia-smi is not on PATH)"
    provider = NvmlProvider()
    try:
        if not provider.is_available():
            return f"NVML does not initialise: {provider.unavailable_reason}"
    finally:
        provider.close()
    return None


WHY_NOT = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

#: MiB two readings taken a moment apart may differ by (others' programs move).
SLACK_MB = 256.0


def _smi(query: str, fields: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-{query}={fields}", "--format=csv,noheader,nounits"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def _until(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def holder() -> Iterator[Callable[[int, float], subprocess.Popen[str]]]:
    """Start processes that hold GPU memory on GPU 0 (killed at the end)."""
    started: list[subprocess.Popen[str]] = []

    def start(mib: int, seconds: float) -> subprocess.Popen[str]:
        env = {"CUDA_VISIBLE_DEVICES": "0", "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen(
            [sys.executable, ALLOC, str(mib), str(seconds)],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "allocated"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_nvml_readings_match_nvidia_smi() -> None:
    provider = NvmlProvider()
    try:
        reading = provider.snapshot()
        smi = _smi("gpu", "index,uuid,name,memory.total,memory.used")
    finally:
        provider.close()
    assert [g.index for g in reading] == [int(row[0]) for row in smi]
    for gpu, (_, uuid, name, total, used) in zip(reading, smi, strict=True):
        assert (gpu.uuid, gpu.name) == (uuid, name)
        assert gpu.memory_total_mb is not None and abs(gpu.memory_total_mb - float(total)) <= 1
        assert gpu.memory_used_mb is not None
        assert abs(gpu.memory_used_mb - float(used)) <= SLACK_MB
        assert gpu.processes is not None


def test_nvml_processes_match_query_compute_apps(
    holder: Callable[[int, float], subprocess.Popen[str]],
) -> None:
    proc = holder(1024, 60)
    provider = NvmlProvider()
    try:
        reading = provider.snapshot()
        apps = _smi("compute-apps", "pid,gpu_uuid,used_memory")
    finally:
        provider.close()
    by_uuid = {g.uuid: g for g in reading}
    seen = {(p.pid, g.uuid): p.used_mb for g in reading for p in g.processes or ()}
    for pid, uuid, used in apps:
        assert uuid in by_uuid
        assert (int(pid), uuid) in seen, f"nvidia-smi lists pid {pid} on {uuid}; NVML does not"
        mb = seen[(int(pid), uuid)]
        if used.isdigit() and mb is not None:
            assert abs(mb - float(used)) <= SLACK_MB
    ours = [mb for (pid, uuid), mb in seen.items() if pid == proc.pid]
    assert ours and ours[0] is not None and ours[0] >= 1024


@pytest.fixture
def gpu_sched(tmp_path: Path) -> Iterator[GPUJobScheduler]:
    config = SchedulerConfig(
        state_dir=tmp_path / "state", gpu_provider="nvml", num_gpus=1,
        gpu_monitor_interval_s=0.1, gpu_memory_threshold=1.0, gpu_load_threshold=1.0,
    )  # fmt: skip
    s = GPUJobScheduler(config=config).start()
    yield s
    s.stop(kill=True)
    s.close()


def _job(mib: int, seconds: float) -> str:
    return f"{sys.executable} {ALLOC} {mib} {seconds}"


def test_a_job_holding_memory_is_attributed_with_its_peak(gpu_sched: GPUJobScheduler) -> None:
    s = gpu_sched
    job_id = s.add_command(_job(2048, 4), required_gpus=0.5)
    _until(lambda: (s.job(job_id)["gpu_memory"] or 0) >= 2048, what="the job's memory")
    procs = s.gpu_processes()
    mine = procs[procs["job"] == job_id]
    assert len(mine) == 1 and mine["memory"].iloc[0] >= 2048
    assert (s.get_gpu_status()["memory_jobs"] >= 2048).all()
    (row,) = s.wait([job_id], timeout=60).itertuples()
    assert row.status == "succeeded"
    # the peak: the 2 GiB plus the context the driver keeps (a few hundred MiB)
    assert 2048 <= row.gpu_memory_peak <= 2048 + 1024


def test_two_jobs_with_requests_share_one_gpu_as_promised(gpu_sched: GPUJobScheduler) -> None:
    s = gpu_sched
    status = s.get_gpu_status().iloc[0]
    total, others = float(status["memory_total"]), float(status["memory_others"] or 0.0)
    a = s.add_command(_job(3072, 6), gpu_memory="4G")
    b = s.add_command(_job(3072, 6), gpu_memory="4G")
    # a third that fits only if a's and b's promises were forgotten
    rest = total - others - 2 * 4096
    c = s.add_command(_job(1024, 1), gpu_memory=rest - 1024 + 2048) if rest > 4096 else None
    _until(lambda: s.job(a)["status"] == "running" and s.job(b)["status"] == "running",
           what="both jobs running")  # fmt: skip
    assert s.job(a)["gpus"] == s.job(b)["gpus"] == [0]
    if c is not None:
        assert s.job(c)["status"] == "queued" and "GPU memory" in s.why(c)
    done = s.wait([x for x in (a, b, c) if x], timeout=120)
    assert (done["status"] == "succeeded").all(), done[["id", "status", "reason"]]
    if c is not None:
        assert s.job(c)["started"] >= min(s.job(a)["ended"], s.job(b)["ended"])
