"""Dependencies (issue 17): ``after=`` from the API, judged by a real engine running real
processes: what waits, what is released, what is cancelled with which reason, and what
is refused at submission."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.errors import InvalidTypeError, InvalidValueError, UnknownJobError

MakeSched = Callable[..., GPUJobScheduler]


def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    wait_for(check, "the condition", timeout)


def _status(s: GPUJobScheduler, job_id: str) -> str:
    return str(s.job(job_id)["status"])


def _ended(s: GPUJobScheduler, *ids: str) -> None:
    _until(lambda: all(s.job(i)["status"] in ("succeeded", "failed", "cancelled") for i in ids))


def test_a_job_waits_for_its_dependency_to_succeed(make_sched: MakeSched, tmp_path) -> None:
    s = make_sched(start=True, num_gpus=2)
    mark = tmp_path / "a-done"
    a = s.add_command(f"sleep 1; touch {mark}")
    b = s.add_command(f"test -e {mark}", after=a)
    job = s.job(b)
    assert (job["status"], job["waiting"], job["after"]) == ("queued", True, f"ok:{a}")
    assert job["reason"] == f"waits for {a}"
    assert s.why(b) == f"waits for job {a} to succeed"
    row = s.jobs().set_index("id").loc[b]
    assert row["after"] == f"ok:{a}" and bool(row["waiting"]) is True
    _ended(s, a, b)
    # b started only once a had succeeded (two GPUs free: nothing else held it back)
    assert _status(s, b) == "succeeded"
    assert s.job(b)["started"] >= s.job(a)["ended"]
    assert s.job(b)["waiting"] is False


def test_a_failed_dependency_cancels_the_chain_at_once(make_sched: MakeSched) -> None:
    s = make_sched(start=True, num_gpus=1)
    a = s.add_command("exit 3")
    b = s.add_command("true", after=a)
    c = s.add_command("true", after={"ok": b})
    d = s.add_command("true", after={"notok": b})  # (runs: b did not succeed)
    _ended(s, a, b, c, d)
    assert _status(s, a) == "failed"
    assert (_status(s, b), s.job(b)["reason"]) == ("cancelled", f"dependency {a} failed")
    assert (_status(s, c), s.job(c)["reason"]) == ("cancelled", f"dependency {b} was cancelled")
    assert _status(s, d) == "succeeded"
    # cancelled in the same write as a's end: never a moment when b looked startable
    assert abs((s.job(b)["ended"] - s.job(a)["ended"]).total_seconds()) < 1.0
    assert s.job(b)["attempts"] == 0 and s.job(c)["attempts"] == 0


def test_kinds_notok_any_started(make_sched: MakeSched) -> None:
    s = make_sched(start=True, num_gpus=2)
    ok = s.add_command("true")
    notok_met = s.add_command("true", after={"notok": ok})
    any_met = s.add_command("true", after={"any": ok})
    long = s.add_command("sleep 30")
    started = s.add_command("true", after={"started": long})
    _ended(s, ok, notok_met, any_met, started)
    assert _status(s, notok_met) == "cancelled"
    assert s.job(notok_met)["reason"] == f"dependency {ok} succeeded (it was to fail)"
    assert _status(s, any_met) == "succeeded"
    assert _status(s, started) == "succeeded" and _status(s, long) == "running"
    s.cancel(long)


def test_with_retries_only_the_final_end_counts(make_sched: MakeSched, tmp_path) -> None:
    s = make_sched(start=True, num_gpus=1, retry_backoff_s=0.1)
    count = tmp_path / "n"
    # fails on its first attempt, succeeds on its second
    a = s.add_command(f"echo x >> {count}; test $(wc -l < {count}) -ge 2", max_retries=2)
    b = s.add_command("true", after=a)
    _ended(s, a, b)
    assert (s.job(a)["attempts"], _status(s, a), _status(s, b)) == (2, "succeeded", "succeeded")
    f = s.add_command("exit 1", max_retries=1)
    g = s.add_command("true", after=f)
    _ended(s, f, g)
    assert s.job(f)["attempts"] == 2
    assert (_status(s, g), s.job(g)["reason"]) == ("cancelled", f"dependency {f} failed")


def test_a_job_on_a_whole_sweep_and_a_sweep_on_a_job(make_sched: MakeSched) -> None:
    s = make_sched(start=True, num_gpus=2)
    first = s.add_command("sleep 0.5")
    sweep = s.add_sweep(_script(s), args="--x {1..3}", after=first)
    assert all(s.job(i)["waiting"] for i in sweep)
    last = s.add_command("true", after=sweep.sweep_id)
    assert s.why(last).startswith("waits for jobs ") and s.why(last).endswith(" to succeed")
    _ended(s, first, *sweep, last)
    assert [_status(s, i) for i in [*sweep, last]] == ["succeeded"] * 4
    assert s.job(last)["started"] >= max(s.job(i)["ended"] for i in sweep)


def _script(s: GPUJobScheduler) -> str:
    path = s.config.state_dir.parent / "ok.py"
    path.write_text("import sys\n")
    return str(path)


def test_refused_at_submission_and_nothing_stored(make_sched: MakeSched) -> None:
    s = make_sched(start=False, num_gpus=1)
    a = s.add_command("true")
    before = len(s.jobs())
    with pytest.raises(UnknownJobError, match="no job 999"):
        s.add_command("true", after=999)
    with pytest.raises(UnknownJobError, match="no sweep sw9"):
        s.add_command("true", after="sw9")
    with pytest.raises(InvalidValueError, match="of this same submission"):
        s.add_command("true", after=int(a) + 1)  # (its own id: a cycle)
    with pytest.raises(UnknownJobError, match="no job 999"):
        s.add_sweep(_script(s), args="--x {1,2}", after={"any": [a, 999]})
    with pytest.raises(InvalidValueError, match="unknown kind 'afterok'"):
        s.add_command("true", after={"afterok": a})
    with pytest.raises(InvalidValueError, match=r"'x1' is not a job id \(12\) or a sweep id"):
        s.add_command("true", after="x1")
    with pytest.raises(InvalidTypeError, match="after=1.5"):
        s.add_command("true", after=1.5)  # type: ignore[arg-type]
    s.cancel(a)
    with pytest.raises(InvalidValueError, match=f"job {a} is cancelled; it can no longer succeed"):
        s.add_command("true", after=a)
    assert len(s.jobs()) == before


def test_a_cancelled_waiting_job_retried_waits_again_unless_decided(
    make_sched: MakeSched,
) -> None:
    s = make_sched(start=True, num_gpus=1)
    s.pause_gpu(0)
    a = s.add_command("true")
    b = s.add_command("true", after=a)
    c = s.add_command("true", after=a)
    s.cancel(b)
    s.cancel(c)
    s.retry(b)  # (a has not ended: b waits for it again)
    assert (_status(s, b), s.job(b)["waiting"]) == ("queued", True)
    assert s.why(b) == f"waits for job {a} to succeed"
    s.resume_gpu(0)
    _ended(s, a, b)
    assert _status(s, b) == "succeeded"
    s.retry(c)  # (a has succeeded since: c runs at once)
    _ended(s, c)
    assert _status(s, c) == "succeeded"


def test_a_retried_dependent_waits_for_its_dependencies_judged_afresh(
    make_sched: MakeSched, tmp_path
) -> None:
    s = make_sched(start=True, num_gpus=1)
    fixed = tmp_path / "fixed"
    a = s.add_command(f"test -e {fixed}")  # (fails until the file is there)
    b = s.add_command("true", after=a)
    _ended(s, a, b)
    assert (_status(s, a), _status(s, b)) == ("failed", "cancelled")
    with pytest.raises(InvalidValueError, match=f"job {a} is failed; it can no longer succeed"):
        s.retry(b)
    assert _status(s, b) == "cancelled"  # (refused: nothing changed)
    s.pause_gpu(0)
    s.retry(a)
    s.retry(b)
    assert (_status(s, b), s.why(b)) == ("queued", f"waits for job {a} to succeed")
    fixed.touch()
    s.resume_gpu(0)
    _ended(s, a, b)
    assert (_status(s, a), _status(s, b)) == ("succeeded", "succeeded")
    assert s.job(b)["started"] >= s.job(a)["ended"]
