"""Integration tests of GPUJobScheduler: real subprocesses, a real SQLite store, simulated GPUs."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transitions import history
from waiting import wait_for

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.frames import GPU_COLUMNS
from nbsched.gpus import write_simulated_gpus
from nbsched.jobs import JobStatus

#: The columns DESIGN.md promises for jobs() and job(), in this order.
DESIGN_JOB_COLUMNS = [
    "id",
    "status",
    "priority",
    "command",
    "required_gpus",
    "gpus",
    "submitted",
    "started",
    "ended",
    "exit_code",
    "attempts",
    "log",
]
DESIGN_GPU_COLUMNS = [
    "gpu",
    "name",
    "memory_used",
    "memory_total",
    "load",
    "allocated",
    "paused",
    "jobs",
    "memory_jobs",
    "memory_others",
    "who",
]

TIMEOUT = 60.0  # generous: 2 cores shared with other test runs


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
def scheduler_config() -> dict[str, Any]:
    """make_sched and sched (tests/conftest.py) here: started, 4 GPUs, a short kill grace."""
    return {"start": True, "num_gpus": 4, "kill_grace_s": 0.5}


def test_a_relative_state_dir_works_after_a_change_of_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's example: ``state_dir="runs/state"``; then the notebook does ``%cd``."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    config = SchedulerConfig(state_dir="runs/state", gpu_provider="simulated", num_gpus=2)
    s = GPUJobScheduler(config=config).start()
    try:
        first = s.add_command("pwd", required_gpus=0.5)
        s.wait([first], timeout=TIMEOUT)
        os.chdir(tmp_path / "b")
        second = s.add_command("pwd", required_gpus=0.5)
        s.wait([second], timeout=TIMEOUT)
        assert [s.job(j)["status"] for j in (first, second)] == ["succeeded"] * 2
        assert s.logs(first) == f"{tmp_path / 'a'}\n"
        assert s.logs(second) == f"{tmp_path / 'b'}\n"
        assert (tmp_path / "a" / "runs" / "state" / "state.db").exists()
        assert not (tmp_path / "b" / "runs").exists()
    finally:
        s.stop(kill=True)
        s.close()


def status(s: GPUJobScheduler, job_id: str) -> str:
    return str(s.job(job_id)["status"])


def wait_running(s: GPUJobScheduler, job_id: str) -> dict[str, Any]:
    wait_for(lambda: status(s, job_id) != "queued", what=f"job {job_id} to start")
    row = s.job(job_id)
    assert row["status"] == "running", row
    return row


def settle(s: GPUJobScheduler) -> None:
    """Return once the dispatcher has completed a whole cycle that began after this call,
    so everything committed before it has been considered."""
    d = wait_for(lambda: s._dispatcher, what="the engine to start dispatching")
    first = d.cycles + 1
    wait_for(lambda: (d.wake(), d.cycles > first)[1], what="a dispatcher cycle")


def token_processes(token: str) -> list[int]:
    """Live processes (any state but zombie) whose environment carries the job's token."""
    needle = f"NBSCHED_JOB_TOKEN={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state != "Z":
            found.append(int(entry))
    return found


# ------------------------------------------------------------------ placement and over-booking


def test_placement_by_cuda_visible_devices(sched: GPUJobScheduler) -> None:
    cmd = 'echo "$CUDA_VISIBLE_DEVICES|$CUDA_DEVICE_ORDER|$NBSCHED_JOB_ID"'
    ids = {req: sched.add_command(cmd, required_gpus=req) for req in (0.5, 0.25, 1, 2, 3)}
    done = sched.wait(list(ids.values()), timeout=TIMEOUT)
    assert list(done["status"]) == ["succeeded"] * 5
    for req, job_id in ids.items():
        row = sched.job(job_id)
        gpus = row["gpus"]
        assert len(gpus) == (1 if req < 1 else req)
        assert all(0 <= g < 4 for g in gpus)
        visible = ",".join(map(str, gpus))
        assert sched.logs(job_id) == f"{visible}|PCI_BUS_ID|{job_id}\n"


def test_no_gpu_ever_overbooked(sched: GPUJobScheduler, tmp_path: Path) -> None:
    out = tmp_path / "marks"
    out.mkdir()
    cmd = (
        f'f={out}/$NBSCHED_JOB_ID; echo "$EPOCHREALTIME $CUDA_VISIBLE_DEVICES" > $f; '
        f'sleep $1; echo "$EPOCHREALTIME" >> $f'
    )
    reqs = [0.25, 0.5, 1, 0.25, 2, 0.75, 0.5, 1, 0.25, 3, 0.5, 0.25, 1, 0.5, 2, 0.25] * 2
    ids = {}
    for i, req in enumerate(reqs):
        duration = 0.05 + 0.05 * (i % 3)
        job_id = sched.add_command(f"set -- {duration}; {cmd}", required_gpus=req)
        ids[job_id] = req
    done = sched.wait(list(ids), timeout=TIMEOUT)
    assert set(done["status"]) == {"succeeded"}
    events: list[tuple[float, int, float, tuple[int, ...]]] = []
    for job_id, req in ids.items():
        first, second = (out / job_id).read_text().splitlines()
        t0, visible = first.split(" ")
        gpus = tuple(int(g) for g in visible.split(","))
        assert gpus == tuple(sched.job(job_id)["gpus"])
        share = req if req < 1 else 1.0
        events.append((float(t0), 1, share, gpus))
        events.append((float(second), 0, share, gpus))  # ends sort before starts at a tie
    booked = dict.fromkeys(range(4), 0.0)
    peak = 0.0
    for _, kind, share, gpus in sorted(events):
        for g in gpus:
            booked[g] += share if kind else -share
            assert booked[g] <= 1 + 1e-9, f"GPU {g} over-booked: {booked[g]}"
            peak = max(peak, booked[g])
    assert peak > 0.7  # GPUs were really shared and filled, so the check had teeth


# ------------------------------------------------------------------ outcomes and logs


def test_exit_codes(sched: GPUJobScheduler) -> None:
    ok = sched.add_command("exit 0", required_gpus=0.1)
    bad = sched.add_command("exit 3", required_gpus=0.1)
    killed = sched.add_command("kill -9 $$", required_gpus=0.1)
    sched.wait([ok, bad, killed], timeout=TIMEOUT)
    assert (status(sched, ok), sched.job(ok)["exit_code"]) == ("succeeded", 0)
    assert (status(sched, bad), sched.job(bad)["exit_code"]) == ("failed", 3)
    assert sched.store.get(bad).reason == "exit code 3"
    assert (status(sched, killed), sched.job(killed)["exit_code"]) == ("failed", 137)
    assert sched.job(ok)["attempts"] == 1
    hist = history(sched.store.path, bad)
    assert [h["new"] for h in hist] == ["queued", "running", "failed"]
    assert hist[1]["at"] <= hist[2]["at"]


def test_retries_then_fails(make_sched: Callable[..., GPUJobScheduler]) -> None:
    s = make_sched(retry_backoff_s=0.01)
    job_id = s.add_command("echo try; exit 5", required_gpus=0.5, max_retries=2)
    s.wait([job_id], timeout=TIMEOUT)
    row = s.job(job_id)
    assert (row["status"], row["exit_code"], row["attempts"]) == ("failed", 5, 3)
    log = s.logs(job_id, tail=None)
    assert log.count("try\n") == 3 and "attempt 3" in log


def test_manual_retry_marks_its_run_in_the_log(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """retry(id) runs the job again after the output of its earlier runs, with the line
    an automatic retry writes (its attempts count from 1 again)."""
    s = make_sched(retry_backoff_s=0.01)
    flag = tmp_path / "second"
    job_id = s.add_command(
        f"if [ -e {flag} ]; then echo second; else echo first; exit 3; fi",
        required_gpus=0.5,
        max_retries=1,
    )
    s.wait([job_id], timeout=TIMEOUT)
    assert s.logs(job_id, tail=None) == "first\n\n--- nbsched: attempt 2 ---\nfirst\n"
    flag.touch()
    s.retry(job_id)
    s.wait([job_id], timeout=TIMEOUT)
    assert (status(s, job_id), s.job(job_id)["attempts"]) == ("succeeded", 1)
    assert s.logs(job_id, tail=None) == (
        "first\n\n--- nbsched: attempt 2 ---\nfirst\n\n--- nbsched: attempt 1 ---\nsecond\n"
    )


def test_a_retry_is_marked_in_the_log_of_a_run_that_wrote_nothing(
    make_sched: Callable[..., GPUJobScheduler],
) -> None:
    """Each attempt is seen in the log, also after one that wrote nothing: the line of a
    retry() was written only after output."""
    s = make_sched(retry_backoff_s=0.01)
    job_id = s.add_command("exit 3", required_gpus=0.5, max_retries=0)
    s.wait([job_id], timeout=TIMEOUT)
    assert s.logs(job_id, tail=None) == ""
    s.retry(job_id)
    s.wait([job_id], timeout=TIMEOUT)
    assert s.logs(job_id, tail=None) == "\n--- nbsched: attempt 1 ---\n"
    for gpu in range(4):
        s.pause_gpu(gpu)
    never = s.add_command("echo ran", required_gpus=0.5)
    s.cancel(never)  # while queued: it never ran, its retry is its first run
    for gpu in range(4):
        s.resume_gpu(gpu)
    s.retry(never)
    s.wait([never], timeout=TIMEOUT)
    assert s.logs(never, tail=None) == "ran\n"


def test_a_command_that_starts_with_a_dash_is_a_command(sched: GPUJobScheduler) -> None:
    """As a shell would run that command line, not as options of bash."""
    job_id = sched.add_command("--gpus 0.1", required_gpus=0.5)
    sched.wait([job_id], timeout=TIMEOUT)
    assert sched.job(job_id)["exit_code"] == 127
    assert "--gpus: command not found" in sched.logs(job_id)


def test_a_retried_job_waits_as_a_fresh_job(sched: GPUJobScheduler) -> None:
    """While it waits (and if it is cancelled then), a retried job shows no exit code,
    GPUs or times of the run before."""
    job_id = sched.add_command("exit 3", required_gpus=1)
    sched.wait([job_id], timeout=TIMEOUT)
    assert (sched.job(job_id)["exit_code"], sched.job(job_id)["gpus"] != []) == (3, True)
    for g in range(4):
        sched.pause_gpu(g)
    sched.retry(job_id)
    row = sched.job(job_id)
    assert row["status"] == "queued" and row["attempts"] == 0
    assert (row["exit_code"], row["gpus"], row["started"], row["ended"]) == (None, [], None, None)
    sched.cancel(job_id)
    row = sched.job(job_id)
    assert row["status"] == "cancelled"
    assert (row["exit_code"], row["gpus"], row["started"]) == (None, [], None)


def test_retry_of_a_job_that_never_ran_writes_no_separator(sched: GPUJobScheduler) -> None:
    for g in range(4):
        sched.pause_gpu(g)
    job_id = sched.add_command("echo ran", required_gpus=1)
    sched.cancel(job_id)  # (cancelled while queued: no log)
    for g in range(4):
        sched.resume_gpu(g)
    sched.retry(job_id)
    sched.wait([job_id], timeout=TIMEOUT)
    assert sched.logs(job_id, tail=None) == "ran\n"


def test_logs(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command(
        "echo to-stdout; echo to-stderr >&2; for i in $(seq 1 100); do echo line$i; done",
        required_gpus=0.5,
    )
    sched.wait([job_id], timeout=TIMEOUT)
    full = sched.logs(job_id, tail=None)
    assert full.startswith("to-stdout\nto-stderr\nline1\n") and full.endswith("line100\n")
    assert sched.logs(job_id, tail=3) == "line98\nline99\nline100\n"
    assert sched.logs(job_id, tail=0) == ""
    assert sched.logs(job_id).count("\n") == 50
    path = Path(sched.job(job_id)["log"])
    assert path.parent == sched.config.logs_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="tail="):
        sched.logs(job_id, tail=-1)
    for bad in (1.5, "3", True):
        with pytest.raises(TypeError, match="tail="):
            sched.logs(job_id, tail=bad)  # type: ignore[arg-type]


def test_relative_cwd_runs_in_the_submitters_folder(
    sched: GPUJobScheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's process is started by the spawner (whose folder is not the kernel's):
    a relative cwd names the folder it had at submission."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path)
    here = sched.add_command("pwd -P", required_gpus=0.5, cwd=".")
    work = sched.add_command("pwd -P", required_gpus=0.5, cwd="work")
    sched.wait([here, work], timeout=TIMEOUT)
    assert sched.logs(here) == f"{tmp_path.resolve()}\n"
    assert sched.logs(work) == f"{(tmp_path / 'work').resolve()}\n"


def test_env_and_job_env(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command(
        'echo "$CUDA_DEVICE_ORDER $NBSCHED_JOB_ID $MINE ${NBSCHED_JOB_TOKEN:+has-token}"',
        required_gpus=1,
        env={"MINE": "x y"},
    )
    sched.wait([job_id], timeout=TIMEOUT)
    assert sched.logs(job_id) == f"PCI_BUS_ID {job_id} x y has-token\n"


# ------------------------------------------------------------------ cancel


def test_cancel_queued_job(sched: GPUJobScheduler) -> None:
    for g in range(4):
        sched.pause_gpu(g)
    job_id = sched.add_command("echo never", required_gpus=1)
    settle(sched)
    assert status(sched, job_id) == "queued"
    assert sched.cancel(job_id) is True
    row = sched.job(job_id)
    assert row["status"] == "cancelled" and row["started"] is None and row["exit_code"] is None
    assert sched.cancel(job_id) is False
    for g in range(4):
        sched.resume_gpu(g)
    settle(sched)
    assert status(sched, job_id) == "cancelled" and sched.logs(job_id) == ""


def test_cancel_right_after_submission(sched: GPUJobScheduler, tmp_path: Path) -> None:
    """The engine takes jobs submitted in its kernel from memory: one cancelled at once
    (before or while the engine takes it) is never started, or is started and ended
    as cancelled; it never runs to its end."""
    ids = []
    for i in range(30):
        job_id = sched.add_command(f"sleep 0.3; touch {tmp_path}/ran-{i}", required_gpus=0.25)
        sched.cancel(job_id)
        ids.append(job_id)
    done = sched.wait(ids, timeout=TIMEOUT)
    assert set(done["status"]) == {"cancelled"}
    time.sleep(0.5)  # (long enough for a job that was not stopped to finish)
    assert not list(tmp_path.glob("ran-*"))


def test_cancel_running_tree_with_setsid_and_background_children(
    sched: GPUJobScheduler, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    cmd = (
        "setsid sleep 301 & "
        "sleep 302 & "
        "( setsid bash -c 'sleep 303 & wait' & ) ; "
        "bash -c 'trap \"\" TERM; exec sleep 304' & "
        "nohup sleep 305 >/dev/null 2>&1 & "
        f"touch {ready}; wait"
    )
    job_id = sched.add_command(cmd, required_gpus=0.5)
    wait_running(sched, job_id)
    token = sched.store.get(job_id).token
    assert token
    wait_for(ready.exists, what="the job to spawn its children")

    def sleeps() -> set[str]:
        names = set()
        for pid in token_processes(token):
            try:
                names.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                pass
        return {n.strip() for n in names if n.startswith("sleep")}

    wait_for(lambda: len(sleeps()) == 5, what="all five sleeps")
    assert sched.cancel(job_id) is True
    assert token_processes(token) == []
    row = sched.job(job_id)
    assert row["status"] == "cancelled" and row["ended"] is not None
    settle(sched)
    assert status(sched, job_id) == "cancelled"  # the watcher's late report changed nothing
    assert sched.store.allocation() == {}


#: A process that leaves the job's session and lives on (a daemon's double fork):
#: ``python -c DAEMON PIDFILE`` writes the daemon's pid and returns at once.
DAEMON = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "        time.sleep(300)\n"
    "    os._exit(0)\n"
    "os.wait()\n"
)


def test_what_a_job_leaves_running_ends_with_it(sched: GPUJobScheduler, tmp_path: Path) -> None:
    """The job's main process exits with processes of its own still running (``&``,
    ``nohup``, ``setsid``, a daemon): they would hold the GPU the next job is given."""
    ready = tmp_path / "ready"
    cmd = (
        "setsid sleep 311 & "
        "( setsid sleep 315 & sleep 316 ) & "  # (comes to the spawner only as 316 dies)
        "sleep 312 & "
        "nohup sleep 313 >/dev/null 2>&1 & "
        "bash -c 'trap \"\" TERM HUP; exec sleep 314' & "
        f"{sys.executable} -c {shlex.quote(DAEMON)} {tmp_path / 'daemon'}; "
        f"touch {ready}; exit 3"
    )
    job_id = sched.add_command(cmd, required_gpus=0.5)
    sched.wait([job_id], timeout=TIMEOUT)
    token = sched.store.get(job_id).token
    assert token
    assert ready.exists()  # (it got as far as its own exit)
    row = sched.job(job_id)
    assert (row["status"], row["exit_code"]) == ("failed", 3)  # its main process's code
    wait_for(lambda: token_processes(token) == [], what="the job's leftovers to be ended")


def test_a_running_jobs_processes_outlive_another_jobs_end(
    sched: GPUJobScheduler, tmp_path: Path
) -> None:
    """Orphans of a job that still runs are left alone when another job ends."""
    gate = tmp_path / "gate"
    daemon, sleep = tmp_path / "daemon", tmp_path / "sleep"
    long = sched.add_command(
        f"{sys.executable} -c {shlex.quote(DAEMON)} {daemon}; sleep 322 & echo $! > {sleep}; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done",
        required_gpus=0.5,
    )

    def written(path: Path) -> bool:
        return path.exists() and path.read_text().endswith(
            ("\n", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
        )

    wait_for(lambda: written(daemon) and written(sleep), what="the daemon's and sleep's pids")
    mine = [int(p.read_text()) for p in (daemon, sleep)]
    token = sched.store.get(long).token
    assert token
    for _ in range(3):
        short = sched.add_command("sleep 0.01 & exit 0", required_gpus=0.5)
        sched.wait([short], timeout=TIMEOUT)
    assert set(mine) <= set(token_processes(token))
    assert status(sched, long) == "running"
    gate.touch()
    sched.wait([long], timeout=TIMEOUT)
    assert sched.job(long)["exit_code"] == 0
    wait_for(lambda: token_processes(token) == [], what="the leftovers to be ended")


def test_why_a_job_waits_from_any_process(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    engine = make_sched(num_gpus=2, reserve_after_s=0)  # (GPUs held at once)
    gate = tmp_path / "gate"
    hold = engine.add_command(f"while [ ! -e {gate} ]; do sleep 0.05; done", required_gpus=1)
    wait_running(engine, hold)
    big = engine.add_command("true", required_gpus=2)  # the head: needs both GPUs
    small = engine.add_command("true", required_gpus=1)  # behind it
    settle(engine)
    other = GPUJobScheduler(config=engine.config)  # another kernel: no engine of its own
    try:
        for s in (engine, other):
            assert s.why(big).startswith("needs 2 free GPUs; GPU(s) ")
            assert s.why(small).startswith(f"job {big} comes first (needs 2 free GPUs")
            assert s.why(hold) == f"job {hold} is running"
        engine.stop()
        assert other.why(big).endswith(
            "(no engine runs on this state directory: nothing starts until one does)"
        )
    finally:
        gate.touch()
        other.close()


#: (required GPUs, priority, allowed GPUs) of the jobs the why() comparisons queue.
WHY_SHAPES = [
    (0.25, 0, None), (0.5, 0, None), (1, 0, None), (2, 0, None), (3, 0, None),
    (0.5, -1, None), (1, 1, None), (0.25, 0, (3,)), (1, 0, (0,)), (2, 0, (2, 3)),
    (0.5, 0, (1, 2)), (4, 0, None),
]  # fmt: skip


def _full_reasons(s: GPUJobScheduler) -> dict[str, str]:
    """explain() of the whole queue, each job decoded in full: what why() said before it
    read only the jobs ahead of the one asked about."""
    from nbsched.allocation import explain, gpu_states, queue_key
    from nbsched.why import name_unusable

    queue = sorted(s.store.find(statuses=[JobStatus.QUEUED]), key=queue_key)
    cfg = s.config
    states = gpu_states(
        s.monitor.snapshot(), s.store.allocation(), s.store.paused(),
        cfg.gpu_memory_threshold, cfg.gpu_load_threshold,
    )  # fmt: skip
    said = explain(queue, states, time.time(), cfg.gpu_allocation_precision)
    # (why() names the paused and busy GPUs where explain() says "paused, or busy")
    return {j.id: name_unusable(said[j.id], states, j.allowed_gpus) for j in queue}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_why_deep_in_a_long_queue_says_what_the_whole_queue_says(
    make_sched: Callable[..., GPUJobScheduler],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
) -> None:
    """why() reads only the jobs ahead of the one asked about, a page at a time (here
    pages of 7, so it walks many): its answer for every job of a few hundred is the
    one explain() gives from the whole queue, with paused GPUs, a GPU busy with
    others' work, a running job, back-offs, reservations and backfill."""
    import random

    from nbsched.store import queue_read

    monkeypatch.setattr(queue_read, "PAGE", 7)
    rng = random.Random(seed)
    gpus_file = tmp_path / "gpus.json"
    gpu = {"name": "Sim", "memory_total_mb": 1000}
    busy = {**gpu, "external_load": 0.95}
    write_simulated_gpus(gpus_file, [gpu, busy if seed == 2 else gpu, gpu, gpu])
    s = make_sched(start=False, num_gpus=4, simulated_gpus_file=str(gpus_file), reserve_after_s=0)
    for g in {1: [0], 2: [], 3: [0, 1, 2, 3]}[seed]:
        s.pause_gpu(g)
    ids = []
    for _ in range(300):
        required, priority, allowed = rng.choice(WHY_SHAPES)
        ids.append(s.add_command("true", required, priority + rng.choice([0, 0, 2]), allowed))
    running = s.store.transition(ids[0], JobStatus.RUNNING, token="t", gpus=(2,))
    assert running is not None  # (a running job books GPU 2: less room there)
    for jid in rng.sample(ids[1:], 15):
        s.store.update(jid, not_before=time.time() + 3600)  # waiting out a retry's back-off
    expected = _full_reasons(s)
    told = {jid: s.why(jid).removesuffix(NO_ENGINE) for jid in ids[1:]}
    assert told == expected
    kinds = {text.split(" ")[0] for text in told.values()}
    assert (
        kinds
        == {  # (each sentence of explain() in one of the three queues)
            1: {"a", "every", "it", "none"},
            2: {"a", "it", "job", "needs"},
            3: {"a", "job", "needs", "none"},
        }[seed]
    )
    if seed == 2:  # (a reservation, and jobs behind it backfilling around it)
        assert any("that job does not hold" in text for text in told.values())


def test_why_reads_no_further_than_the_plan_goes(
    make_sched: Callable[..., GPUJobScheduler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every GPU paused the plan stops at the first job: why() of the last of 200
    jobs reads one page of the queue, not the 199 jobs ahead of it."""
    from nbsched.store import Store, queue_read

    monkeypatch.setattr(queue_read, "PAGE", 10)
    read: list[int] = []
    walk = Store.queued_ahead

    def counted(store: Store, priority: int, seq: int, page: int | None = None) -> Any:
        for job in walk(store, priority, seq, page):
            read.append(job.seq)
            yield job

    monkeypatch.setattr(Store, "queued_ahead", counted)
    s = make_sched(start=False, num_gpus=2)
    s.pause_gpu(0)
    s.pause_gpu(1)
    ids = [s.add_command("true", 1) for _ in range(200)]
    assert s.why(ids[-1]).startswith(f"job {ids[0]} comes first (needs 1 free GPU; only 0 ")
    assert 1 <= len(read) <= 10


NO_ENGINE = " (no engine runs on this state directory: nothing starts until one does)"


def test_stop_kill_cancels_running(make_sched: Callable[..., GPUJobScheduler]) -> None:
    s = make_sched()
    job_id = s.add_command("sleep 300", required_gpus=1)
    wait_running(s, job_id)
    token = s.store.get(job_id).token
    assert token
    s.stop(kill=True)
    assert status(s, job_id) == "cancelled" and token_processes(token) == []
    assert not s.running


def test_cancel_just_after_marked_running(make_sched: Callable[..., GPUJobScheduler]) -> None:
    """A cancel between 'marked running' and 'process spawned' must still end the process."""
    s = make_sched()
    for _ in range(10):
        job_id = s.add_command("sleep 300", required_gpus=1)
        deadline = time.monotonic() + TIMEOUT
        while not (token := s.store.get(job_id).token):  # no sleep: hit the window
            assert time.monotonic() < deadline, "the job was never marked running"
        assert s.cancel(job_id) is True
        settle(s)  # the dispatcher has finished starting it
        assert status(s, job_id) == "cancelled"
        wait_for(lambda: token_processes(token) == [], what="the cancelled job's processes to end")
    assert s.store.allocation() == {}


# ------------------------------------------------------------------ arguments arrive intact

ARG_CASES = {
    "single-quote": ["it's", "'"],
    "double-quote": ['say "hi"', '"'],
    "semicolon": ["a; echo PWNED > pwned", ";"],
    "command-subst": ["$(touch pwned)", "$(id)"],
    "backticks": ["`touch pwned`", "`"],
    "spaces": ["two words", " lead", "trail ", "   "],
    "newlines": ["line1\nline2", "\n", "a\r\nb"],
    "tabs": ["tab\there", "\t"],
    "unicode": ["ünïcödé", "日本語", "🚀✓", "e\u0301", "\u202eRTL"],
    "expansions": ["$HOME", "${PATH}", "~", "*", "?", "[a]", "{0.1,0.01}", "{1..3}"],
    "dashes-and-empty": ["", "--", "-x", "--flag=$(id)", "-"],
    "backslashes": ["\\", "\\n", "'\"'\"'", "\\$HOME"],
    "history-and-format": ["!!", "!$", "%s%d", "%%"],
    "submitit-path": ["a'; echo foo", "&&", "|", ">", "<", "2>&1"],
}


@pytest.fixture
def weird_dir(tmp_path: Path) -> Path:
    d = tmp_path / "dir with 'quote'; $(x) `y` ü"
    d.mkdir()
    (d / "dump.py").write_text(
        "import json, os, sys\n"
        "with open(os.environ['OUT'], 'w', encoding='utf-8') as f:\n"
        "    json.dump(sys.argv[1:], f)\n"
    )
    (d / "dump.sh").write_text('printf "%s\\0" "$@" > "$OUT"\n')
    return d


@pytest.mark.parametrize("kind", ["py", "sh"])
@pytest.mark.parametrize("case", sorted(ARG_CASES))
def test_arguments_arrive_byte_identical(
    sched: GPUJobScheduler, weird_dir: Path, tmp_path: Path, case: str, kind: str
) -> None:
    args = ARG_CASES[case]
    out = tmp_path / "argv.out"
    job_id = sched.add_job(
        str(weird_dir / f"dump.{kind}"),
        args=args,
        required_gpus=0.5,
        env={"OUT": str(out)},
        cwd=weird_dir,
    )
    sched.wait([job_id], timeout=TIMEOUT)
    assert status(sched, job_id) == "succeeded", sched.logs(job_id)
    raw = out.read_bytes()
    if kind == "py":
        got = json.loads(raw.decode("utf-8"))
    else:
        got = [a.decode("utf-8") for a in raw.split(b"\0")[:-1]]
    assert got == args
    assert list(sched.store.get(job_id).spec.args) == args
    assert not list(weird_dir.glob("pwned")) and not (tmp_path / "pwned").exists()


def test_args_string_is_split_like_a_shell(sched: GPUJobScheduler, weird_dir: Path) -> None:
    job_id = sched.add_job(
        str(weird_dir / "dump.py"),
        args="--name 'two words' --x \"a;b\"",
        required_gpus=0.5,
        env={"OUT": str(weird_dir / "o")},
    )
    sched.wait([job_id], timeout=TIMEOUT)
    assert json.loads((weird_dir / "o").read_text()) == ["--name", "two words", "--x", "a;b"]


def test_sh_script_runs_with_bash(sched: GPUJobScheduler, tmp_path: Path) -> None:
    script = tmp_path / "bashy.sh"  # no shebang, not executable, bash-only syntax
    script.write_text(
        'if [[ -n "$BASH_VERSION" ]]; then echo "bash $1"; fi\narr=(a b); echo ${arr[1]}\n'
    )
    os.chmod(script, 0o644)
    job_id = sched.add_job(str(script), args=["x"], required_gpus=0.5)
    sched.wait([job_id], timeout=TIMEOUT)
    assert status(sched, job_id) == "succeeded"
    assert sched.logs(job_id) == "bash x\nb\n"


def test_py_script_runs_with_this_python_unbuffered(sched: GPUJobScheduler, tmp_path: Path) -> None:
    script = tmp_path / "who.py"
    script.write_text("import sys; print(sys.executable, sys.orig_argv[1])\n")
    job_id = sched.add_job(str(script), required_gpus=0.5)
    sched.wait([job_id], timeout=TIMEOUT)
    assert sched.logs(job_id) == f"{sys.executable} -u\n"


# ------------------------------------------------------------------ tables


def test_jobs_and_job_columns(sched: GPUJobScheduler) -> None:
    empty = sched.jobs()
    assert list(empty.columns)[: len(DESIGN_JOB_COLUMNS)] == DESIGN_JOB_COLUMNS
    a = sched.add_command("exit 2", required_gpus=0.5, priority=3)
    b = sched.add_command("true", required_gpus=2)
    sched.wait([a, b], timeout=TIMEOUT)
    df = sched.jobs()
    assert list(df.columns)[: len(DESIGN_JOB_COLUMNS)] == DESIGN_JOB_COLUMNS
    assert list(df["id"]) == [a, b]
    assert list(df["status"]) == ["failed", "succeeded"]
    assert list(df["priority"]) == [3, 0]
    assert list(df["command"]) == ["exit 2", "true"]
    assert list(df["required_gpus"]) == [0.5, 2.0]
    assert [len(g) for g in df["gpus"]] == [1, 2]
    assert list(df["exit_code"]) == [2, 0]
    assert list(df["attempts"]) == [1, 1]
    assert (df["submitted"] <= df["started"]).all() and (df["started"] <= df["ended"]).all()
    row = sched.job(a)
    assert list(row)[: len(DESIGN_JOB_COLUMNS)] == DESIGN_JOB_COLUMNS
    assert row["status"] == "failed" and row["log"].endswith(f"/{a}.log")
    assert list(sched.jobs(status="failed")["id"]) == [a]
    assert list(sched.jobs(status="ended")["id"]) == [a, b]
    with pytest.raises(ValueError, match="accepted values"):
        sched.jobs(status="finished")
    with pytest.raises(KeyError, match="no job"):
        sched.job("12345")


def test_gpu_status_columns(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command("sleep 300", required_gpus=0.5)
    wait_running(sched, job_id)
    (gpu,) = sched.job(job_id)["gpus"]
    sched.pause_gpu(3)
    # Readings are cached for gpu_monitor_interval_s: wait for one taken after the start.
    wait_for(lambda: sched.get_gpu_status().loc[gpu, "load"] > 0, what="a GPU reading with the job")
    df = sched.get_gpu_status()
    assert list(df.columns) == DESIGN_GPU_COLUMNS == list(GPU_COLUMNS)
    assert list(df["gpu"]) == [0, 1, 2, 3]
    assert df.loc[gpu, "allocated"] == 0.5 and df.loc[gpu, "jobs"] == [job_id]
    assert list(df["paused"]) == [False, False, False, True]
    assert (df["memory_total"] > 0).all()
    assert df.loc[gpu, "memory_used"] > 0 and df.loc[gpu, "load"] == 0.5


# ------------------------------------------------------------------ wait, pause, thresholds


def test_wait_timeout(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command("sleep 300", required_gpus=1)
    with pytest.raises(TimeoutError, match=job_id):
        sched.wait([job_id], timeout=0.2)
    with pytest.raises(TimeoutError):
        sched.wait(timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        sched.wait(timeout=-1)
    sched.cancel(job_id)
    assert list(sched.wait(job_id, timeout=TIMEOUT)["status"]) == ["cancelled"]
    assert len(sched.wait(timeout=TIMEOUT)) == 0  # nothing active: returns at once
    with pytest.raises(KeyError, match="no job '999'"):
        sched.wait(["999"], timeout=1)


def test_wait_sees_ends_written_by_another_process(tmp_path: Path) -> None:
    """No engine here: the job is ended through a second connection, as another process
    (the dispatching kernel) would; wait() must notice it."""
    from nbsched.store import Store

    config = SchedulerConfig(state_dir=tmp_path / "s", gpu_provider="simulated", num_gpus=2)
    s = GPUJobScheduler(config=config)  # not started
    try:
        a = s.add_command("true", required_gpus=1)
        b = s.add_command("true", required_gpus=1)
        other = Store(config.db_path)

        def finish() -> None:
            for job_id in (a, b):
                other.transition(job_id, JobStatus.RUNNING, gpus=(0,))
                other.transition(job_id, JobStatus.SUCCEEDED, exit_code=0)

        t = threading.Thread(target=finish)
        t.start()
        # Named ids: with none, wait() takes the jobs active when it is called, and the
        # thread may already have ended both.
        done = s.wait([a, b], timeout=TIMEOUT)
        t.join()
        other.close()
        assert list(done["id"]) == [a, b] and set(done["status"]) == {"succeeded"}
    finally:
        s.close()


def test_wait_is_woken_when_its_jobs_may_all_have_ended(tmp_path: Path) -> None:
    """The engine tells wait() of each end it records; a wait() wakes (and reads the
    store) only when none of its jobs is left, or at any change when it shows progress.
    The ends told while it reads the store are not lost."""
    from nbsched.waiting import Waiter

    config = SchedulerConfig(state_dir=tmp_path / "s", gpu_provider="simulated", num_gpus=2)
    s = GPUJobScheduler(config=config)
    try:
        plain, progress = Waiter(), Waiter()
        progress.every = True
        plain.left, progress.left = {1, 2, 3}, {1, 2, 3}
        s._waits.waiters |= {plain, progress}
        s._notify([1])
        assert not plain.event.is_set() and progress.event.is_set()
        s._notify(())  # a submission: ends nothing
        assert not plain.event.is_set()
        s._notify([2, 7])
        assert plain.left == {3} and not plain.event.is_set()
        s._notify([3])
        assert plain.event.is_set() and plain.seen == {1, 2, 3, 7}
        other = Waiter()
        other.left = {5}
        s._waits.waiters.add(other)
        s._notify()  # any other change (a cancel, a stop, ...): every wait() looks
        assert other.event.is_set()
        s._waits.waiters.clear()

        # Through wait(): an end told while it reads the store counts, even though the
        # read (a snapshot from before) still shows the job running.
        a = s.add_command("true", required_gpus=1)
        s.store.transition(a, JobStatus.RUNNING, gpus=(0,), token="t")
        reads = 0
        read = s.store.changes_since

        def changes_since(rev: int) -> Any:
            nonlocal reads
            reads += 1
            result = read(rev)
            if reads == 1:  # the engine records the end now, and tells
                s.store.transition(a, JobStatus.SUCCEEDED, exit_code=0)
                s._notify([int(a)])
                assert next(iter(s._waits.waiters)).event.is_set()  # look again, at once
            return result

        s.store.changes_since = changes_since  # type: ignore[method-assign]
        assert list(s.wait([a], timeout=TIMEOUT)["status"]) == ["succeeded"]
        assert not s._waits.waiters  # (gone with its wait())
    finally:
        s.close()


def test_pause_and_resume(sched: GPUJobScheduler) -> None:
    for g in (0, 1, 2):
        sched.pause_gpu(g)
    a = sched.add_command("sleep 300", required_gpus=1)
    assert wait_running(sched, a)["gpus"] == [3]
    b = sched.add_command("sleep 300", required_gpus=0.5)
    settle(sched)
    assert status(sched, b) == "queued"
    assert sched.store.paused() == {0, 1, 2}
    sched.resume_gpu(1)
    assert wait_running(sched, b)["gpus"] == [1]
    # a paused GPU keeps its running job
    sched.pause_gpu(3)
    assert status(sched, a) == "running"
    with pytest.raises(ValueError, match="gpu=4"):
        sched.pause_gpu(4)
    with pytest.raises(TypeError, match="gpu="):
        sched.pause_gpu("1")  # type: ignore[arg-type]


def test_gpu_used_by_others_gets_no_job(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    gpus_file = tmp_path / "gpus.json"
    gpu = {"name": "Sim", "memory_total_mb": 1000}
    busy = {**gpu, "external_memory_used_mb": 950, "external_load": 0.5}
    write_simulated_gpus(gpus_file, [gpu, gpu, busy, gpu])
    s = make_sched(simulated_gpus_file=str(gpus_file), gpu_monitor_interval_s=0.05)
    ids = [s.add_command("sleep 300", required_gpus=1) for _ in range(4)]
    for job_id in ids[:3]:
        wait_running(s, job_id)
    settle(s)
    assert status(s, ids[3]) == "queued"
    assert sorted(g for j in ids[:3] for g in s.job(j)["gpus"]) == [0, 1, 3]
    assert s.get_gpu_status().loc[2, "memory_used"] == 950
    write_simulated_gpus(gpus_file, [gpu, gpu, {**gpu, "external_memory_used_mb": 100}, gpu])
    assert wait_running(s, ids[3])["gpus"] == [2]


def test_why_follows_the_rules_of_the_engine_that_places_the_jobs(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """Another process explains the queue with the dispatching engine's thresholds, not
    its own: here GPU 0 (90% loaded by others) takes jobs for the engine (0.95)."""
    gpus_file = tmp_path / "gpus.json"
    gpu = {"name": "Sim", "memory_total_mb": 1000}
    write_simulated_gpus(gpus_file, [{**gpu, "external_load": 0.9}, gpu])
    state = tmp_path / "shared"
    engine = make_sched(
        state_dir=state, num_gpus=2, simulated_gpus_file=str(gpus_file), gpu_load_threshold=0.95
    )
    engine.pause_gpu(1)
    big = engine.add_command("true", required_gpus=2)
    other = make_sched(start=False, state_dir=state, num_gpus=2, simulated_gpus_file=str(gpus_file))
    assert other.config.gpu_load_threshold == 0.8  # (its own default)
    assert (
        engine.why(big)
        == other.why(big)
        == ("needs 2 free GPUs; only 1 usable GPU(s) (GPU 1 paused)")
    )


def test_gpu_load_by_others_blocks_fractions_too(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    gpus_file = tmp_path / "gpus.json"
    free = {"name": "Sim", "memory_total_mb": 1000}
    loaded = {**free, "external_load": 0.95}
    write_simulated_gpus(gpus_file, [loaded, loaded])
    s = make_sched(simulated_gpus_file=str(gpus_file), num_gpus=2, gpu_monitor_interval_s=0.05)
    job_id = s.add_command("true", required_gpus=0.1)
    settle(s)
    assert status(s, job_id) == "queued"
    write_simulated_gpus(gpus_file, [loaded, free])
    s.wait([job_id], timeout=TIMEOUT)
    assert s.job(job_id)["gpus"] == [1]


def test_submissions_while_every_gpu_is_busy(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """A sweep queued while the GPUs are full costs the engine no turn per job (it plans
    again when a job ends); none is lost, they start in the order they were queued,
    and a job that fits where there is room still starts at once."""
    s = make_sched(gpu_monitor_interval_s=30.0)
    gate = tmp_path / "gate"
    hold = f"while [ ! -e {gate} ]; do sleep 0.02; done"
    busy = [s.add_command(hold, required_gpus=1) for _ in range(3)]
    half = s.add_command(hold, required_gpus=0.5)
    for job_id in [*busy, half]:
        wait_running(s, job_id)
    settle(s)
    d = s._dispatcher
    assert d is not None
    before = d.cycles
    sweep = [s.add_command(f"echo {i}", required_gpus=1) for i in range(40)]
    assert d.cycles - before <= 3  # (2 s safety-net turns at most), not one per job
    assert {status(s, j) for j in sweep} == {"queued"}
    # Ahead of the sweep, and room for it on the half-used GPU: it starts now.
    fits = s.add_command("true", required_gpus=0.5, priority=-1)
    s.wait([fits], timeout=TIMEOUT)
    assert s.job(fits)["gpus"] == s.job(half)["gpus"]
    assert {status(s, j) for j in sweep} == {"queued"}
    gate.touch()
    s.wait(timeout=TIMEOUT)
    done = s.jobs().set_index("id")
    assert set(done["status"]) == {"succeeded"} and len(done) == 45
    started = list(done.loc[sweep, "started"])
    assert started == sorted(started)  # in the order they were queued
    assert all(s.logs(j) == f"{i}\n" for i, j in enumerate(sweep))


# ------------------------------------------------------------------ the engine survives bad jobs


def test_engine_survives_bad_jobs(
    sched: GPUJobScheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for g in range(4):
        sched.pause_gpu(g)
    gone = tmp_path / "gone"
    gone.mkdir()
    no_cwd = sched.add_command("echo hi", required_gpus=1, cwd=gone)
    gone.rmdir()
    script = tmp_path / "t.py"
    script.write_text("print('x')\n")
    no_conda = sched.add_job(str(script), conda_env="no-such-env", required_gpus=1)
    boom = sched.add_command("echo boom", required_gpus=1, name="boom")
    good = sched.add_command("echo fine", required_gpus=1)

    executor = sched._engine.executors("direct")
    real_start = executor.start

    def start(launch: Any) -> Any:
        if launch.job.spec.name == "boom":
            raise RuntimeError("the executor broke")
        return real_start(launch)

    monkeypatch.setattr(executor, "start", start)
    for g in range(4):
        sched.resume_gpu(g)
    sched.wait([no_cwd, no_conda, boom, good], timeout=TIMEOUT)
    for job_id, why in ((no_cwd, "gone"), (no_conda, "conda"), (boom, "the executor broke")):
        row = sched.job(job_id)
        assert row["status"] == "failed", row
        assert "could not start" in row["reason"] and why in row["reason"]
        assert why in sched.logs(job_id)
    assert status(sched, good) == "succeeded" and sched.logs(good) == "fine\n"
    assert sched.running
    later = sched.add_command("echo later", required_gpus=1)
    sched.wait([later], timeout=TIMEOUT)
    assert status(sched, later) == "succeeded"
    assert sched.store.allocation() == {}


# ------------------------------------------------------------------ construction


def test_original_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NBSCHED_HOME", str(tmp_path / "home"))
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("")
    s = GPUJobScheduler(num_gpus=8, jobs_file_path=jobs)
    try:
        assert s.config.num_gpus == 8 and s.num_gpus == 8
        assert s.config.jobs_file == str(jobs)
        assert s.config.state_dir == tmp_path / "home"
        assert (tmp_path / "home" / "state.db").exists()
        job_id = s.add_command("true", required_gpus=8)
        assert s.job(job_id)["status"] == "queued"
    finally:
        s.close()
    s = GPUJobScheduler(8, str(jobs))  # positionally, as the original program called it
    try:
        assert s.num_gpus == 8 and s.config.jobs_file == str(jobs)
    finally:
        s.close()


def test_keyword_overrides_and_bad_config(tmp_path: Path) -> None:
    base = SchedulerConfig(state_dir=tmp_path / "s", gpu_provider="simulated", num_gpus=2)
    s = GPUJobScheduler(config=base, num_gpus=3)
    try:
        assert s.num_gpus == 3 and base.num_gpus == 2
    finally:
        s.close()
    with pytest.raises(TypeError, match="config="):
        GPUJobScheduler(config={"num_gpus": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gpu_provider"):
        GPUJobScheduler(config=base, gpu_provider="tpu")


def test_every_call_after_close_says_it_is_closed(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """Not "the state database cannot be read ... Move it aside" (the database is fine,
    and moving it aside would lose every job), nor a raw sqlite3 error."""
    from nbsched.errors import ClosedError

    s = make_sched()
    script = tmp_path / "t.py"
    script.write_text("print('x')\n")
    job_id = s.add_command("true", required_gpus=0.5)
    s.wait([job_id], timeout=TIMEOUT)
    s.close()
    calls: dict[str, Callable[[], object]] = {
        "add_command": lambda: s.add_command("echo x"),
        "add_job": lambda: s.add_job(str(script)),
        "add_sweep": lambda: s.add_sweep(str(script), args="{1,2}"),
        "jobs": s.jobs,
        "job": lambda: s.job(job_id),
        "logs": lambda: s.logs(job_id),
        "wait": lambda: s.wait([job_id]),
        "retry": lambda: s.retry(job_id),
        "cancel": lambda: s.cancel(job_id),
        "pause_gpu": lambda: s.pause_gpu(0),
        "resume_gpu": lambda: s.resume_gpu(0),
        "get_gpu_status": s.get_gpu_status,
        "counts": s.counts,
        "screens": s.screens,
        "why": lambda: s.why(job_id),
        "sweep": s.sweep,
        "sweeps": s.sweeps,
        "start": s.start,
        "num_gpus": lambda: s.num_gpus,
        "store": s.store.counts,
    }
    for name, call in calls.items():
        with pytest.raises(ClosedError) as info:
            call()
        assert isinstance(info.value, ValueError), name
        assert "closed" in str(info.value) and "Move it aside" not in str(info.value), name
        if name != "store":
            assert "create a new GPUJobScheduler" in str(info.value), name
    assert "closed" in repr(s) and not s.running
    s.stop()  # (nothing left to do: not an error)
    s.close()
    again = GPUJobScheduler(config=s.config)  # the state directory is intact
    try:
        assert again.job(job_id)["status"] == "succeeded"
    finally:
        again.close()


def test_jobs_survive_a_restart(make_sched: Callable[..., GPUJobScheduler], tmp_path: Path) -> None:
    state = tmp_path / "shared"
    first = make_sched(state_dir=state)
    job_id = first.add_command("sleep 0.3; exit 4", required_gpus=1)
    wait_running(first, job_id)
    first.stop()  # the job goes on without an engine
    assert status(first, job_id) == "running"
    second = make_sched(state_dir=state)
    second.wait([job_id], timeout=TIMEOUT)
    row = second.job(job_id)
    assert (row["status"], row["exit_code"]) == ("failed", 4)


def test_submissions_are_checked_against_the_engines_gpus(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """A process that does not dispatch validates jobs against the GPUs of the engine
    that runs them (published in the store), not against its own count: a job asking
    for GPUs the engine lacks would wait for ever."""
    state = tmp_path / "shared"
    engine = make_sched(state_dir=state, num_gpus=2)
    other = make_sched(start=False, state_dir=state, num_gpus=4)
    for kwargs, field in (
        ({"required_gpus": 4}, "required_gpus"),
        ({"required_gpus": 3}, "required_gpus"),
        ({"required_gpus": 1, "allowed_gpus": [3]}, "allowed_gpus"),
        ({"required_gpus": 0.5, "allowed_gpus": "1-2"}, "allowed_gpus"),
    ):
        with pytest.raises(ValueError, match=field) as info:
            other.add_command("echo", **kwargs)
        assert f"pid {os.getpid()}" in str(info.value) and "engine" in str(info.value)
    with pytest.raises(ValueError, match="gpu=3"):
        other.pause_gpu(3)
    assert other.counts()["queued"] == 0
    ok = other.add_command("echo ok", required_gpus=2, allowed_gpus=[0, 1])
    engine.wait([ok], timeout=TIMEOUT)
    assert status(engine, ok) == "succeeded"

    # A standby engine does not overwrite the record of the engine that dispatches...
    other.start()
    assert not other.is_dispatcher
    with pytest.raises(ValueError, match="required_gpus"):
        other.add_command("echo", required_gpus=4)
    assert json.loads(other.store.kv_get("engine") or "{}")["num_gpus"] == 2
    # ... and writes its own when it takes over: its GPUs are then the ones that exist.
    engine.stop()
    wait_for(
        lambda: json.loads(other.store.kv_get("engine") or "{}")["num_gpus"] == 4,
        what="the standby to take over and record its GPUs",
    )
    assert other.is_dispatcher
    big = other.add_command("echo big", required_gpus=4)
    other.wait([big], timeout=TIMEOUT)
    assert status(other, big) == "succeeded"


def test_a_stopped_engines_gpus_do_not_count(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    """Yesterday's engine had 8 GPUs; today's process has 4 and starts its engine after
    submitting: a job for 6 would wait for ever, so it is refused at once."""
    state = tmp_path / "shared"
    old = make_sched(state_dir=state, num_gpus=8)
    assert old.engine_pid == os.getpid() and old.is_dispatcher
    assert (old.engine_settings() or {})["num_gpus"] == 8
    old.stop()
    new = make_sched(start=False, state_dir=state, num_gpus=4)
    assert new.engine_pid is None
    with pytest.raises(ValueError, match="required_gpus=6") as info:
        new.add_command("echo", required_gpus=6)
    assert "this machine has only 4 GPU(s)" in str(info.value)
    assert new.counts()["queued"] == 0


def test_retry_back_off_after_very_many_attempts(sched: GPUJobScheduler) -> None:
    """The back-off doubles per attempt; at attempt 1500, 2**1499 s must not overflow."""
    from nbsched.executors.base import Exit
    from nbsched.jobs import JobStatus

    for g in range(4):
        sched.pause_gpu(g)
    settle(sched)  # the dispatcher has recovered (it would re-queue our hand-made attempt)
    d = sched._dispatcher
    assert d is not None
    job_id = sched.add_command("true", required_gpus=1, max_retries=5000)
    job = sched.store.transition(job_id, JobStatus.RUNNING, attempts=1500, token="t", gpus=(0,))
    assert job is not None
    before = time.time()
    d._on_exit(job, Exit(1))  # (recorded by the dispatcher's next cycle)
    wait_for(lambda: sched.store.get(job_id).status != JobStatus.RUNNING, what="the end recorded")
    after = sched.store.get(job_id)
    assert after.status == JobStatus.QUEUED and after.exit_code == 1
    assert after.not_before is not None and after.not_before > before + 3600
