"""Hold, release, priority and drain (issue 17): from the API, from a second scheduler
on the same state directory (the change feed's path to the dispatcher), from the CLI
and from ``%gpusched``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import run_cli
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.errors import InvalidTypeError, InvalidValueError

MakeSched = Callable[..., GPUJobScheduler]
HELD = "held (release it with release(...))"


def _until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    wait_for(check, "the condition", timeout)


def _status(s: GPUJobScheduler, job_id: str) -> str:
    return str(s.job(job_id)["status"])


def _stays_queued(s: GPUJobScheduler, job_id: str, seconds: float = 1.0) -> None:
    """The job is still queued after the dispatcher has had several turns."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _status(s, job_id) == "queued"
        time.sleep(0.05)


def test_a_held_job_never_starts_until_released(make_sched: MakeSched) -> None:
    s = make_sched(start=True, num_gpus=1)
    s.pause_gpu(0)
    a, b = s.add_command("sleep 30"), s.add_command("true")
    assert s.hold(a) == [a]
    assert f"job {a}" not in s.why(b)  # (a held job is not ahead of any)
    s.cancel(b)
    s.resume_gpu(0)  # (the GPU is free: only the hold keeps the job back)
    _stays_queued(s, a)
    row = s.job(a)
    assert row["held"] is True and row["reason"] == HELD
    assert s.why(a) == HELD
    assert bool(s.jobs().set_index("id").loc[a, "held"]) is True
    assert s.release([a]) == [a]
    _until(lambda: _status(s, a) == "running")
    assert s.job(a)["held"] is False


def test_only_queued_jobs_are_held_and_every_id_is_checked_first(make_sched: MakeSched) -> None:
    s = make_sched(start=True, num_gpus=1)
    a = s.add_command("sleep 30")
    _until(lambda: _status(s, a) == "running")
    b = s.add_command("true")
    with pytest.raises(InvalidValueError, match=f"job {a} is running; only queued jobs"):
        s.hold([b, a])
    assert s.job(b)["held"] is False  # (checked all, then did nothing)
    s.cancel(a)
    with pytest.raises(InvalidValueError, match=f"job {a} is cancelled"):
        s.release(a)
    with pytest.raises(InvalidValueError, match=f"job {a} is cancelled"):
        s.set_priority(a, -5)


def test_set_priority_reorders_the_queue(make_sched: MakeSched) -> None:
    s = make_sched(start=True, num_gpus=1)
    s.pause_gpu(0)
    a, b = s.add_command("sleep 30"), s.add_command("sleep 30")
    with pytest.raises(InvalidTypeError, match="priority='soon': expected an integer"):
        s.set_priority(b, "soon")  # type: ignore[arg-type]
    assert s.set_priority([b], -5) == [b]
    assert s.job(b)["priority"] == -5
    s.resume_gpu(0)
    _until(lambda: _status(s, b) == "running")
    assert _status(s, a) == "queued"


def test_another_schedulers_hold_release_and_priority_reach_the_dispatcher(
    make_sched: MakeSched,
) -> None:
    engine = make_sched(start=True, num_gpus=1)
    other = make_sched()  # (not started: a client of the same state directory)
    engine.pause_gpu(0)
    a, b, c = (engine.add_command("sleep 30") for _ in range(3))
    other.hold([a])
    other.set_priority(c, -1)
    engine.resume_gpu(0)
    _until(lambda: _status(engine, c) == "running")
    _stays_queued(engine, a, 0.5)
    engine.cancel(c)
    _until(lambda: _status(engine, b) == "running")
    assert _status(engine, a) == "queued"
    other.release(a)
    engine.cancel(b)
    _until(lambda: _status(engine, a) == "running")


def test_drain_pauses_every_gpu_and_returns_when_the_running_jobs_end(
    make_sched: MakeSched,
) -> None:
    s = make_sched(start=True, num_gpus=2)
    a = s.add_command("sleep 1")
    _until(lambda: _status(s, a) == "running")
    ended = s.drain(timeout=30)
    assert list(ended["id"]) == [a] and list(ended["status"]) == ["succeeded"]
    assert bool(s.get_gpu_status()["paused"].all())
    b = s.add_command("true")
    _stays_queued(s, b, 0.5)
    with pytest.raises(TimeoutError):
        s.resume_gpu(0)
        c = s.add_command("sleep 30")
        _until(lambda: _status(s, c) == "running")
        s.drain(timeout=0.2)


def _cli(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    return run_cli(list(words), capsys)


def test_the_cli_verbs(make_sched: MakeSched, capsys: pytest.CaptureFixture[str]) -> None:
    s = make_sched(start=True, num_gpus=1)
    st = ["--state-dir", str(s.config.state_dir)]
    s.pause_gpu(0)
    a, b = s.add_command("sleep 30"), s.add_command("sleep 1")
    assert _cli(capsys, "hold", a, b, *st) == (0, f"{a}\n{b}\n", "")
    assert s.job(a)["held"] and s.job(b)["held"]
    assert _cli(capsys, "release", b, "--json", *st) == (0, f'{{"release": ["{b}"]}}\n', "")
    assert _cli(capsys, "priority", "-3", b, *st)[:2] == (0, f"{b}\n")
    assert s.job(b)["priority"] == -3
    rc, _, err = _cli(capsys, "hold", *st)
    assert rc == 2 and "required: ID" in err
    rc, _, err = _cli(capsys, "hold", "999999", *st)
    assert rc == 2 and "999999" in err
    s.resume_gpu(0)
    _until(lambda: _status(s, b) == "running")
    rc, out, _ = _cli(capsys, "drain", "--timeout", "30", *st)
    assert rc == 0 and b in out
    assert bool(s.get_gpu_status()["paused"].all()) and _status(s, a) == "queued"


def gs(ip: InteractiveShell, line: str) -> Any:
    return ip.run_line_magic("gpusched", line)


def test_the_magic_verbs(ip: InteractiveShell, tmp_path: Path) -> None:
    s: GPUJobScheduler = gs(ip, f"start --simulate 1 --state-dir {tmp_path / 'state'}")
    gs(ip, "pause 0")
    a, b = gs(ip, "run -- sleep 30"), gs(ip, "run -- sleep 1")
    assert gs(ip, f"hold {a}") == a
    assert s.job(a)["held"] is True
    ip.user_ns["none"] = []
    assert gs(ip, "hold $none") == []
    with pytest.raises(UsageError, match="required: ID"):
        gs(ip, "release")
    assert gs(ip, f"priority -2 {a} {b}") == [a, b]
    assert s.job(b)["priority"] == -2
    with pytest.raises(UsageError, match=f"%gpusched hold: hold\\(\\): job {a}"):
        gs(ip, f"cancel {a}")
        gs(ip, f"hold {a}")
    gs(ip, "resume 0")
    _until(lambda: _status(s, b) == "running")
    ended = gs(ip, "drain --timeout 30")
    assert list(ended["id"]) == [b] and list(ended["status"]) == ["succeeded"]
    assert bool(s.get_gpu_status()["paused"].all())
