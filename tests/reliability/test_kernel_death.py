"""Jobs outlive the kernel: kill -9 of the engine's process group at several moments.

Each scenario starts engine A in a process of its own, kills its whole process
group (as Jupyter does on a kernel restart) at one moment, lets some jobs end
while no engine is alive, starts engine B on the same state directory, and checks
from the jobs' own marker lines and the store that every job started exactly
once, ended once with its real exit code, and that no GPU was over-booked.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from transitions import history

from nbsched.store import Store

from .harness import Engines, job_command, overbooked, read_markers, wait_for


def _setup(tmp_path: Path, jobs: list[tuple[float, int]]) -> tuple[dict, list[Path], Path]:
    """A config with one gated marker job per (required_gpus, exit code)."""
    markers = tmp_path / "markers"
    gates = [tmp_path / f"gate{i}" for i in range(len(jobs))]
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "num_gpus": 2,
        "jobs": [
            {"command": job_command(markers, code, gate), "required_gpus": req}
            for (req, code), gate in zip(jobs, gates, strict=True)
        ],
        "wait": "mine",
    }
    return cfg, gates, markers


def _starts(markers: Path) -> int:
    return sum(read_markers(markers)[0].values())


def _exit_files(state: Path) -> int:
    return len(list((state / "run").glob("*.exit")))


def _check(
    tmp_path: Path, cfg: dict, markers: Path, done: dict, jobs: list[tuple[float, int]]
) -> Store:
    """Every job started once, ended once with its code; no GPU over capacity."""
    ids = [j["id"] for j in done["jobs"]]
    starts, ends, intervals = read_markers(markers)
    assert starts == {i: 1 for i in ids}, starts
    assert ends == {i: 1 for i in ids}, ends
    for row, (_, code) in zip(done["jobs"], jobs, strict=True):
        assert row["exit_code"] == code, row
        assert row["status"] == ("succeeded" if code == 0 else "failed"), row
    need = {i: req for i, (req, _) in zip(ids, jobs, strict=True)}
    assert overbooked(intervals, need) == []
    store = Store(Path(cfg["state_dir"]) / "state.db")
    for i in ids:
        ends_in_history = [h for h in history(store.path, i) if h["new"] in ("succeeded", "failed")]
        assert len(ends_in_history) == 1, history(store.path, i)
    assert _exit_files(Path(cfg["state_dir"])) == 0  # each read exit file was cleaned up
    return store


JOBS = [(1, 3), (0.5, 0), (0.5, 4), (1, 5), (1, 0), (0.5, 6), (2, 7)]


def test_killed_while_running_and_queued(tmp_path: Path, engines: Engines) -> None:
    """Killed with jobs running and others queued; one job ends while no engine is alive."""
    cfg, gates, markers = _setup(tmp_path, JOBS)
    a = engines.start(cfg)
    ids = a.event("submitted")["ids"]
    wait_for(lambda: _starts(markers) >= 2, what="jobs running on both GPUs")
    a.kill_group()
    running = list(read_markers(markers)[0])
    # One running job ends while no engine is alive: its exit code must not be lost.
    gates[ids.index(running[0])].touch()
    wait_for(lambda: _exit_files(Path(cfg["state_dir"])) >= 1, what="exit file")
    done = _restart_and_finish(engines, cfg, gates, ids)
    _check(tmp_path, cfg, markers, done, JOBS)


def _restart_and_finish(engines: Engines, cfg: dict, gates: list[Path], ids: list[str]) -> dict:
    """A new engine on the same state directory; every gate opened; wait until all the
    jobs ended and the engine stopped.  Returns the jobs' rows as ``_check`` takes them."""
    b = engines.start({**cfg, "jobs": [], "wait": "all", "expect_total": len(ids)})
    b.event("started")
    for g in gates:
        g.touch()
    b.event("done")
    assert b.wait_exit() == 0
    return {"jobs": [_store_row(cfg, i) for i in ids]}


def _store_row(cfg: dict, job_id: str) -> dict:
    job = Store(Path(cfg["state_dir"]) / "state.db").get(job_id)
    return {"id": job.id, "status": job.status.value, "exit_code": job.exit_code}


@pytest.mark.parametrize(
    "crash_at, release_before_restart",
    [
        ("after_mark_running:2", False),  # job 2 marked running, never spawned
        ("after_spawn:2", False),  # job 2 spawned, pid unrecorded, alive at restart
        ("after_spawn:2", True),  # job 2 spawned, pid unrecorded, ended before restart
        ("before_record_end:1", False),  # a job ended, its end not yet recorded
    ],
)
def test_crash_windows(
    tmp_path: Path, engines: Engines, crash_at: str, release_before_restart: bool
) -> None:
    jobs = [(1, 9), (1, 11), (1, 0), (0.5, 12)]
    cfg, gates, markers = _setup(tmp_path, jobs)
    state = Path(cfg["state_dir"])
    if crash_at.startswith("before_record_end"):
        gates[0].touch()  # job 1 ends at once; the engine dies recording it
    # (all jobs submitted before the engine starts: a crash between two submissions
    # would leave the later ones unsubmitted, which is not what is tested here)
    a = engines.start({**cfg, "submit_first": True}, env={"NBSCHED_TEST_CRASH_AT": crash_at})
    assert a.wait_exit() == -9, "".join(a.stderr)  # killed itself at the crash point
    ids = [str(i) for i in range(1, len(jobs) + 1)]
    store = Store(state / "state.db")
    job2 = store.get("2")
    if crash_at.startswith("after_mark_running"):
        assert job2.status.value == "running" and job2.token and job2.pid is None
        assert read_markers(markers)[0].get("2") is None
    elif crash_at.startswith("after_spawn"):
        assert job2.status.value == "running" and job2.pid is None
        wait_for(lambda: read_markers(markers)[0].get("2"), what="job 2 to start")
        if release_before_restart:
            gates[1].touch()
            wait_for(lambda: _exit_files(state) >= 1, what="job 2's exit file")
    else:
        assert store.get("1").status.value == "running"
        assert _exit_files(state) == 1
    store.close()
    done = _restart_and_finish(engines, cfg, gates, ids)
    store = _check(tmp_path, cfg, markers, done, jobs)
    if crash_at.startswith("after_mark_running"):
        reasons = [h["reason"] for h in history(store.path, "2")]
        assert any("before the job started" in (r or "") for r in reasons), reasons


def test_a_job_that_ends_while_no_engine_runs_keeps_its_true_end_time(
    tmp_path: Path, engines: Engines
) -> None:
    """The spawner stamps the end when it reaps the job: the engine that records it 3 s
    later records that time, not its own (the job ran 1 s, not 4)."""
    jobs = [(1, 0)]
    cfg, _, markers = _setup(tmp_path, jobs)
    cfg["jobs"] = [{"command": job_command(markers, 0, sleep=1.0), "required_gpus": 1}]
    a = engines.start(cfg)
    ids = a.event("submitted")["ids"]
    wait_for(lambda: _starts(markers) == 1, what="the job to start")
    a.kill_group()
    wait_for(lambda: read_markers(markers)[1], what="the job to end, no engine running")
    (interval,) = read_markers(markers)[2]
    time.sleep(3.0)
    done = _restart_and_finish(engines, cfg, [], ids)
    store = _check(tmp_path, cfg, markers, done, jobs)
    job = store.get(ids[0])
    assert job.started is not None and job.ended is not None and interval.end is not None
    assert 1.0 <= job.ended - job.started < 2.0, (job.started, job.ended)
    assert abs(job.ended - interval.end) < 0.5, (job.ended, interval.end)
    (end,) = [h for h in history(store.path, ids[0]) if h["new"] == "succeeded"]
    assert end["at"] == job.ended
    store.close()
