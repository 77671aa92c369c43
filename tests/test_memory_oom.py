"""Out of GPU memory: the reason from the log's tail, one retry with more room, never
a loop, and what attempts and the log's separator say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import InvalidTypeError
from nbsched.gpus.oom import MARKERS, OutOfMemory, oom_line, out_of_memory
from nbsched.jobs import Job, JobSpec, JobStatus

G = 1024.0


def _job(log: str) -> Job:
    spec = JobSpec(kind="command", command="x", required_gpus=1.0)
    return Job(id="1", seq=1, status=JobStatus.RUNNING, spec=spec, submitted=0.0, log_path=log)


@pytest.mark.parametrize(
    "line",
    [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB",
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory",
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`",
    ],
)
def test_each_framework_is_recognised(tmp_path: Path, line: str) -> None:
    log = tmp_path / "job.log"
    log.write_text("x" * 40000 + "\nTraceback (most recent call last):\n" + line + "\n")
    assert oom_line(log) == line
    job = _job(str(log))
    found = out_of_memory(job, 1, True, None)
    assert found is not None and found.retry == 0.0  # (no GPU says its size: no cap)
    assert out_of_memory(job, 0, True, None) is None  # (it succeeded)
    assert out_of_memory(job, 1, False, None) == OutOfMemory(line, None)  # (oom_retry off)
    again = out_of_memory(job.evolve(oom_retried=True), 1, True, None)
    assert again is not None and again.retry is None  # (retried once already)


def test_a_plain_failure_is_not_out_of_memory(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text("ValueError: bad learning rate\n")
    assert oom_line(log) is None and oom_line(tmp_path / "missing.log") is None
    assert len(MARKERS) >= 5


def test_oom_retry_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(InvalidTypeError, match="oom_retry='yes': expected True or False"):
        SchedulerConfig(state_dir=tmp_path / "s", oom_retry="yes")  # type: ignore[arg-type]


@pytest.fixture
def scheduler_config() -> dict[str, Any]:
    return {"num_gpus": 2, "gpu_monitor_interval_s": 0.05, "start": True}


#: Holds 10 GiB, then runs out of memory, on its first attempt; succeeds on the next.
OOM_ONCE = (
    'if [ -e "$NBSCHED_RESULT_FILE.again" ]; then echo second; exit 0; fi; '
    'touch "$NBSCHED_RESULT_FILE.again"; echo 10240 > "$NBSCHED_RESULT_FILE.gpu_memory"; '
    "sleep 0.5; echo 'torch.OutOfMemoryError: CUDA out of memory.' >&2; exit 3"
)
OOM_ALWAYS = "echo 'RESOURCE_EXHAUSTED: Out of memory while trying to allocate' >&2; exit 1"


def test_out_of_memory_is_retried_once_with_more_room(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command(OOM_ONCE, required_gpus=0.01)
    (row,) = sched.wait([job_id], timeout=30).itertuples()
    assert (row.status, row.attempts) == ("succeeded", 2)
    job = sched.store.get(job_id)
    assert job.oom_retried and job.gpu_memory_learned == 10240 * 1.25 + 1024
    log = sched.logs(job_id, tail=None)
    assert (
        "--- nbsched: attempt 2 (after running out of GPU memory: 13.5 GiB of GPU memory) ---"
        in log
    )
    sql = "SELECT reason FROM transitions WHERE job_seq = ? ORDER BY id"
    reasons = [r for (r,) in sched.store._db.read(sql, (int(job_id),))]
    assert "attempt 1 failed (out of GPU memory); queued once more with more GPU memory" in reasons


def test_it_never_loops_and_says_out_of_gpu_memory(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command(OOM_ALWAYS, required_gpus=0.01)
    (row,) = sched.wait([job_id], timeout=30).itertuples()
    assert (row.status, row.attempts, row.reason) == ("failed", 2, "out of GPU memory")
    assert row.exit_code == 1
    # with no memory known of it, its retry was charged a whole GPU's memory
    assert sched.store.get(job_id).gpu_memory_learned == 81920


def test_without_oom_retry_it_fails_at_once(make_sched: Any) -> None:
    s = make_sched(oom_retry=False)
    job_id = s.add_command(OOM_ALWAYS)
    (row,) = s.wait([job_id], timeout=30).itertuples()
    assert (row.status, row.attempts, row.reason) == ("failed", 1, "out of GPU memory")
    plain = s.add_command("exit 4")
    (row,) = s.wait([plain], timeout=30).itertuples()
    assert row.reason == "exit code 4"
