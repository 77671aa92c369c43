"""The ``nbsched`` command as a subprocess, against a state directory that an engine in
another process (``nbsched serve``) is using, and against one with no engine."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import run_cli
from legacy_support import cli, subprocess_env, wait_for

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.executors.process import find_by_token
from nbsched.executors.screen import list_sessions
from nbsched.jobs import JobStatus


@dataclass
class Engine:
    proc: subprocess.Popen[str]
    state: Path
    work: Path
    client: GPUJobScheduler  # reads the same store from this process (never started)


def _start_serve(state: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """``nbsched serve --json``, once it has said it serves: the process and what it said."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbsched.cli", "serve", "--state-dir", str(state), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "nbsched serve did not start within 60 s"
    line = proc.stdout.readline()
    assert line, f"nbsched serve exited: {proc.stderr.read() if proc.stderr else ''}"
    info = json.loads(line)
    assert info["serving"]["pid"] == proc.pid
    return proc, info


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    work = tmp_path_factory.mktemp("cli")
    (work / "echo.py").write_text("import sys; print('echo', *sys.argv[1:])\n")
    (work / "llm.json").write_text('{"models": {"big": 2}}')
    (work / "jobs.txt").write_text(
        "# the original program's jobs file\n"
        "0,nope.py,,,\n"  # line 2: bad
        "0,echo.py,,--llm big --from-file,\n"
    )
    state = work / "state"
    proc, _ = _start_serve(
        state,
        "--json",
        "--simulate",
        "2",
        "--executor",
        "screen",
        "--jobs-file",
        str(work / "jobs.txt"),
        "--llm-config",
        str(work / "llm.json"),
    )
    client = GPUJobScheduler(
        config=SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=2)
    )
    try:
        yield Engine(proc, state, work, client)
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_status_add_jobs_logs_against_a_serving_engine(engine: Engine) -> None:
    c = engine.client
    from_file = wait_for(lambda: c.store.find(), what="the jobs file's line")
    c.wait([from_file[0].id], timeout=30)
    assert c.job(from_file[0].id)["required_gpus"] == 2.0  # --llm big, from the LLM config

    jid = cli(engine.state, "add", "--gpus", "0.5", str(engine.work / "echo.py"), "--", "a b", "c")
    jid_text = jid.stdout.strip()
    assert jid_text.isdigit()
    c.wait([jid_text], timeout=30)
    job = c.store.get(jid_text)
    assert job.executor == "screen"  # the engine's executor, which the CLI learnt from the store

    swept = json.loads(
        cli(engine.state, "sweep", "--json", str(engine.work / "echo.py"), "--", "--llm", "big",
            "--x", "{1,2}").stdout
    )  # fmt: skip
    c.wait(swept["ids"], timeout=30)  # (the engine's LLM config, read by the CLI, for each)
    assert [c.job(j)["required_gpus"] for j in swept["ids"]] == [2.0, 2.0]
    llm = cli(engine.state, "add", str(engine.work / "echo.py"), "--", "--llm", "big").stdout
    c.wait([llm.strip()], timeout=30)  # the engine's LLM config, read by the CLI
    assert c.job(llm.strip())["required_gpus"] == 2.0 and c.job(llm.strip())["gpus"] == [0, 1]

    rows = json.loads(cli(engine.state, "jobs", "--json").stdout)
    mine = next(r for r in rows if r["id"] == jid_text)
    assert (mine["status"], mine["exit_code"], mine["required_gpus"]) == ("succeeded", 0, 0.5)
    logs = json.loads(cli(engine.state, "logs", jid_text, "--json").stdout)
    assert logs == {"id": jid_text, "log": "echo a b c\n"}
    assert cli(engine.state, "logs", jid_text).stdout == "echo a b c\n"

    status = json.loads(cli(engine.state, "status", "--json").stdout)
    assert status["engine_pid"] == engine.proc.pid
    assert status["counts"]["succeeded"] >= 2
    assert len(status["gpus"]) == 2
    assert any(":2: script 'nope.py' not found" in n["message"] for n in status["notices"])
    text = cli(engine.state, "status").stdout
    assert f"engine: pid {engine.proc.pid}" in text
    assert re.search(r"WARNING: jobs file: .*jobs\.txt:2: script 'nope\.py' not found", text), text
    assert re.search(r"queue: 0 queued, 0 running, [1-9]\d* succeeded", text), text


def test_cancel_and_screens_from_the_cli(engine: Engine) -> None:
    c = engine.client
    jid = cli(engine.state, "run", "--gpus", "1", "--json", "--", "echo up; sleep 300")
    jid_text = json.loads(jid.stdout)["id"]
    wait_for(lambda: "up" in c.logs(jid_text), what="the job to run")
    screens = json.loads(cli(engine.state, "screens", "--json").stdout)
    assert [(r["id"], r["pid"]) for r in screens] == [(jid_text, c.store.get(jid_text).pid)]
    session = screens[0]["session"]
    assert session.endswith(f".nbsched-{jid_text}") and session in list_sessions()
    assert session in cli(engine.state, "screens").stdout

    done = json.loads(cli(engine.state, "cancel", jid_text, "--json").stdout)
    assert done == [{"id": jid_text, "cancelled": True}]
    assert c.job(jid_text)["status"] == "cancelled"
    assert find_by_token(c.store.get(jid_text).token or "") == []
    assert session not in list_sessions()
    again = cli(engine.state, "cancel", jid_text).stdout
    assert again.strip() == f"{jid_text}: had already ended"


def test_retry_from_the_cli(engine: Engine) -> None:
    c = engine.client
    marker = engine.work / "retry-marker"
    script = engine.work / "once.py"
    script.write_text(
        "import os, sys\n"
        f"m = {str(marker)!r}\n"
        "if not os.path.exists(m):\n"
        "    open(m, 'w').close(); sys.exit('failing the first time')\n"
        "print('ok now')\n"
    )
    jid = cli(engine.state, "add", "--gpus", "0.5", str(script)).stdout.strip()
    c.wait([jid], timeout=30)
    assert (c.job(jid)["status"], c.job(jid)["exit_code"]) == ("failed", 1)
    assert json.loads(cli(engine.state, "retry", jid, "--json").stdout) == {"retried": [jid]}
    c.wait([jid], timeout=30)
    job = c.job(jid)
    assert (job["status"], job["exit_code"], job["attempts"]) == ("succeeded", 0, 1)
    assert "ok now" in c.logs(jid)


def test_options_after_the_script_and_commands_as_the_shell_split_them(engine: Engine) -> None:
    c = engine.client
    echo = str(engine.work / "echo.py")
    # nbsched's options may come after the script; only what follows -- is the script's.
    jid = cli(engine.state, "add", echo, "--gpus", "0.5", "--name", "late", "--", "--lr", "1")
    jid_text = jid.stdout.strip()
    c.wait([jid_text], timeout=30)
    row = c.job(jid_text)
    assert (row["required_gpus"], row["name"]) == (0.5, "late")
    assert c.logs(jid_text) == "echo --lr 1\n"
    # Several words after --: each reaches the job as the user's shell split it.
    words = ["python3", "-c", "import sys; print(sys.argv[1:])", "a  b", "$HOME", "it's"]
    jid_text = cli(engine.state, "run", "--gpus", "0.5", "--", *words).stdout.strip()
    # One word: a command line as it is.
    line = cli(engine.state, "run", "--", "echo one; echo two").stdout.strip()
    c.wait([jid_text, line], timeout=30)
    assert c.logs(jid_text) == "['a  b', '$HOME', \"it's\"]\n"
    assert c.logs(line) == "one\ntwo\n"
    # wait's exit status says whether every job it waited for succeeded.
    bad = cli(engine.state, "run", "--", "exit 3").stdout.strip()
    failed = cli(engine.state, "wait", bad, "--timeout", "30", check=False)
    assert failed.returncode == 1 and "failed" in failed.stdout
    assert cli(engine.state, "wait", line).returncode == 0


def test_a_second_serve_is_a_standby_that_changes_nothing(engine: Engine) -> None:
    standby, said = _start_serve(engine.state, "--json", "--simulate", "4")
    assert said["serving"]["standby_for"] == engine.proc.pid
    try:
        assert json.loads(engine.client.store.kv_get("engine") or "{}")["pid"] == engine.proc.pid
        gpus = json.loads(cli(engine.state, "gpus", "--json").stdout)
        assert len(gpus) == 2  # the dispatching engine's, not the standby's 4
        refused = cli(engine.state, "run", "--gpus", "3", "--", "true", check=False)
        assert refused.returncode == 2 and f"pid {engine.proc.pid}" in refused.stderr
    finally:
        standby.send_signal(signal.SIGTERM)
        standby.wait(timeout=30)
    assert standby.returncode == 0


def test_a_bad_id_among_several_does_nothing(engine: Engine) -> None:
    c = engine.client
    jid = cli(engine.state, "run", "--gpus", "1", "--", "sleep 300").stdout.strip()
    for verb in ("cancel", "retry"):
        done = cli(engine.state, verb, jid, "999999", check=False)
        assert done.returncode == 2 and "no job '999999'" in done.stderr
        assert c.job(jid)["status"] in ("queued", "running")
    done = cli(engine.state, "cancel", jid, jid).stdout  # (an id given twice: done once)
    assert done.strip() == f"{jid}: cancelled"


def test_a_sweep_again_lists_every_job_and_wait_takes_a_sweep(engine: Engine) -> None:
    script = str(engine.work / "echo.py")
    words = ("sweep", "--gpus", "0.5", script, "--", "--again", "{1,2}")
    first = json.loads(cli(engine.state, *words[:1], "--json", *words[1:]).stdout)
    assert first["queued"] == first["ids"] and len(first["ids"]) == 2
    again = json.loads(cli(engine.state, *words[:1], "--json", *words[1:]).stdout)
    assert again == {"sweep": first["sweep"], "ids": first["ids"], "queued": []}
    waited = cli(engine.state, "wait", "--json", "--sweep", first["sweep"], "--timeout", "60")
    assert sorted(r["id"] for r in json.loads(waited.stdout)) == sorted(first["ids"])
    wider = cli(engine.state, "sweep", "--gpus", "0.5", script, "--", "--again", "{1..3}")
    head, new = wider.stdout.splitlines()[0].rsplit(" ", 1)
    assert head.endswith(": 1 job(s) queued:") and new not in first["ids"]
    every = " ".join([*first["ids"], new])
    assert wider.stdout.splitlines()[1] == f"2 already there; every job: {every}"


def test_sweep_sweeps_results_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    script = tmp_path / "t.py"
    script.write_text("")
    sim = ["--state-dir", str(state), "--simulate", "2", "--json"]
    rc, out, err = _main(
        ["sweep", *sim, str(script), "--gpus", "0.5", "--", "--lr", "{1,2}"], capsys
    )
    assert rc == 0, err
    queued = json.loads(out)
    assert len(queued["ids"]) == 2 and queued["sweep"].startswith("sw")
    rc, out, _ = _main(["sweeps", *sim], capsys)
    assert [r["sweep"] for r in json.loads(out)] == [queued["sweep"]]
    rc, out, _ = _main(["results", *sim, queued["sweep"]], capsys)
    assert sorted(r["lr"] for r in json.loads(out)) == [1, 2]
    rc, out, _ = _main(["why", *sim, queued["ids"][0]], capsys)
    assert rc == 0 and json.loads(out)["why"]
    rc, _, err = _main(["sweep", *sim, str(script)], capsys)
    assert rc == 2 and "needs the swept arguments after --" in err


def test_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    client = GPUJobScheduler(
        config=SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=1)
    )
    try:
        for i in range(800):  # (a table longer than a pipe holds)
            client.add_command(f"echo {i} {'x' * 80}")
    finally:
        client.close()
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m nbsched.cli jobs --state-dir {state} | head -1"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.stdout.split()[:2] == ["id", "status"]
    assert done.stderr == ""


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run CLI commands side by side (each a separate process), in order of the list."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nbsched.cli", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for cmd in commands
    ]
    out = []
    for cmd, p in zip(commands, procs, strict=True):
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return out


_main = run_cli


def test_errors_are_one_line_without_traceback(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = ["--state-dir", str(engine.state)]
    (tmp_path / "file").write_text("not a folder")
    cases = [
        (["logs", "999999", *st], "no job '999999'"),
        (["frobnicate"], "invalid choice"),
        (["cancel", "abc", *st], "job ids are numbers"),
        (["retry", "999999", *st], "no job"),
        (["add", "--gpus", "1.5", str(engine.work / "echo.py"), *st], "whole number"),
        (["add", str(tmp_path / "missing.py"), *st], "not found"),
        (["pause", "9", *st], "gpu=9"),
        (["pause", "x", *st], "'x' is not accepted: expected a GPU index"),  # (as %gpusched says)
        (["jobs", "--status", "bogus", *st], "status='bogus'"),
        (["add", str(engine.work / "echo.py"), "--lr", "1", *st], "arguments go after --"),
        (["run", "echo", *st, "--", "hi"], "the command goes after --"),
        (["logs", "1", "-n", "-1", *st], "expected a number of lines >= 0"),
        (["wait", "--timeout", "nan", *st], "'nan' is not accepted: expected seconds >= 0"),
        (["status", "--state-dir", ""], "state_dir='': must not be empty"),
        (["serve", "--ray-address", "auto", *st], "only with --executor ray"),
        (["status", "--state-dir", str(tmp_path / "file")], "state directory"),
    ]
    # The first two as real processes (nothing but one line may reach stderr), the rest here.
    as_processes = _run_all([c for c, _ in cases[:2]])
    results = [(d.returncode, d.stdout, d.stderr) for d in as_processes]
    results += [_main(c, capsys) for c, _ in cases[2:]]
    for (cmd, needle), (rc, out, err) in zip(cases, results, strict=True):
        assert rc != 0, cmd
        lines = err.splitlines()
        assert len(lines) == 1, (cmd, err)
        assert needle in lines[0], (cmd, lines[0])
        assert "Traceback" not in err and out == "", cmd


def test_every_verb_works_without_an_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    script = tmp_path / "t.py"
    script.write_text("print('hi')\n")
    sim = ["--state-dir", str(state), "--simulate", "2", "--json"]

    def run(*args: str) -> Any:
        rc, out, err = _main([*args[:1], *sim, *args[1:]], capsys)
        assert rc == 0, (args, err)
        return json.loads(out)

    jid = run("add", "--gpus", "0.5", str(script), "--", "--x", "1")["id"]
    status = run("status")
    assert status["counts"]["queued"] == 1 and status["engine_pid"] is None
    jobs = run("jobs", "--status", "queued")
    assert [(j["id"], j["status"], j["command"]) for j in jobs] == [
        (jid, "queued", f"{script} --x 1")
    ]
    assert [g["gpu"] for g in run("gpus")] == [0, 1]
    assert run("screens") == []
    assert run("logs", jid) == {"id": jid, "log": ""}
    assert run("pause", "1") == {"gpu": 1, "paused": True}
    assert run("resume", "1") == {"gpu": 1, "paused": False}
    assert run("cancel", jid) == [{"id": jid, "cancelled": True}]
    other = run("add", str(script))["id"]
    rc, _, err = _main(["wait", *sim, jid], capsys)  # (it has ended; another waits)
    assert rc == 1 and "no engine is running" not in err
    rc, _, err = _main(["wait", *sim, other, "--timeout", "0"], capsys)
    assert rc == 2 and "no engine is running" in err
    assert run("cancel", other) == [{"id": other, "cancelled": True}]
    assert run("retry", jid) == {"retried": [jid]}

    more = [run("add", str(script), "--", "--x", str(i))["id"] for i in range(2, 5)]
    assert [j["id"] for j in run("jobs", "--first", "2")] == [jid, other]
    assert [j["id"] for j in run("jobs", "--last", "2")] == more[1:]
    assert [j["id"] for j in run("jobs", "--status", "queued", "--last", "1")] == more[-1:]
    rc, _, err = _main(["jobs", *sim, "--first", "1", "--last", "1"], capsys)
    assert rc == 2 and "not allowed with argument --first" in err
    rc, _, err = _main(["jobs", *sim, "--last", "-1"], capsys)
    assert rc == 2 and "--last: -1 is not accepted: expected a number of jobs" in err


def test_status_lists_the_first_queued_jobs_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long queue is not printed whole: the running jobs, the first 20 queued in the
    order they start (an urgent job first, though submitted last), and a line saying
    how many more wait and where to see them."""
    from nbsched.cli_tables import STATUS_QUEUED

    state = tmp_path / "state"
    s = GPUJobScheduler(
        config=SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=2)
    )
    try:
        queued = [s.add_command(f"echo {i}", 1) for i in range(STATUS_QUEUED + 4)]
        urgent = s.add_command("echo urgent", 1, priority=-10)
        running = s.store.transition(queued[0], JobStatus.RUNNING, token="t", gpus=(0,))
        assert running is not None  # (as an engine would: the table shows it first)
    finally:
        s.close()
    rc, out, _ = _main(["status", "--state-dir", str(state), "--simulate", "2"], capsys)
    assert rc == 0
    rows = [
        line.split()[:2] for line in out.splitlines() if re.match(r" *\d+ +(queued|running) ", line)
    ]
    assert rows == [
        [queued[0], "running"],
        [urgent, "queued"],
        *([j, "queued"] for j in queued[1:STATUS_QUEUED]),
    ]
    assert out.rstrip().endswith("... and 4 more queued: nbsched jobs --status queued")
    rc, out, _ = _main(["status", "--state-dir", str(state), "--simulate", "2", "--json"], capsys)
    assert len(json.loads(out)["active"]) == STATUS_QUEUED + 5  # (--json: every active job)


def test_demo_json(tmp_path: Path) -> None:
    done = _run_all([["demo", "--simulate", "2", "--json", "--state-dir", str(tmp_path / "s")]])[0]
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and "every job ended as expected" in report["output"]


def test_jobs_and_status_show_the_estimate_and_the_eta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a terminal, ``nbsched jobs`` and ``nbsched status`` show each job's estimate
    (``expected``) and a queued job's expected start (``eta``) as a clock time (a 2-GPU
    job waits for one with a 300 s time limit)."""
    gate = tmp_path / "gate"
    s = GPUJobScheduler(
        config=SchedulerConfig(
            state_dir=tmp_path / "state", gpu_provider="simulated", num_gpus=2, reserve_after_s=0
        )
    ).start()
    try:
        hold = s.add_command(f"while [ ! -e {gate} ]; do sleep 0.05; done", 1, time_limit=300)
        wait_for(lambda: s.job(hold)["status"] == "running", "the first job to start")
        big = s.add_command("true", 2, expected_s=90)
        wait_for(lambda: s.jobs().set_index("id")["eta"].notna()[big], "the queued job's eta")
        at = time.localtime(s.job(hold)["started"].timestamp() + 300)
        seconds_of_day = at.tm_hour * 3600 + at.tm_min * 60 + at.tm_sec
        sim = ["--state-dir", str(tmp_path / "state"), "--simulate", "2"]
        for verb in ("jobs", "status"):
            rc, out, _ = _main([verb, *sim], capsys)
            assert rc == 0
            header = next(line for line in out.splitlines() if line.startswith("id "))
            assert "expected  eta" in header, (verb, header)
            rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1]}
            assert re.search(r"\b5m00s\b", rows[hold]), (verb, rows[hold])
            shown = re.search(r"\b1m30s\s+(\d\d):(\d\d):(\d\d) ", rows[big])
            assert shown is not None, (verb, rows[big])
            h, m, sec = map(int, shown.groups())
            assert abs((h * 3600 + m * 60 + sec) - seconds_of_day) % 86400 in (0, 1, 86399)
    finally:
        gate.touch()
        s.stop(kill=True)
        s.close()
