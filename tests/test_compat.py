"""``nbsched.compat``: the original program's calls and commands, written as its users
wrote them (its README's examples and the calls its write-up promises), on nbsched."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from legacy_support import subprocess_env, wait_for, write_exe

from nbsched import SchedulerConfig
from nbsched.compat import GPUJobScheduler
from nbsched.compat.cli import build_parser

Make = Callable[..., GPUJobScheduler]

# Prints its arguments, then waits until the file named by $HOLD (if set) is gone.
TRAIN = """\
import os, sys, time
print("args", sys.argv[1:], "CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
hold = os.environ.get("HOLD")
while hold and os.path.exists(hold):
    time.sleep(0.02)
"""

LLM_CONFIG = {"default_requirement": 1.0, "models": {"qwen2.5-3b-inst": 0.5, "big-model": 2}}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own folder, as the original ran in its user's folder,
    with a script, the LLM config, and nbsched's state under it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBSCHED_HOME", str(tmp_path / "nbsched-state"))
    monkeypatch.delenv("NBSCHED_SIMULATED_GPUS", raising=False)
    write_exe(tmp_path / "train.py", TRAIN)
    (tmp_path / "llm_config.json").write_text(json.dumps(LLM_CONFIG))
    return tmp_path


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """``make(**original_keywords)``: the compat scheduler on 4 simulated GPUs."""
    made: list[GPUJobScheduler] = []

    def build(**kw: Any) -> GPUJobScheduler:
        kw.setdefault("num_gpus", 4)
        config = SchedulerConfig(state_dir=tmp_path / "nbsched-state", gpu_provider="simulated")
        s = GPUJobScheduler(config=config, **kw)
        made.append(s)
        return s

    yield build
    for s in made:
        s.nbsched.stop(kill=True)
        s.close()


def _log(s: GPUJobScheduler, job_id: str) -> str:
    return s.nbsched.logs(job_id, tail=None)


# ------------------------------------------------------------------ the write-up's example


def test_the_write_ups_example_runs_with_only_the_import_changed(tmp_path: Path) -> None:
    scheduler = GPUJobScheduler(num_gpus=8, jobs_file_path="jobs.txt")
    try:
        scheduler.start()
        scheduler.add_job("train.py", None, ["--llm", "big-model"])
        status = scheduler.get_gpu_status()
        assert [gpu["gpu_id"] for gpu in status] == list(range(8))
        for gpu in status:
            assert set(gpu) == {"gpu_id", "state", "allocation", "memory_util", "load"}
        scheduler.nbsched.wait(timeout=30)
        (job,) = scheduler.nbsched.jobs().to_dict("records")
        # ./llm_config.json was read: the model needs 2 GPUs, and the job got them
        assert (job["status"], job["required_gpus"], len(job["gpus"])) == ("succeeded", 2.0, 2)
    finally:
        scheduler.stop()
        scheduler.close()


def test_the_original_keywords_are_taken(make: Make, tmp_path: Path) -> None:
    s = make(
        num_gpus=4,
        gpu_memory_threshold=0.5,
        gpu_load_threshold=0.7,
        jobs_file_path="jobs.txt",
        llm_config_path="llm_config.json",
        state_file_path="my_state.json",
        monitor_interval=5,
        state_check_interval=3,
        max_assignment_attempts=2,
        assignment_retry_wait=1,
    )
    config = s.nbsched.config
    assert (config.gpu_memory_threshold, config.gpu_load_threshold) == (0.5, 0.7)
    assert config.llm_config_file == str(tmp_path / "llm_config.json")
    assert s.get_llm_gpu_requirement("qwen2.5-3b-inst") == 0.5
    assert s.get_llm_gpu_requirement("unknown") == 1.0
    assert (s.num_gpus, s.state_file, s.file_monitor_interval) == (4, Path("my_state.json"), 5)


def test_a_missing_llm_config_is_a_warning_as_in_the_original(
    make: Make, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "llm_config.json").unlink()
    with caplog.at_level(logging.WARNING, "nbsched.compat"):
        s = make()
    assert "LLM config file not found" in caplog.text
    assert s.default_llm_requirement == 1.0 and s.llm_requirements == {}


# ------------------------------------------------------------------ add_job


def test_add_job_takes_allowed_gpus_fifth_and_appends_cuda(make: Make) -> None:
    s = make()
    s.start()
    job_id = s.add_job("train.py", None, ["--epochs", "3"], 0, [2, 3])
    assert isinstance(job_id, str)
    s.nbsched.wait([job_id], timeout=30)
    job = s.nbsched.job(job_id)
    assert job["status"] == "succeeded" and set(job["gpus"]) <= {2, 3}
    # the original's --cuda, with the job's own GPU index
    assert "args ['--epochs', '3', '--cuda', '0']" in _log(s, job_id)


def test_allowed_gpus_that_do_not_exist_are_dropped_with_a_warning(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    s = make()
    with caplog.at_level(logging.WARNING, "nbsched.compat"):
        job_id = s.add_job("train.py", None, [], 0, [1, 99])
        none = s.add_job("train.py", None, [], 0, [99])
    assert job_id is not None and none is None
    assert "Invalid GPU IDs removed" in caplog.text and "No valid GPUs" in caplog.text
    (row,) = s.get_job_queue_info()
    assert row[5] == [1]


def test_a_missing_script_is_logged_and_not_added(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    s = make()
    with caplog.at_level(logging.ERROR, "nbsched.compat"):
        assert s.add_job("nope.py", "env", ["--x"]) is None
    assert "Script path not found" in caplog.text
    assert s.get_job_queue_info() == []


def test_a_job_with_an_original_line_is_added_once_per_run(make: Make) -> None:
    s = make()
    line = "0,train.py,,--seed 1\n"
    first = s.add_job("train.py", None, ["--seed", "1"], 0, None, original_line=line)
    again = s.add_job("train.py", None, ["--seed", "1"], 0, None, original_line=line)
    assert first is not None and again is None
    (row,) = s.get_job_queue_info()
    assert row[9] == line and row[6] is not None


# ------------------------------------------------------------------ reading


def test_get_gpu_status_has_the_originals_keys_and_formats(make: Make, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    s = make()
    s.start()
    s.pause_gpu(3)
    job_id = s.nbsched.add_job(
        "train.py", args=["--llm", "qwen2.5-3b-inst"], env={"HOLD": str(hold)}
    )
    wait_for(lambda: s.nbsched.job(job_id)["status"] == "running", timeout=30)
    status = s.get_gpu_status()
    busy = [g for g in status if g["state"].startswith("BUSY")]
    assert [g["state"] for g in busy] == ["BUSY (50%)"] and busy[0]["allocation"] == "0.50"
    assert status[3]["state"] == "PAUSED"
    assert {g["state"] for g in status} == {"BUSY (50%)", "PAUSED", "AVAILABLE"}
    for gpu in status:
        assert re.fullmatch(r"\d+\.\d%|N/A", gpu["memory_util"]), gpu
        assert re.fullmatch(r"\d+\.\d%|N/A", gpu["load"]), gpu
        assert re.fullmatch(r"\d\.\d\d", gpu["allocation"]), gpu
    hold.unlink()
    s.nbsched.wait([job_id], timeout=30)


def test_get_job_queue_info_gives_the_originals_tuples_in_order(make: Make) -> None:
    s = make()
    late = s.add_job("train.py", None, ["--llm", "big-model"], 5)
    soon = s.add_job("train.py", "myenv", ["--llm", "qwen2.5-3b-inst"], 1, [0, 1])
    rows = s.get_job_queue_info()
    assert [r[1] for r in rows] == [soon, late]
    assert rows[0] == (
        1,
        soon,
        "train.py",
        "myenv",
        ["--llm", "qwen2.5-3b-inst"],
        [0, 1],
        None,
        0.5,
        "qwen2.5-3b-inst",
        None,
    )
    assert rows[1][7] == 2.0 and rows[1][8] == "big-model"


# ------------------------------------------------------------------ the jobs file


def test_add_jobs_from_file_reads_both_line_forms_once(make: Make, tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text(
        "# priority,script_path,conda_env,arguments,allowed_gpus\n"
        "0,train.py,,--llm qwen2.5-3b-inst --seed 1,0-1\n"
        "1,train.py,,python,--seed 2,\n"
        "2,train.py,,torchrun-2gpu,--seed 3,\n"
    )
    s = make()
    ids = s.add_jobs_from_file("jobs.txt", initial_load=True)
    assert len(ids) == 3
    assert s.add_jobs_from_file("jobs.txt") == []
    rows = s.get_job_queue_info()
    assert [r[7] for r in rows] == [0.5, 1.0, 2.0]
    assert rows[0][8] == "qwen2.5-3b-inst"


def test_the_jobs_file_is_watched_and_each_assignment_logged(
    make: Make, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("0,train.py,,--seed 1,\n")
    s = make(jobs_file_path="jobs.txt", monitor_interval=0.1)
    with caplog.at_level(logging.INFO, "nbsched.compat"):
        s.start()
        wait_for(lambda: len(s.nbsched.jobs()) == 1, timeout=30)
        with jobs.open("a") as fh:
            fh.write("0,train.py,,--seed 2,3\n")
        wait_for(lambda: len(s.nbsched.jobs()) == 2, timeout=30)
        s.nbsched.wait(timeout=30)
        wait_for(lambda: caplog.text.count("Success: True. Releasing") == 2, timeout=30)
    assert caplog.text.count("Assigning job ID") == 2
    assert re.search(
        r"Assigning job ID \d+ \(LLM: None, Req: 1\.00\) to GPU\(s\) \[3\]", caplog.text
    )


# ------------------------------------------------------------------ pause, resume, the state file


def test_pause_and_resume_as_in_the_original(make: Make, tmp_path: Path) -> None:
    s = make()
    assert s.pause_gpu(1) is True
    assert s.paused_gpus == {1}
    assert json.loads((tmp_path / "gpu_scheduler_state.json").read_text())["paused_gpus"] == [1]
    assert s.pause_gpu(9) is False  # (the original logged an invalid GPU ID and went on)
    assert s.resume_gpu(1) is True and s.paused_gpus == set()
    assert s._pause_gpu_internal(2) and s._resume_gpu_internal(2)


def test_a_pause_written_to_the_state_file_is_taken_while_running(
    make: Make, tmp_path: Path
) -> None:
    s = make(state_check_interval=0.1)
    s.start()
    state = tmp_path / "gpu_scheduler_state.json"
    state.write_text(json.dumps({"gpu_status": [0.0] * 4, "paused_gpus": [2]}))
    wait_for(lambda: s.paused_gpus == {2}, timeout=30)
    state.write_text(json.dumps({"gpu_status": [0.0] * 4, "paused_gpus": []}))
    wait_for(lambda: s.paused_gpus == set(), timeout=30)


def _original_log(path: Path, *lines: tuple[str, bool]) -> None:
    """A log as the original wrote it: one completion line per (jobs-file line, success)."""
    with path.open("w") as fh:
        for i, (line, ok) in enumerate(lines):
            fh.write(
                f"2025-07-08 16:0{i}:00,000 - GPUJobScheduler - {'INFO' if ok else 'WARNING'} - "
                f"[JobRunner-GPU0-x-{i}] - GPU(s) 0: Job ID 5d1c-{i} (Hash: ab{i}, Name: "
                f"'train.py', Mode: unknown) finished due to direct execution completion "
                f"(Success: {ok}) in 9.61 seconds. Success: {ok}. Releasing allocation "
                f"(Req: 1.00). [Original Line: {line}]\n"
            )


def test_the_state_file_brings_its_pauses_and_the_jobs_already_run(
    make: Make, tmp_path: Path
) -> None:
    lines = ["0,train.py,,--seed 1,", "0,train.py,,--seed 2,", "0,train.py,,--seed 3,"]
    (tmp_path / "jobs.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "gpu_scheduler_state.json").write_text(
        json.dumps({"gpu_status": [0.0, 0.0, 0.0, 0.0], "paused_gpus": [2]}, indent=4)
    )
    # the original ran lines 1 and 2; line 2 failed (it would have run it again)
    _original_log(tmp_path / "gpu_scheduler.log", (lines[0], True), (lines[1], False))
    s = make(jobs_file_path="jobs.txt", monitor_interval=0.1)
    assert s.paused_gpus == {2}
    s.start()
    wait_for(lambda: len(s.nbsched.jobs()) == 3, timeout=30)
    s.nbsched.wait(timeout=30)
    jobs = s.nbsched.jobs().to_dict("records")
    assert [j["status"] for j in jobs] == ["cancelled", "succeeded", "succeeded"]
    assert "ran under the original scheduler" in jobs[0]["reason"]
    assert all(2 not in j["gpus"] for j in jobs)
    # a restart, with the same files, runs nothing again
    s.close()
    again = make(jobs_file_path="jobs.txt", monitor_interval=0.1)
    again.start()
    assert again.add_jobs_from_file("jobs.txt") == []
    assert len(again.nbsched.jobs()) == 3


# ------------------------------------------------------------------ screen, start, stop


def test_enable_screen_runs_the_jobs_in_screen(make: Make) -> None:
    s = make()
    s.enable_screen()
    assert s.use_screen and s.nbsched.config.executor == "screen"
    s.start()
    job_id = s.add_job("train.py", None, ["--x", "1"])
    assert job_id is not None
    s.nbsched.wait([job_id], timeout=60)
    assert s.nbsched.job(job_id)["status"] == "succeeded"
    assert "'--x', '1', '--cuda', '0'" in _log(s, job_id)


def test_start_stop_start(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    s = make()
    with caplog.at_level(logging.INFO, "nbsched.compat"):
        s.start()
        s.start()
        s.stop()
        s.start()
    assert "already started" in caplog.text and "Scheduler stopped." in caplog.text
    job_id = s.add_job("train.py")
    assert job_id is not None
    s.nbsched.wait([job_id], timeout=30)


# ------------------------------------------------------------------ the command


def _command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nbsched.compat", *args, "--gpu-provider", "simulated"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(NBSCHED_HOME=str(tmp_path / "nbsched-state")),
        timeout=120,
    )


def test_the_commands_verbs_and_flags_are_the_originals() -> None:
    parser = build_parser()
    ns = parser.parse_args(
        "--state-file s.json start --gpus 8 --jobs-file j.txt --llm-config l.json --screen "
        "--mem-threshold 0.5 --load-threshold 0.6 --monitor-interval 10 --state-interval 5 "
        "--max-assign-attempts 3 --assign-retry-wait 2".split()
    )
    assert (ns.state_file, ns.gpus, ns.jobs_file, ns.screen) == ("s.json", 8, "j.txt", True)
    ns = parser.parse_args(["add", "t.py", "--conda", "e", "--args", "--lr 1", "--gpus", "0,1"])
    assert (ns.conda, ns.args, ns.gpus, ns.priority, ns.output_file) == (
        "e",
        "--lr 1",
        "0,1",
        0,
        "jobs.txt",
    )
    for verb in (["status"], ["pause", "1"], ["resume", "1"], ["screens"]):
        assert parser.parse_args(verb).command == verb[0]
    # (--state-file after the verb too, as the original's README lists it under start)
    assert parser.parse_args(["pause", "1", "--state-file", "x.json"]).state_file == "x.json"


def test_add_writes_the_originals_line(tmp_path: Path) -> None:
    done = _command(
        tmp_path,
        "add",
        "train.py",
        "--conda",
        "myenv",
        "--args",
        "--llm big-model --lr 0.1",
        "--gpus",
        "3",
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "jobs.txt").read_text() == "0,train.py,myenv,--llm big-model --lr 0.1,3\n"
    printed = _command(tmp_path, "add", "train.py", "--priority", "2", "--output-file", "-")
    assert printed.stdout.strip() == "2,train.py"


def test_pause_status_resume_commands(tmp_path: Path) -> None:
    state = tmp_path / "gpu_scheduler_state.json"
    state.write_text(json.dumps({"gpu_status": [0.0] * 4, "paused_gpus": []}))
    paused = _command(tmp_path, "pause", "1")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(state.read_text())["paused_gpus"] == [1]
    status = _command(tmp_path, "status")
    assert re.search(r"^1\s+PAUSED\s+0\.00", status.stdout, re.M), status.stdout
    assert re.search(r"^0\s+AVAILABLE\s+0\.00", status.stdout, re.M)
    assert _command(tmp_path, "resume", "1").returncode == 0
    assert json.loads(state.read_text())["paused_gpus"] == []
    bad = _command(tmp_path, "pause", "7")
    assert "Invalid GPU ID 7" in bad.stdout


def test_start_runs_the_jobs_file_and_logs_each_assignment(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text("0,train.py,,--seed 1,2\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nbsched.compat",
            "start",
            "--gpus",
            "4",
            "--jobs-file",
            "jobs.txt",
            "--monitor-interval",
            "0.1",
            "--gpu-provider",
            "simulated",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(NBSCHED_HOME=str(tmp_path / "nbsched-state")),
    )
    log = tmp_path / "gpu_scheduler.log"
    try:
        wait_for(lambda: log.exists() and "Success: True. Releasing" in log.read_text(), timeout=60)
        assert _command(tmp_path, "add", "train.py", "--args", "--seed 2").returncode == 0
        wait_for(lambda: log.read_text().count("Success: True. Releasing") == 2, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    text = log.read_text()
    assert re.search(r"Assigning job ID \d+ \(LLM: None, Req: 1\.00\) to GPU\(s\) \[2\]", text)
    assert "Scheduler shutdown complete." in out
