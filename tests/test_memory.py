"""GPU memory requests: the value, the plan's memory fit (best-fit, promises, the
start-up race), and placement end to end on simulated GPUs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbsched import GPUJobScheduler
from nbsched.allocation import GpuState, plan
from nbsched.checks import check_gpu_memory
from nbsched.errors import InvalidTypeError, InvalidValueError
from nbsched.gpus import GpuSnapshot, write_simulated_gpus
from nbsched.gpus.memory_fit import MemoryFit, memory_free
from nbsched.jobs import Job, JobSpec, JobStatus

G = 1024.0


@pytest.mark.parametrize(
    ("value", "mb"),
    [("18G", 18 * G), ("18GB", 18 * G), ("1.5GiB", 1.5 * G), ("512M", 512.0), ("512mib", 512.0),
     (" 2 g ", 2 * G), ("1T", G * G), (1000, 1000.0), (0.5, 0.5), ("300", 300.0), (None, None)],
)  # fmt: skip
def test_amounts(value: object, mb: float | None) -> None:
    assert check_gpu_memory("gpu_memory", value) == mb


@pytest.mark.parametrize("value", ["18X", "G", "", "-1G", "0", 0, -5, float("nan"), "1e30G"])
def test_bad_amounts_name_the_value(value: object) -> None:
    with pytest.raises(InvalidValueError, match="gpu_memory=") as err:
        check_gpu_memory("gpu_memory", value)
    assert repr(value) in str(err.value) and "18G" in str(err.value)


@pytest.mark.parametrize("value", [True, [1], b"1G"])
def test_wrong_types(value: object) -> None:
    with pytest.raises(InvalidTypeError, match="gpu_memory="):
        check_gpu_memory("gpu_memory", value)


# ------------------------------------------------------------------ the plan's memory fit


def _job(seq: int, required: float = 0.01, priority: int = 0) -> Job:
    spec = JobSpec(kind="command", command="true", required_gpus=required, priority=priority)
    return Job(id=str(seq), seq=seq, status=JobStatus.QUEUED, spec=spec, submitted=0.0)


def _snap(index: int, used: float = 0.0, total: float = 80 * G) -> GpuSnapshot:
    return GpuSnapshot(index, None, "GPU", used, total, 0.0, used, 0.0)


def test_memory_free_subtracts_others_and_promises() -> None:
    reading = [_snap(0, used=30 * G), _snap(1, used=10 * G), _snap(2, total=None)]  # type: ignore[arg-type]
    # GPU 1's 10 GiB is job 5's (attributed): not others'; its promise is 16 GiB
    free = memory_free(reading, {1: 10 * G}, [("5", (1,), 16 * G), ("6", (0, 1), 4 * G)])
    assert free == {0: 80 * G - 30 * G - 4 * G, 1: 80 * G - 0 - 20 * G}


def test_best_fit_on_memory_and_never_twice() -> None:
    gpus = [GpuState(i) for i in range(3)]
    fit = MemoryFit({0: 40 * G, 1: 20 * G, 2: 80 * G}, {"1": 18 * G, "2": 18 * G, "3": 30 * G})
    decision = plan([_job(1), _job(2), _job(3)], gpus, now=0.0, memory=fit)
    where = {p.job_id: p.gpus for p in decision.placements}
    # 1: the tightest fit (GPU 1, 20 GiB); 2: GPU 1 has 2 GiB left now, so GPU 0 (40)
    # 3: GPU 0 has 22 left, so GPU 2
    assert where == {"1": (1,), "2": (0,), "3": (2,)}
    assert fit.free == {0: 22 * G, 1: 2 * G, 2: 50 * G}


def test_a_job_that_fits_nowhere_waits_and_says_why_and_others_go_on() -> None:
    gpus = [GpuState(0), GpuState(1)]
    fit = MemoryFit({0: 10 * G, 1: 12 * G}, {"1": 18 * G})
    decision = plan([_job(1), _job(2)], gpus, now=0.0, memory=fit)
    assert [p.job_id for p in decision.placements] == ["2"]  # (no need: not held back)
    assert decision.head_waiting is not None and decision.head_waiting[0] == "1"
    assert "18.0 GiB of GPU memory" in decision.head_waiting[1]
    assert "12.0 GiB (GPU 1)" in decision.head_waiting[1]


def test_memory_and_whole_gpus_together() -> None:
    gpus = [GpuState(0), GpuState(1), GpuState(2)]
    fit = MemoryFit({0: 70 * G, 1: 79 * G, 2: 79 * G}, {"1": 75 * G})
    decision = plan([_job(1, required=2)], gpus, now=0.0, memory=fit)
    assert [p.gpus for p in decision.placements] == [(1, 2)]


def test_without_memory_needs_the_plan_is_unchanged() -> None:
    gpus = [GpuState(0, allocated=0.5), GpuState(1)]
    queue = [_job(1, 0.5), _job(2, 0.25)]
    assert plan(queue, gpus, 0.0) == plan(queue, gpus, 0.0, memory=MemoryFit({0: 0.0}, {}))


# ------------------------------------------------------------------ end to end


@pytest.fixture
def scheduler_config(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "gpus.json"
    alice = {"pid": 4242, "user": "alice", "command": "vllm serve", "memory_mb": 60 * G}
    write_simulated_gpus(path, [{"memory_total_mb": 80 * G, "processes": [alice]},
                                {"memory_total_mb": 40 * G}])  # fmt: skip
    return {"num_gpus": 2, "simulated_gpus_file": str(path), "gpu_monitor_interval_s": 0.05}


def _until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _gate(s: GPUJobScheduler, job_id: str) -> None:
    (Path(s.config.state_dir) / "results" / f"{job_id}.json.go").touch()


#: A job that waits for its gate file (so a test decides when it ends).
GATED = 'while [ ! -e "$NBSCHED_RESULT_FILE.go" ]; do sleep 0.05; done'


def test_a_request_larger_than_any_gpu_is_refused_at_once(sched: GPUJobScheduler) -> None:
    with pytest.raises(InvalidValueError, match=r"gpu_memory='81G': more than any GPU has"):
        sched.add_command("true", gpu_memory="81G")
    with pytest.raises(InvalidValueError, match="more than any GPU it may use"):
        sched.add_command("true", gpu_memory="41G", allowed_gpus=[1])
    with pytest.raises(InvalidValueError, match="gpu_memory='lots'"):
        sched.add_job(__file__, gpu_memory="lots")
    assert sched.jobs().empty  # nothing half-done


def test_memory_alone_books_the_smallest_share(sched: GPUJobScheduler) -> None:
    row = sched.job(sched.add_command("true", gpu_memory="18G"))
    assert row["gpu_memory_request"] == 18 * G and row["required_gpus"] == 0.01
    both = sched.job(sched.add_command("true", gpu_memory=512, required_gpus=0.5))
    assert both["gpu_memory_request"] == 512 and both["required_gpus"] == 0.5


def test_jobs_go_where_their_memory_is_free_and_the_promise_counts_from_the_start(
    running: GPUJobScheduler,
) -> None:
    # GPU 0: 80 GiB less alice's 60 = 20 free; GPU 1: 40 free.  Neither job ever
    # holds memory (the start-up race at its worst): their promises must keep them apart.
    a = running.add_command(GATED, gpu_memory="15G")
    _until(lambda: running.job(a)["status"] == "running")
    b = running.add_command(GATED, gpu_memory="15G")
    _until(lambda: running.job(b)["status"] == "running")
    # 26 GiB: GPU 1 reads 40 free (b holds nothing yet), but 15 are promised to b
    c = running.add_command(GATED, gpu_memory="26G")
    time.sleep(0.5)
    rows = {j: running.job(j) for j in (a, b, c)}
    assert rows[a]["gpus"] == [0]  # best fit: the 20 GiB left beside alice
    assert rows[b]["gpus"] == [1]  # GPU 0 has 5 left once a's 15 are promised
    assert rows[c]["status"] == "queued"
    assert "needs 26.0 GiB of GPU memory" in running.why(c)
    _gate(running, b)
    _until(lambda: running.job(c)["status"] == "running")
    assert running.job(c)["gpus"] == [1]
    for j in (a, c):
        _gate(running, j)
    running.wait([a, b, c], timeout=30)


def test_mem_flag_llm_config_and_sweeps_ask_for_memory(
    tmp_path: Path, make_sched: Callable[..., GPUJobScheduler], capsys: pytest.CaptureFixture[str]
) -> None:
    from nbsched.cli import main

    state = str(tmp_path / "state")
    assert (
        main(["run", "--mem", "1.5G", "--state-dir", state, "--simulate", "2", "--", "true"]) == 0
    )
    with pytest.raises(SystemExit) as exited:
        main(["run", "--mem", "lots", "--state-dir", state, "--", "true"])
    assert exited.value.code == 2
    assert "argument --mem: --mem='lots': expected a size" in capsys.readouterr().err
    llm = tmp_path / "llm.json"
    llm.write_text('{"models": {"big": 0.5}, "memory": {"big": "30G", "small": 2048}}')
    script = tmp_path / "t.py"
    script.write_text("pass\n")
    s = make_sched(llm_config_file=str(llm))
    (first,) = s.jobs()["gpu_memory_request"]
    assert first == 1.5 * G
    big = s.job(s.add_job(str(script), args=["--llm", "big"]))
    small = s.job(s.add_job(str(script), args=["--llm", "small"]))
    own = s.job(s.add_job(str(script), args=["--llm", "big"], gpu_memory="1G"))
    assert (big["gpu_memory_request"], big["required_gpus"]) == (30 * G, 0.5)
    assert (small["gpu_memory_request"], small["required_gpus"]) == (2048, 0.01)
    assert own["gpu_memory_request"] == G
    ids = s.add_sweep(str(script), args="--seed {1,2}", gpu_memory="3G")
    assert [s.job(i)["gpu_memory_request"] for i in ids] == [3 * G, 3 * G]


def test_bad_memory_in_the_llm_config_names_the_file_and_model(tmp_path: Path) -> None:
    from nbsched.formats.llmconfig import load_llm_config

    llm = tmp_path / "llm.json"
    llm.write_text('{"memory": {"big": "30X"}}')
    with pytest.raises(InvalidValueError, match=r"llm.json: memory\['big'\]='30X'"):
        load_llm_config(llm)
