"""Notifications: webhooks posted to a real HTTP server on 127.0.0.1, by the engine that
dispatches (also when the submitter is gone, and after a restart), retried and given
up without touching the job; ``on_end`` callables; a sweep's summary; the config's
default; the checks of ``notify=``."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from notify_support import Hook, MakeSched, settle, until

from nbsched import GPUJobScheduler, JobEnd, SchedulerConfig, Webhook

FAST = {"backoff_s": 0.05, "timeout_s": 5.0}


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


# -- webhooks -------------------------------------------------------------------------------


def test_a_webhook_gets_the_jobs_end_with_its_last_log_lines(
    make_sched: MakeSched, hook: Hook
) -> None:
    s = make_sched(start=True)
    job = s.add_command(
        "for i in 1 2 3; do echo line$i; done; exit 3", required_gpus=0.5, notify=hook.url,
        name="train",
    )  # fmt: skip
    s.wait([job])
    (body,) = until(hook.bodies)
    assert hook.posts[0][0] == "/hooks/abc"
    assert body["text"].startswith(f":x: job {job} (train) failed, exit code 3")  # Slack's field
    assert "line3" in body["text"] and "line3" in body["message"]
    fields = body["job"]
    assert (fields["id"], fields["name"], fields["status"], fields["exit_code"]) == (
        job, "train", "failed", 3,
    )  # fmt: skip
    assert fields["duration_s"] >= 0 and fields["log_tail"] == "line1\nline2\nline3"
    settle()
    assert len(hook.posts) == 1
    (row,) = s.notifications()
    assert row["state"] == "sent" and row["tries"] == 1


def test_ntfy_gets_its_json_publishing_form(make_sched: MakeSched, hook: Hook) -> None:
    s = make_sched(start=True)
    url = hook.url.replace("/hooks/abc", "/my-topic")
    job = s.add_command("true", required_gpus=0.5, notify=Webhook(url, format="ntfy"))
    s.wait([job])
    until(hook.bodies)
    path, body = hook.posts[0]
    assert path == "/"  # (ntfy takes JSON at its root, the topic in the body)
    assert body["topic"] == "my-topic" and body["tags"] == ["white_check_mark"]
    assert body["title"] == f"nbsched: job {job} succeeded" and "exit code 0" in body["message"]


def test_a_failed_post_is_tried_again(make_sched: MakeSched, hook: Hook) -> None:
    hook.codes = [500]
    s = make_sched(start=True)
    job = s.add_command("true", required_gpus=0.5, notify=Webhook(hook.url, **FAST))
    s.wait([job])
    until(lambda: s.notifications() and s.notifications()[0]["state"] == "sent")
    assert len(hook.posts) == 2
    assert s.notifications()[0]["tries"] == 2


def test_an_endpoint_that_always_fails_is_given_up_and_the_job_is_untouched(
    make_sched: MakeSched, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    hook.then = 500
    s = make_sched(start=True)
    target = Webhook(hook.url, tries=3, **FAST)
    with caplog.at_level(logging.WARNING, logger="nbsched.notify"):
        job = s.add_command("exit 0", required_gpus=0.5, notify=target)
        s.wait([job])
        until(lambda: s.notifications() and s.notifications()[0]["state"] == "failed")
    settle()
    assert len(hook.posts) == 3  # tried 3 times in all, then given up
    assert s.job(job)["status"] == "succeeded" and s.job(job)["exit_code"] == 0
    (notice,) = [n for n in s.notices() if n["source"] == "notifications"]
    assert f"job {job}" in notice["message"] and "after 3 tries: webhook 127.0.0.1: HTTP 500"
    assert "HTTP 500" in notice["message"]
    assert "try 1 of 3" in caplog.text
    # the engine goes on as before
    after = s.add_command("exit 0", required_gpus=0.5)
    assert s.wait([after]).iloc[0]["status"] == "succeeded"


def test_the_engine_sends_it_when_the_submitting_process_is_gone(
    make_sched: MakeSched, hook: Hook, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    code = f"""
        from nbsched import GPUJobScheduler, SchedulerConfig
        s = GPUJobScheduler(config=SchedulerConfig(
            state_dir={str(state)!r}, gpu_provider="simulated", num_gpus=2))
        print(s.add_command("echo bye", required_gpus=0.5, notify={hook.url!r}))
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    job = out.stdout.strip()
    s = make_sched(start=True)  # (the submitter has exited: this engine runs the job)
    s.wait([job])
    (body,) = until(hook.bodies)
    assert body["job"]["id"] == job and body["job"]["log_tail"] == "bye"


def test_a_notification_not_sent_before_a_restart_is_sent_after_it(
    make_sched: MakeSched, hook: Hook
) -> None:
    hook.then = 503
    s = make_sched(start=True)
    target = Webhook(hook.url, tries=5, backoff_s=0.3)
    job = s.add_command("true", required_gpus=0.5, notify=target)
    s.wait([job])
    until(lambda: hook.posts)
    s.stop()
    s.close()
    failed = len(hook.posts)
    assert s is not None and failed < 5
    hook.then = 200
    again = make_sched(start=True)  # (the same state directory)
    until(lambda: again.notifications()[0]["state"] == "sent")
    settle()
    assert len(hook.posts) == failed + 1
    assert [b["job"]["id"] for b in hook.bodies()] == [job] * (failed + 1)


def test_an_engine_killed_while_sending_leaves_the_notification_to_the_next(
    make_sched: MakeSched, hook: Hook, tmp_path: Path
) -> None:
    hook.answering.clear()  # (the killed engine's POST is never answered)
    code = f"""
        import time
        from nbsched import GPUJobScheduler, SchedulerConfig
        s = GPUJobScheduler(config=SchedulerConfig(
            state_dir={str(tmp_path / "state")!r}, gpu_provider="simulated", num_gpus=2)).start()
        print(s.add_command("echo killed", required_gpus=0.5, notify={hook.url!r}), flush=True)
        time.sleep(120)
    """
    engine = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert engine.stdout is not None
        job = engine.stdout.readline().strip()
        until(lambda: hook.posts, timeout=60)  # the job ended; its notification is in flight
    finally:
        engine.kill()
        engine.wait()
    hook.answering.set()
    s = make_sched(start=True)
    until(lambda: s.notifications() and s.notifications()[0]["state"] == "sent")
    settle()
    assert [b["job"]["id"] for b in hook.bodies()] == [job, job]  # (the first, unanswered)
    assert len(s.notifications()) == 1 and s.job(job)["status"] == "succeeded"


def test_a_job_cancelled_by_its_dependency_is_announced_with_the_reason(
    make_sched: MakeSched, hook: Hook
) -> None:
    s = make_sched(start=True)
    ends: list[JobEnd] = []
    first = s.add_command("exit 1", required_gpus=0.5)
    then = s.add_command(
        "true", required_gpus=0.5, after=[first], notify=hook.url, on_end=ends.append
    )
    s.wait([first, then])
    (body,) = until(hook.bodies)
    assert body["job"]["status"] == "cancelled" and body["job"]["id"] == then
    assert f"reason: dependency {first} failed" in body["text"]
    until(lambda: ends)
    assert (ends[0].id, ends[0].status, ends[0].reason) == (
        then, "cancelled", f"dependency {first} failed",
    )  # fmt: skip


# -- on_end ---------------------------------------------------------------------------------


def test_on_end_is_called_once_per_job_with_its_end(make_sched: MakeSched) -> None:
    s = make_sched(start=True)
    ends: list[JobEnd] = []
    threads: set[str] = set()

    def seen(end: JobEnd) -> None:
        threads.add(threading.current_thread().name)
        ends.append(end)

    ok = s.add_command("true", required_gpus=0.5, on_end=seen, name="a")
    bad = s.add_command("exit 4", required_gpus=0.5, on_end=seen, max_retries=1)
    s.wait([ok, bad])
    until(lambda: len(ends) == 2)
    settle()
    by_id = {e.id: e for e in ends}
    assert len(ends) == 2 and set(by_id) == {ok, bad}
    assert (by_id[ok].status, by_id[ok].exit_code, by_id[ok].name) == ("succeeded", 0, "a")
    assert (by_id[bad].status, by_id[bad].exit_code, by_id[bad].attempts) == ("failed", 4, 2)
    assert by_id[ok].duration_s is not None and by_id[ok].ok and not by_id[bad].ok
    assert threading.current_thread().name not in threads


def test_on_end_of_a_job_already_done_is_called_at_once(make_sched: MakeSched, script: str) -> None:
    s = make_sched(start=True)
    job = s.add_job(script, required_gpus=0.5, once=True)
    s.wait([job])
    ends: list[JobEnd] = []
    assert s.add_job(script, required_gpus=0.5, once=True, on_end=ends.append) == job
    until(lambda: ends)
    settle()
    assert [(e.id, e.status) for e in ends] == [(job, "succeeded")]


def _serve(state: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "nbsched.cli", "serve", "--state-dir", str(state),
         "--simulate", "2", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_on_end_hears_of_ends_another_process_records(
    make_sched: MakeSched, tmp_path: Path
) -> None:
    submitter = make_sched()  # (no engine here: the one in `serve` below runs the jobs)
    ends: list[JobEnd] = []
    queued = submitter.add_command("true", required_gpus=0.5, on_end=ends.append)
    cancelled = submitter.add_command("true", required_gpus=0.5, on_end=ends.append)
    submitter.cancel(cancelled)
    until(lambda: len(ends) == 1)
    assert (ends[0].id, ends[0].status, ends[0].duration_s) == (cancelled, "cancelled", None)
    serve = _serve(tmp_path / "state")
    try:
        until(lambda: len(ends) == 2, timeout=30)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert (ends[1].id, ends[1].status) == (queued, "succeeded")


def test_serve_notify_is_the_default_of_the_engine_that_runs_the_jobs(
    make_sched: MakeSched, tmp_path: Path, hook: Hook
) -> None:
    submitter = make_sched()  # (no default of its own)
    serve = _serve(tmp_path / "state", "--notify", hook.url)
    try:
        until(lambda: submitter.engine_pid == serve.pid, timeout=30)
        done = submitter.add_command("true", required_gpus=0.5)
        quiet = submitter.add_command("true", required_gpus=0.5, notify=False)
        long = submitter.add_command("sleep 60", required_gpus=0.5)
        until(lambda: submitter.job(long)["status"] == "running")
        submitter.cancel(long)  # (from this process: serve kills it, and says so)
        submitter.wait([done, quiet, long])
        until(lambda: len(hook.posts) == 2)
        settle()
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    posted = {b["job"]["id"]: b["job"]["status"] for b in hook.bodies()}
    assert posted == {done: "succeeded", long: "cancelled"} and len(hook.posts) == 2


def test_a_failing_or_slow_on_end_harms_nothing(
    make_sched: MakeSched, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_sched(start=True)
    release = threading.Event()
    ends: list[str] = []

    def boom(end: JobEnd) -> None:
        raise RuntimeError("callback bug")

    def slow(end: JobEnd) -> None:
        release.wait(30)

    with caplog.at_level(logging.ERROR, logger="nbsched.notify"):
        first = s.add_command("true", required_gpus=0.5, on_end=boom)
        s.add_command("true", required_gpus=0.5, on_end=slow)
        last = s.add_command("true", required_gpus=0.5, on_end=lambda e: ends.append(e.id))
        rows = s.wait()
        until(lambda: ends == [last])
    release.set()
    assert set(rows["status"]) == {"succeeded"}
    assert "the on_end callback" in caplog.text and f"of job {first} raised" in caplog.text
    assert "RuntimeError: callback bug" in caplog.text


# -- sweeps ---------------------------------------------------------------------------------


@pytest.fixture
def exits(tmp_path: Path) -> str:
    p = tmp_path / "exits.py"
    p.write_text("import sys\nsys.exit(int(sys.argv[2]))\n")
    return str(p)


def test_a_sweep_is_announced_once_when_its_last_job_ends(
    make_sched: MakeSched, hook: Hook, exits: str
) -> None:
    s = make_sched(start=True)
    ends: list[JobEnd] = []
    ids = s.add_sweep(
        exits,
        args="--code {0,1} --seed {1,2}",
        required_gpus=0.5,
        notify=hook.url,
        on_end=ends.append,
    )
    s.wait(ids)
    (body,) = until(hook.bodies)
    settle()
    assert len(hook.posts) == 1
    summary = body["sweep"]
    assert summary["id"] == ids.sweep_id and summary["jobs"] == 4
    assert summary["counts"] == {"succeeded": 2, "failed": 2}
    assert summary["failed"] == [ids[2], ids[3]]
    assert f"sweep {ids.sweep_id}: 4 job(s): 2 succeeded, 2 failed" in body["text"]
    assert body["status"] == "failed" and body["text"].startswith(":x:")
    assert sorted(e.id for e in ends) == sorted(ids)  # on_end: once per job


def test_a_sweep_with_notify_each_announces_each_job_instead(
    make_sched: MakeSched, hook: Hook, exits: str
) -> None:
    s = make_sched(start=True)
    ids = s.add_sweep(
        exits, args="--code {0,1}", required_gpus=0.5, notify=hook.url, notify_each=True
    )
    s.wait(ids)
    until(lambda: len(hook.posts) == 2)
    settle()
    assert len(hook.posts) == 2 and all("job" in b for b in hook.bodies())
    assert sorted(b["job"]["id"] for b in hook.bodies()) == sorted(ids)


# -- the config's default, and the checks ---------------------------------------------------


def test_the_configs_default_and_notify_false(make_sched: MakeSched, hook: Hook) -> None:
    s = make_sched(start=True, notify=[hook.url])
    default = s.add_command("true", required_gpus=0.5)
    quiet = s.add_command("true", required_gpus=0.5, notify=False)
    s.wait([default, quiet])
    (body,) = until(hook.bodies)
    settle()
    assert len(hook.posts) == 1 and body["job"]["id"] == default


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (42, TypeError, "notify=42: expected a webhook URL"),
        ("ftp://example.org/x", ValueError, "expected an http:// or https:// URL"),
        ("mailto:not an address", ValueError, "expected one mail address"),
        ([Webhook("https://hooks.slack.com/services/T/B/X"), 3], TypeError, "notify: 3:"),
    ],
)
def test_a_bad_notify_is_refused_before_anything_is_stored(
    sched: GPUJobScheduler, value: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(")):
        sched.add_command("true", required_gpus=0.5, notify=value)
    with pytest.raises(TypeError, match="on_end='x': expected a function"):
        sched.add_command("true", required_gpus=0.5, on_end="x")
    with pytest.raises(TypeError, match="notify_each=1"):
        sched.add_sweep("true.sh", args="--a {1,2}", notify="https://x.org", notify_each=1)
    assert len(sched.jobs()) == 0


def test_the_config_checks_its_notify(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"notify='ftp://x': expected an http"):
        SchedulerConfig(state_dir=tmp_path, notify="ftp://x")
    with pytest.raises(ValueError, match="tries=0: must be >= 1"):
        SchedulerConfig(state_dir=tmp_path, notify=[Webhook("https://x.org", tries=0)])
    config = SchedulerConfig(state_dir=tmp_path, notify="https://ntfy.sh/t")
    (target,) = config.notify
    assert isinstance(target, Webhook) and target.format == "ntfy"
    assert "ntfy.sh" in repr(target) and "/t" not in repr(target)  # (a URL may be a secret)
