"""Dependencies across processes (issue 17): the dispatcher in ``nbsched serve``, a
client submitting and cancelling, an engine stopped and started again, and holds."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from legacy_support import subprocess_env
from waiting import wait_for

from nbsched import GPUJobScheduler, SchedulerConfig

MakeSched = Callable[..., GPUJobScheduler]
ENDED = ("succeeded", "failed", "cancelled")


def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_for(check, "the condition", timeout)


def _status(s: GPUJobScheduler, job_id: str) -> str:
    return str(s.job(job_id)["status"])


def _stays(s: GPUJobScheduler, job_id: str, status: str, seconds: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _status(s, job_id) == status
        time.sleep(0.05)


def test_serve_dispatches_what_a_client_chained(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nbsched.cli",
            "serve",
            "--simulate",
            "2",
            "--state-dir",
            str(state),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        _until(lambda: (state / "state.db").exists())
        with GPUJobScheduler(config=SchedulerConfig(state_dir=state)) as client:
            _until(lambda: client.engine_settings() is not None)
            mark = tmp_path / "a-done"
            a = client.add_command(f"sleep 1; touch {mark}")
            b = client.add_command(f"test -e {mark}", after=a)
            bad = client.add_command("exit 2")
            c = client.add_command("true", after=[bad])
            d = client.add_command("true", after={"ok": c})
            _until(lambda: all(_status(client, i) in ENDED for i in (a, b, bad, c, d)))
            assert [_status(client, i) for i in (a, b, bad, c, d)] == [
                "succeeded",
                "succeeded",
                "failed",
                "cancelled",
                "cancelled",
            ]
            assert client.job(d)["reason"] == f"dependency {c} was cancelled"
            assert client.job(b)["attempts"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_a_cancel_in_another_process_cancels_the_dependents(make_sched: MakeSched) -> None:
    engine = make_sched(start=True, num_gpus=1)
    other = make_sched()  # (not started: a client of the same state directory)
    engine.pause_gpu(0)
    a = other.add_command("true")
    b = other.add_command("true", after={"any": a})
    c = other.add_command("true", after=a)
    assert other.cancel(a)
    assert (_status(engine, c), engine.job(c)["reason"]) == (
        "cancelled",
        f"dependency {a} was cancelled",
    )
    engine.resume_gpu(0)
    _until(lambda: _status(engine, b) == "succeeded")


def test_dependencies_survive_a_restart(make_sched: MakeSched) -> None:
    first = make_sched(start=True, num_gpus=1)
    first.pause_gpu(0)
    a = first.add_command("true")
    b = first.add_command("true", after=a)
    sweep_wait = first.add_command("true", after={"started": a, "ok": b})
    first.stop()
    first.close()
    again = make_sched(start=True, num_gpus=1)
    assert again.why(b) == f"waits for job {a} to succeed"
    assert again.job(sweep_wait)["waiting"] is True
    again.resume_gpu(0)
    _until(lambda: all(_status(again, i) in ENDED for i in (a, b, sweep_wait)))
    assert [_status(again, i) for i in (a, b, sweep_wait)] == ["succeeded"] * 3


def test_a_held_job_with_a_dependency_needs_both(make_sched: MakeSched) -> None:
    s = make_sched(start=True, num_gpus=1)
    s.pause_gpu(0)
    a = s.add_command("true")
    b = s.add_command("true", after=a)
    s.hold(b)
    assert s.why(b).startswith("held")
    s.release(b)  # (released, it still waits for a)
    assert s.job(b)["reason"] == f"waits for {a}" and s.why(b).startswith("waits for job")
    s.hold(b)
    s.resume_gpu(0)
    _until(lambda: _status(s, a) == "succeeded")
    _stays(s, b, "queued", 0.5)  # (met, but held)
    assert s.job(b)["waiting"] is False and s.job(b)["held"] is True
    s.release(b)
    _until(lambda: _status(s, b) == "succeeded")
