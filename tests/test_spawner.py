"""The spawner: the process that starts the direct executor's jobs and records their ends.

Through the public API where a user would see it (signals, descriptors, exit codes,
a killed spawner, an engine restart), and through its socket for what only the
protocol shows (a bad request does not end it; one spawner per folder).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
from waiting import wait_for

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.executors import messages, spawner
from nbsched.executors.direct import SPAWNER_GONE
from nbsched.executors.process import _boot_time, same_process_alive, start_time_at


def _config(state: Path) -> SchedulerConfig:
    return SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=2)


@pytest.fixture
def scheduler_config() -> dict[str, object]:
    """sched (tests/conftest.py) here: started, as _config() says."""
    return {"start": True, "num_gpus": 2}


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file a gated job waits for; opened at the end whatever happened, so a failed
    test leaves no job running."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def spawner_of(run_dir: Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) >= 2 and cmd[-2] == spawner.__file__ and cmd[-1] == str(run_dir):
            return proc
    return None


def test_jobs_start_with_default_signal_dispositions(sched: GPUJobScheduler) -> None:
    # The kernel ignores SIGPIPE (Python does); a job must not inherit that, or a
    # pipeline such as `yes | head -1` ends with an error instead of quietly.
    jid = sched.add_command(
        "grep SigIgn /proc/self/status; yes | head -1 >/dev/null; echo pipe=${PIPESTATUS[0]}"
    )
    sched.wait([jid], timeout=60)
    log = sched.logs(jid)
    ignored = int(log.split("SigIgn:")[1].split()[0], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), log
    assert not ignored & (1 << (signal.SIGXFSZ - 1)), log
    assert "pipe=141" in log  # yes died of SIGPIPE, as in a terminal


def test_jobs_inherit_no_descriptors(sched: GPUJobScheduler) -> None:
    jid = sched.add_command("ls /proc/$$/fd; true")  # (the job's bash's, not ls's)
    sched.wait([jid], timeout=60)
    assert sorted(sched.logs(jid).split()) == ["0", "1", "2"]


def test_exit_codes_as_a_shell_reports_them(sched: GPUJobScheduler) -> None:
    ids = [sched.add_command(cmd) for cmd in ("exit 7", "kill -TERM $$", "kill -KILL $$")]
    rows = sched.wait(ids, timeout=60)
    assert list(rows["exit_code"]) == [7, 128 + signal.SIGTERM, 128 + signal.SIGKILL]
    assert list(rows["status"]) == ["failed"] * 3


def test_a_job_whose_process_group_is_killed_records_its_signal(
    sched: GPUJobScheduler, gate: Path
) -> None:
    # `kill -9 -PGID`, the way a user ends a job's whole tree by hand: nothing of
    # nbsched's is in that group, so the code (128+9) is still recorded.
    jid = sched.add_command(f"while [ ! -e {gate} ]; do sleep 0.02; done")
    pid = wait_for(lambda: sched.store.get(jid).pid, what="the job's start")
    os.killpg(pid, signal.SIGKILL)
    row = sched.wait([jid], timeout=60).iloc[0]
    assert (row["status"], row["exit_code"]) == ("failed", 128 + signal.SIGKILL)


def test_a_program_not_on_the_jobs_path_fails_with_the_reason(sched: GPUJobScheduler) -> None:
    jid = sched.add_command("true", env={"PATH": "/nonexistent"})
    row = sched.wait([jid], timeout=60).iloc[0]
    assert (row["status"], row["exit_code"]) == ("failed", 127)  # as a shell's
    assert row["reason"] == "could not start: not found on the job's PATH: 'bash'"
    assert "could not start: not found on the job's PATH: 'bash'" in sched.logs(jid)
    ok = sched.add_command("true")  # the spawner is still there for the next job
    assert sched.wait([ok], timeout=60).iloc[0]["status"] == "succeeded"


def test_job_ended_after_its_engine_is_recorded_by_the_next_one(tmp_path: Path, gate: Path) -> None:
    state = tmp_path / "state"
    first = GPUJobScheduler(config=_config(state)).start()
    jid = first.add_command(f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 5")
    pid = wait_for(lambda: first.store.get(jid).pid, what="the job's start")
    first.stop()  # leaves the job running
    first.close()
    owner = spawner_of(state / "run")
    assert owner is not None and owner.pid == psutil.Process(pid).ppid()
    second = GPUJobScheduler(config=_config(state)).start()
    try:
        wait_for(lambda: second._dispatcher is not None and second._dispatcher.cycles > 0)
        assert second.job(jid)["status"] == "running"
        gate.touch()
        assert second.store.get(jid).pid == pid
        row = second.wait([jid], timeout=60).iloc[0]
        assert (row["status"], row["exit_code"]) == ("failed", 5)
        assert spawner_of(state / "run") == owner  # the same spawner, watched again
    finally:
        second.stop(kill=True)
        second.close()


def test_killed_spawner_loses_only_the_exit_codes_of_its_running_jobs(
    sched: GPUJobScheduler, gate: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nbsched.executors.spawner_client")
    jid = sched.add_command(f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 0")
    pid = wait_for(lambda: sched.store.get(jid).pid, what="the job's start")
    owner = spawner_of(sched.config.run_dir)
    assert owner is not None
    owner.kill()
    owner.wait(10)
    # The job, now an orphan, runs on, and is still running in the engine's eyes.
    assert psutil.Process(pid).is_running()
    assert sched.job(jid)["status"] == "running"
    gate.touch()
    row = sched.wait([jid], timeout=60).iloc[0]
    assert row["status"] == "failed" and pd.isna(row["exit_code"])
    assert row["reason"] == SPAWNER_GONE
    assert "spawner for" in caplog.text and "exit codes will be unknown" in caplog.text
    # The next job starts a new spawner and ends normally.
    nxt = sched.add_command("exit 3")
    assert sched.wait([nxt], timeout=60).iloc[0]["exit_code"] == 3
    new = spawner_of(sched.config.run_dir)
    assert new is not None and new.pid != owner.pid


def test_spawner_leaves_once_no_engine_and_no_job_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (its idle time, 2 s, made short: the spawner reads it from its environment)
    monkeypatch.setenv(messages.IDLE_EXIT_ENV, "0.05")
    s = GPUJobScheduler(config=_config(tmp_path / "state")).start()
    jid = s.add_command("true")
    s.wait([jid], timeout=60)
    proc = spawner_of(s.config.run_dir)
    assert proc is not None
    s.stop()
    s.close()
    proc.wait(30)
    assert not (s.config.run_dir / messages.SOCKET_NAME).exists()


# -- the protocol ----------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    yield run
    proc = spawner_of(run)
    if proc is not None:
        proc.kill()


def _launch(run: Path) -> str:
    """Start a spawner for ``run``; what it says (its stderr is not waited for: the
    spawner that goes on keeps it)."""
    out = subprocess.run(
        [sys.executable, "-I", "-S", spawner.__file__, str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def _ask(sock: socket.socket, request: object, fds: tuple[int, ...] = ()) -> dict[str, object]:
    data = (request if isinstance(request, bytes) else json.dumps(request).encode()) + b"\n"
    socket.send_fds(sock, [data], list(fds)) if fds else sock.sendall(data)
    reply: dict[str, object] = json.loads(sock.makefile("rb").readline())
    return reply


def test_one_spawner_per_folder(run_dir: Path) -> None:
    assert _launch(run_dir) == "ready"
    assert _launch(run_dir) == "exists"
    assert oct((run_dir / messages.SOCKET_NAME).stat().st_mode & 0o777) == "0o600"


def test_bad_requests_get_an_error_and_leave_the_spawner_serving(run_dir: Path) -> None:
    assert _launch(run_dir) == "ready"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(run_dir / messages.SOCKET_NAME))
        assert _ask(sock, {"op": "hello", "version": 99, "env": {}})["ok"] is False
        # (1, never released, wrote each exit file at once, and knew no ack)
        assert _ask(sock, {"op": "hello", "version": 1, "env": {}})["ok"] is False
        assert _ask(sock, b"not json")["ok"] is False
        assert _ask(sock, {"op": "nope"})["ok"] is False
        reply = _ask(sock, {"op": "start", "token": "t"})  # no end descriptor
        assert reply["ok"] is False and "end descriptor" in str(reply["error"])
        r, w = os.pipe()
        reply = _ask(sock, {"op": "start", "token": "t"}, (w,))  # fields missing
        os.close(w)
        assert reply["ok"] is False
        assert os.read(r, 10) == b""  # the descriptor was closed, not kept
        os.close(r)
        # Still serving: a proper job runs, and its code comes through its pipe.
        assert _ask(sock, {"op": "hello", "version": messages.VERSION, "env": {}})["ok"]
        r, w = os.pipe()
        reply = _ask(sock, _start_request(run_dir, "t1", "exit 4"), (w,))
        os.close(w)
        assert reply["ok"] is True and isinstance(reply["pid"], int)
        assert _told(os.read(r, 100)) == 4  # (blocks until the job has ended)
        os.close(r)


def _told(data: bytes) -> int:
    """The code of an end the spawner told (``CODE TIME``), checking its time: just now."""
    code, reason, at = messages.decode_end(data)
    assert abs(time.time() - at) < 30 and reason is None, data
    return code


def _written(path: Path) -> int:
    """The code of an exit file the spawner wrote (``CODE TIME``), checking its time."""
    code, at = path.read_text().split()
    assert abs(time.time() - float(at)) < 30
    return int(code)


def _start_request(run_dir: Path, token: str, command: str) -> dict[str, object]:
    return {
        "op": "start",
        "token": token,
        "argv": ["/bin/sh", "-c", command],
        "env": {},
        "unset": [],
        "cwd": str(run_dir),
        "log": str(run_dir / f"{token}.log"),
        "exit": str(run_dir / f"{token}.exit"),
    }


def test_a_job_costs_the_state_directory_no_exit_file(sched: GPUJobScheduler) -> None:
    """While an engine records each end it is told, the spawner writes no exit file:
    the folder the files would go to is not even touched (its mtime stays)."""
    sched.wait([sched.add_command("true")], timeout=60)  # (the spawner is started)
    run = sched.config.run_dir
    before = run.stat().st_mtime_ns
    ids = [sched.add_command(f"exit {i % 3}") for i in range(20)]
    done = sched.wait(ids, timeout=60)
    assert list(done["exit_code"]) == [i % 3 for i in range(20)]
    assert not list(run.glob("*.exit*"))
    assert run.stat().st_mtime_ns == before


def test_an_end_is_kept_until_acknowledged_and_on_disk_only_where_needed(
    run_dir: Path,
) -> None:
    """A told end is kept by the spawner, not written to a file, until an engine
    acknowledges it; it is written when an engine asks for the job, when a connection
    ends (its engine may have died before recording it)."""
    assert _launch(run_dir) == "ready"
    exit_file = run_dir / "a.exit"

    def start(sock: socket.socket, token: str, code: int) -> None:
        r, w = os.pipe()
        assert _ask(sock, _start_request(run_dir, token, f"exit {code}"), (w,))["ok"]
        os.close(w)
        assert _told(os.read(r, 100)) == code  # (once it has ended)
        os.close(r)

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(run_dir / messages.SOCKET_NAME))
        assert _ask(sock, {"op": "hello", "version": 3, "env": {}})["version"] == 3
        start(sock, "a", 3)
        assert not exit_file.exists()  # told, kept: no file
        r, w = os.pipe()
        assert _ask(sock, {"op": "watch", "token": "a"}, (w,)) == {"ok": True, "pid": None}
        os.close(w)
        assert os.read(r, 10) == b""  # ended: no end to wait for; the file says it
        os.close(r)
        assert _written(exit_file) == 3
        assert oct(exit_file.stat().st_mode & 0o777) == "0o600"
        start(sock, "b", 5)
        sock.sendall(b'{"op": "ack", "tokens": ["a", "b"]}\n')  # (no reply)
        assert _ask(sock, {"op": "hello", "version": 3, "env": {}})["ok"]  # (in order)
        assert not exit_file.exists() and not (run_dir / "b.exit").exists()
        start(sock, "c", 6)
    # That engine went without acknowledging c: its end is written for the next one.
    wait_for(lambda: (run_dir / "c.exit").exists(), what="c's exit file")
    assert _written(run_dir / "c.exit") == 6


def test_the_start_time_of_a_job_is_its_process_start_time(
    sched: GPUJobScheduler, run_dir: Path, gate: Path
) -> None:
    """The engine writes a job's start time (what tells its process from a later one
    with the same pid) from the spawner's clock reading at the spawn, not from /proc:
    it must be the time /proc gives, to its 10 ms tick."""
    jid = sched.add_command(f"while [ ! -e {gate} ]; do sleep 0.02; done")
    job = wait_for(lambda: sched.store.get(jid) if sched.store.get(jid).proc_start else None)
    assert job.pid is not None and job.proc_start is not None
    assert abs(psutil.Process(job.pid).create_time() - job.proc_start) <= 0.011
    assert same_process_alive(job.pid, job.proc_start)
    # What the spawner says, through its socket: the clock at the spawn.
    assert _launch(run_dir) == "ready"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(run_dir / messages.SOCKET_NAME))
        assert _ask(sock, {"op": "hello", "version": messages.VERSION, "env": {}})["ok"]
        r, w = os.pipe()
        request = _start_request(run_dir, "t1", f"while [ ! -e {gate} ]; do sleep 0.02; done")
        reply = _ask(sock, request, (w,))
        os.close(w)
        born, pid = reply["born"], reply["pid"]
        assert isinstance(born, int) and isinstance(pid, int)
        assert abs(start_time_at(born) - psutil.Process(pid).create_time()) <= 0.011
        gate.touch()
        assert _told(os.read(r, 100)) == 0
        os.close(r)


def test_a_state_directory_path_longer_than_a_socket_address(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "state"  # run/spawner.sock: > 107 bytes
    s = GPUJobScheduler(config=_config(deep)).start()
    try:
        jid = s.add_command("exit 6")
        assert s.wait([jid], timeout=60).iloc[0]["exit_code"] == 6
    finally:
        s.stop(kill=True)
        s.close()


_DYING_ENGINE = """
import json, os, socket, sys
run = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.connect(os.path.join(run, "spawner.sock"))
s.sendall(json.dumps({"op": "hello", "version": 3, "env": {}}).encode() + b"\\n")
for t in ("a", "b", "c"):
    r, w = os.pipe()
    request = {"op": "start", "token": t, "argv": ["/bin/sh", "-c", "exit 0"], "env": {},
               "unset": [], "cwd": run, "log": f"{run}/{t}.log", "exit": f"{run}/{t}.exit"}
    socket.send_fds(s, [json.dumps(request).encode() + b"\\n"], [w])
os.kill(os.getpid(), 9)  # killed before reading a single reply
"""


def test_starts_sent_by_an_engine_that_dies_before_the_replies_still_run(run_dir: Path) -> None:
    # The engine marks each job running in the store before it sends the start, and
    # reads the replies later: a start it sent must run even if it never reads a reply.
    assert _launch(run_dir) == "ready"
    engine = subprocess.run([sys.executable, "-c", _DYING_ENGINE, str(run_dir)])
    assert engine.returncode == -signal.SIGKILL
    for token in "abc":
        wait_for(lambda t=token: (run_dir / f"{t}.exit").exists(), what=f"job {token}'s end")
        assert _written(run_dir / f"{token}.exit") == 0


def test_start_times_follow_the_boot_time_psutil_uses_now() -> None:
    """psutil adds /proc/stat's btime, which moves by whole seconds as the wall clock is
    adjusted: a start time is worked out with the current one, and compared allowing a
    whole second (a value kept from an engine's start put them a second off)."""
    assert any(_boot_time() == psutil.boot_time() for _ in range(3))  # (3: a flip between)
    me, start = os.getpid(), psutil.Process().create_time()
    for off in (0.0, 1.0, -1.0):
        assert same_process_alive(me, start + off)
    for off in (0.5, -0.5, 2.0):
        assert not same_process_alive(me, start + off)


def test_the_idle_time_comes_from_the_spawners_environment() -> None:
    assert messages.idle_exit_s({}) == messages.IDLE_EXIT_S == 2.0
    assert messages.idle_exit_s({messages.IDLE_EXIT_ENV: "0.25"}) == 0.25
    for bad in ("soon", "-1"):  # (a value that is no idle time: the default)
        assert messages.idle_exit_s({messages.IDLE_EXIT_ENV: bad}) == messages.IDLE_EXIT_S
