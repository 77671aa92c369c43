"""``nbsched serve`` for the original program's users (issue 16): its threshold options,
a line per job start and end, ``--gpu-arg`` for the jobs file's lines, and
``./llm_config.json`` read with a jobs file as the original's call did (``serve`` and
``%gpusched start``); and ``nbsched add --gpus`` where the original meant other GPUs."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from legacy_support import subprocess_env, wait_for

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.cli import main, parse
from nbsched.verbs.values import engine_config, engine_scheduler

LLM = '{"default_requirement": 1, "models": {"big": 2}}'


def _serve(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nbsched.cli", "serve", "--simulate", "2", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )


#: Each serve's printed lines, as its reader thread got them (one reader a process).
_PRINTED: dict[int, queue.Queue[str]] = {}


def _printed(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The lines ``proc`` prints, read by a thread (``select`` cannot see lines already
    in the pipe reader's buffer)."""
    if proc.pid not in _PRINTED:
        got: queue.Queue[str] = queue.Queue()
        out = proc.stdout
        assert out is not None
        threading.Thread(target=lambda: [got.put(x) for x in out], daemon=True).start()
        _PRINTED[proc.pid] = got
    return _PRINTED[proc.pid]


def _lines_until(proc: subprocess.Popen[str], done: Any, timeout: float = 60) -> list[str]:
    """What ``proc`` printed, line by line, until ``done(lines)`` (or the time is up)."""
    got = _printed(proc)
    lines: list[str] = []
    end = time.monotonic() + timeout
    while not done(lines) and time.monotonic() < end:
        try:
            lines.append(got.get(timeout=max(0.0, end - time.monotonic())).rstrip("\n"))
        except queue.Empty:
            break
    return lines


def _rc(argv: list[str]) -> int:
    """``nbsched ARGV``'s exit status, in this process (usage errors exit from argparse)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _ended(n: int) -> Any:
    return lambda lines: sum(bool(re.match(r"job \d+ (succeeded|failed)", x)) for x in lines) >= n


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_says_each_start_and_end(tmp_path: Path, sig: signal.Signals) -> None:
    """The original's files as they were: ``./llm_config.json`` is read (``big``: 2 GPUs),
    ``--gpu-arg=--cuda`` appends the local indices, the thresholds reach the engine."""
    (tmp_path / "ok.py").write_text("import sys, time; time.sleep(0.3); print(sys.argv[1:])\n")
    (tmp_path / "bad.py").write_text("import sys; sys.exit(3)\n")
    (tmp_path / "jobs.txt").write_text("0,ok.py,,--llm big --epochs 2,\n1,bad.py,,,\n")
    (tmp_path / "llm_config.json").write_text(LLM)
    state = tmp_path / "state"
    proc = _serve(
        tmp_path,
        *("--state-dir", str(state), "--jobs-file", "jobs.txt", "--gpu-arg=--cuda"),
        *("--mem-threshold", "0.5", "--load-threshold", "0.25"),
    )
    try:
        lines = _lines_until(proc, _ended(2))
        with GPUJobScheduler(config=SchedulerConfig(state_dir=state)) as client:
            settings = client.engine_settings() or {}
            log = client.logs("1", tail=None)
    finally:
        proc.send_signal(sig)
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    here = tmp_path.resolve()
    assert lines[0] == (
        f"nbsched: reading the LLM config {here / 'llm_config.json'} (found in the current "
        "folder, as the original program did; --llm-config F names another, --llm-config '' "
        "none)"
    )
    assert lines[1].startswith(f"nbsched: serving {state}")
    jobs = sorted(lines[2:], key=lambda x: x.split()[1])  # (two jobs' lines may interleave)
    assert jobs[0] == f"job 1 started on GPU(s) 0,1: {here / 'ok.py'} --llm big --epochs 2"
    assert re.fullmatch(r"job 1 succeeded \(exit 0\) after \d+\.\d s", jobs[1]), jobs
    assert re.fullmatch(rf"job 2 started on GPU\(s\) [01]: {here / 'bad.py'}", jobs[2]), jobs
    assert re.fullmatch(r"job 2 failed \(exit 3\) after \d+\.\d s", jobs[3]), jobs
    assert "['--llm', 'big', '--epochs', '2', '--cuda', '0,1']" in log
    assert (settings["gpu_memory_threshold"], settings["gpu_load_threshold"]) == (0.5, 0.25)


def test_serve_json_gives_each_event(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("print('hi')\n")
    (tmp_path / "jobs.txt").write_text("0,ok.py,,--x 1,\n")
    proc = _serve(tmp_path, "--state-dir", str(tmp_path / "s"), "--json", "--jobs-file", "jobs.txt")
    try:
        lines = _lines_until(proc, lambda ls: any('"ended"' in x for x in ls))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    said = [json.loads(x) for x in lines]
    assert "llm_config" not in said[0]["serving"]  # (no ./llm_config.json here)
    events = [x["event"] for x in said[1:]]
    assert [(e["kind"], e["id"], e["status"]) for e in events] == [
        ("started", "1", "running"),
        ("ended", "1", "succeeded"),
    ]
    assert events[1]["exit_code"] == 0 and events[1]["duration_s"] >= 0


def test_a_standby_serve_prints_no_job_line(tmp_path: Path) -> None:
    """Only the dispatching engine says what it runs (two services' logs would repeat it)."""
    state = str(tmp_path / "s")
    first = _serve(tmp_path, "--state-dir", state)
    assert _lines_until(first, lambda ls: len(ls) >= 1)[0].startswith("nbsched: serving")
    second = _serve(tmp_path, "--state-dir", state)
    try:
        assert _lines_until(second, lambda ls: len(ls) >= 1)[0].startswith("nbsched: standby")
        with GPUJobScheduler(config=SchedulerConfig(state_dir=Path(state))) as client:
            jid = client.add_command("true", required_gpus=1)
        assert _lines_until(first, _ended(1))[-1].startswith(f"job {jid} succeeded (exit 0)")
        time.sleep(0.5)  # (three of the standby's looks)
    finally:
        for proc in (second, first):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert second.returncode == 0
    assert _lines_until(second, lambda ls: False, timeout=2) == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--mem-threshold", "1.5"], "argument --mem-threshold: 1.5 is not accepted: expected a"),
        (["--load-threshold", "x"], "argument --load-threshold: 'x' is not accepted"),
        (["--gpu-arg=--cuda"], "--gpu-arg --cuda applies to the jobs file's lines"),
        (["--jobs-file", "j.txt", "--gpu-arg=cuda"], "jobs_file_gpu_arg='cuda': expected an"),
    ],
)
def test_serve_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    rc = _rc(["serve", "--state-dir", str(tmp_path / "s"), "--simulate", "2", *args])
    assert rc == 2 and error in capsys.readouterr().err


def test_the_llm_config_of_serve_and_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a jobs file: ``./llm_config.json`` unless ``--llm-config`` names one (``''``:
    none); without one, none (as before: the original's call is the one with a jobs file)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llm_config.json").write_text(LLM)
    (tmp_path / "other.json").write_text(LLM)
    base = ["serve", "--state-dir", str(tmp_path / "s"), "--simulate", "2"]
    cases = {
        ("--jobs-file", "j.txt"): str(tmp_path / "llm_config.json"),
        ("--jobs-file", "j.txt", "--llm-config", "other.json"): str(tmp_path / "other.json"),
        ("--jobs-file", "j.txt", "--llm-config", ""): None,
        (): None,
    }
    for extra, expected in cases.items():
        ns = parse([*base, *extra])
        s, note = engine_scheduler(ns, engine_config(ns))
        try:
            assert s.config.llm_config_file == expected, extra
            assert (note is not None) == (extra == ("--jobs-file", "j.txt")), extra
        finally:
            s.close()


def test_gpusched_start_reads_the_original_llm_config(
    ip: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llm_config.json").write_text(LLM)
    line = f"start --simulate 2 --jobs-file j.txt --state-dir {tmp_path / 's'}"
    s = ip.run_line_magic("gpusched", line)
    assert s.config.llm_config_file == str(tmp_path / "llm_config.json")
    assert "nbsched: reading the LLM config" in capsys.readouterr().out
    assert ip.run_line_magic("gpusched", line) is s  # (the same start again: the same one)


def test_the_jobs_file_gpu_arg(tmp_path: Path) -> None:
    (tmp_path / "show.py").write_text("import sys; print(sys.argv[1:])\n")
    (tmp_path / "jobs.txt").write_text("0,show.py,,--a 1,1\n")
    cfg = SchedulerConfig(
        state_dir=tmp_path / "s", gpu_provider="simulated", num_gpus=2, jobs_file_gpu_arg="--cuda"
    )
    with GPUJobScheduler(jobs_file_path=tmp_path / "jobs.txt", config=cfg) as s:
        wait_for(lambda: len(s.jobs()) == 1, timeout=30)
        done = s.wait(list(s.jobs()["id"]), timeout=60)
        assert list(done["status"]) == ["succeeded"]
        # GPU 1 is the job's only GPU: CUDA renumbers it 0, the index the job is given.
        assert "['--a', '1', '--cuda', '0']" in s.logs(done["id"][0])
        s.stop(kill=True)


@pytest.mark.parametrize("bad", ["cuda", "", 3])
def test_jobs_file_gpu_arg_is_checked(tmp_path: Path, bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="jobs_file_gpu_arg="):
        SchedulerConfig(state_dir=tmp_path, jobs_file_gpu_arg=bad)


def test_job_events_of_retries_and_cancels(make_sched: Any) -> None:
    """A failed attempt queued again says so; a job cancelled before it started: its end
    only; a start, once."""
    s = make_sched(start=True, retry_backoff_s=0.5)
    events = s.job_events()
    seen: list[str] = []

    def look() -> list[str]:
        seen.extend(e.line() for e in events.read())
        return seen

    held = s.add_command("sleep 30", required_gpus=2)
    waits = s.add_command("true", required_gpus=2)  # (GPUs all taken: it waits)
    flaky = s.add_command("sleep 0.5; exit 4", required_gpus=0.5, max_retries=1)
    wait_for(lambda: any(x.startswith(f"job {held} started") for x in look()))
    s.cancel(waits)
    s.cancel(held)
    wait_for(
        lambda: any(
            re.fullmatch(rf"job {flaky} failed \(exit 4\) after [\d.]+ s", x) for x in look()
        ),
        timeout=60,
    )
    mine = [x for x in seen if x.startswith(f"job {flaky} ")]
    assert re.fullmatch(rf"job {flaky} started on GPU\(s\) \d: sleep 0.5; exit 4", mine[0])
    assert re.fullmatch(rf"job {flaky} failed \(exit 4\) after \S+ s; retrying in 0.5 s", mine[1])
    assert mine[2].startswith(f"job {flaky} started (attempt 2) on GPU(s) ")
    assert re.fullmatch(rf"job {flaky} failed \(exit 4\) after \S+ s", mine[3])
    assert len(mine) == 4, seen
    assert [x for x in seen if x.startswith(f"job {waits} ")] == [
        f"job {waits} cancelled: cancelled while queued"
    ]
    assert seen.count(f"job {held} started on GPU(s) 0,1: sleep 30") == 1
    ended = [x for x in seen if x.startswith(f"job {held} cancelled")]
    assert len(ended) == 1 and re.fullmatch(
        rf"job {held} cancelled (\(exit -?\d+\) )?after \S+ s", ended[0]
    ), seen


def test_add_gpus_as_the_original_meant_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--gpus`` stays how many GPUs; the original's GPU list is refused with the flag
    that says it (``--allowed``), and a whole count of 2 or more comes with a note."""
    script = tmp_path / "t.py"
    script.write_text("print(1)\n")
    base = ["add", str(script), "--state-dir", str(tmp_path / "s"), "--simulate", "4"]
    assert _rc([*base, "--gpus", "0,1"]) == 2
    err = capsys.readouterr().err
    assert "'0,1' is not a number of GPUs" in err and "write --allowed 0,1" in err
    assert _rc([*base, "--gpus", "0-3,5"]) == 2
    assert "write --allowed 0-3,5" in capsys.readouterr().err
    assert main([*base, "--gpus", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "1"
    assert "the job needs 3 whole GPUs (to run it on GPU 3 only" in err
    assert "write --allowed 3" in err
    assert main([*base, "--gpus", "3", "--allowed", "0-3"]) == 0
    assert main([*base, "--gpus", "0.5"]) == 0
    assert capsys.readouterr().err == ""


def test_reserve_after_reaches_the_engine(
    ip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--reserve-after`` (seconds or a duration) sets ``reserve_after_s`` from
    ``nbsched serve`` and ``%gpusched start``; a bad value is refused as the config
    refuses it, naming the value and what is accepted."""
    base = ["serve", "--state-dir", str(tmp_path / "s"), "--simulate", "2"]
    assert engine_config(parse([*base, "--reserve-after", "30"])).reserve_after_s == 30.0
    assert engine_config(parse([*base, "--reserve-after", "2m"])).reserve_after_s == 120.0
    assert engine_config(parse([*base, "--reserve-after", "0"])).reserve_after_s == 0.0
    assert engine_config(parse(base)).reserve_after_s == SchedulerConfig().reserve_after_s
    for bad in ("-1", "inf", "soon"):
        assert _rc([*base, "--reserve-after", bad]) == 2
        err = capsys.readouterr().err
        assert f"argument --reserve-after: '{bad}' is not accepted: expected seconds" in err
    line = f"start --simulate 2 --reserve-after 45 --state-dir {tmp_path / 'm'}"
    s = ip.run_line_magic("gpusched", line)
    assert s.config.reserve_after_s == 45.0
    assert (s.engine_settings() or {})["reserve_after_s"] == 45.0
