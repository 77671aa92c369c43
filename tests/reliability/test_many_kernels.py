"""Several kernels on one state directory: one dispatches, the others submit and read.

Four engine processes each submit 50 one-GPU jobs to 2 simulated GPUs through one
state directory; then the dispatching one is killed while another one waits, and
the waiting one takes the lease over and finishes the queue.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbsched.engine.lease import DispatcherLease
from nbsched.store import Store

from .harness import Engines, job_command, overbooked, read_markers, wait_for

N_PROCS = 4
N_JOBS = 50


def _no_lock_errors(stderr: list[str]) -> None:
    text = "".join(stderr)
    assert "locked" not in text and "SQLITE_BUSY" not in text, text
    assert "Traceback" not in text, text


def test_four_kernels_one_state_dir(tmp_path: Path, engines: Engines) -> None:
    state = tmp_path / "state"
    markers = tmp_path / "markers"
    total = N_PROCS * N_JOBS
    procs = []
    for p in range(N_PROCS):
        jobs = [
            {"command": job_command(markers, (p * N_JOBS + i) % 7), "required_gpus": 1}
            for i in range(N_JOBS)
        ]
        cfg = {
            "state_dir": str(state),
            "num_gpus": 2,
            "jobs": jobs,
            "wait": "all",
            "expect_total": total,
        }
        procs.append(engines.start(cfg))
    # Until all 200 jobs have ended, one process holds the lease throughout: nobody
    # died, so it never moved.  (The store is read first: once all have ended, the
    # processes may stop, and the lease then passes from one to the next.)
    lease = DispatcherLease(state)
    watcher = Store(state / "state.db") if (state / "state.db").exists() else None
    holders = set()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not any(e.proc.poll() is not None for e in procs):
        if watcher is None and (state / "state.db").exists():
            watcher = Store(state / "state.db")
        if watcher is not None:
            counts = watcher.counts()
            if counts["queued"] + counts["running"] == 0 and sum(counts.values()) == total:
                break
        holders.add(lease.holder_pid())
        time.sleep(0.02)
    holders.discard(None)  # before the first one took it
    assert len(holders) == 1 and holders <= {e.proc.pid for e in procs}, holders
    dones = [e.event("done", timeout=150) for e in procs]
    for e in procs:
        assert e.wait_exit() == 0, "".join(e.stderr)
        _no_lock_errors(e.stderr)

    # Each process's wait()/job() saw the dispatcher's work: its jobs ended, with codes.
    seen: dict[str, int] = {}
    for p, done in enumerate(dones):
        for i, row in enumerate(done["jobs"]):
            code = (p * N_JOBS + i) % 7
            assert row["exit_code"] == code, row
            assert row["status"] == ("succeeded" if code == 0 else "failed"), row
            seen[row["id"]] = code
        assert done["frame"] == {r["id"]: r["status"] for r in done["jobs"]}  # jobs() too
    assert len(seen) == total

    starts, ends, intervals = read_markers(markers)
    assert starts == {i: 1 for i in seen}
    assert ends == {i: 1 for i in seen}
    assert overbooked(intervals, {i: 1.0 for i in seen}) == []
    assert watcher is not None
    assert watcher.counts()["queued"] == 0 and watcher.counts()["running"] == 0
    watcher.close()


def test_standby_takes_over_when_the_dispatcher_dies(tmp_path: Path, engines: Engines) -> None:
    state = tmp_path / "state"
    markers = tmp_path / "markers"
    codes = [0, 3, 0, 5, 6, 0, 8, 9]
    base = {"state_dir": str(state), "num_gpus": 2}
    a = engines.start({**base, "jobs": [], "wait": "forever"})
    a.event("submitted")
    lease = DispatcherLease(state)
    wait_for(lambda: lease.holder_pid() == a.proc.pid, what="A to dispatch")
    jobs = [{"command": job_command(markers, c, sleep=0.2), "required_gpus": 1} for c in codes]
    b = engines.start({**base, "jobs": jobs, "wait": "mine"})
    b.event("submitted")
    wait_for(lambda: sum(read_markers(markers)[0].values()) >= 2, what="jobs started by A")
    assert lease.holder_pid() == a.proc.pid  # B only submitted
    a.kill_group()
    done = b.event("done", timeout=120)
    assert b.wait_exit() == 0, "".join(b.stderr)
    _no_lock_errors(b.stderr)
    assert done["dispatcher"] is True  # B took the lease over
    assert [r["exit_code"] for r in done["jobs"]] == codes
    ids = [r["id"] for r in done["jobs"]]
    starts, ends, intervals = read_markers(markers)
    assert starts == {i: 1 for i in ids} and ends == {i: 1 for i in ids}
    assert overbooked(intervals, {i: 1.0 for i in ids}) == []


def test_a_job_committed_right_after_the_dispatchers_read_is_seen(tmp_path: Path) -> None:
    """changes_since reads the revision and the jobs in one statement (one snapshot):
    a job another process commits just after that read must reach the dispatcher at
    its next read, neither lost nor covered by the revision it was given."""
    from nbsched.jobs import JobSpec

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    dispatcher_store = Store(state / "state.db")
    other_process = Store(state / "state.db")
    spec = JobSpec(kind="command", required_gpus=1, command="true")
    other_process.add_jobs_at([spec], owner_uid=0, executor="direct")
    rev, changes, _ = dispatcher_store.changes_since(0)
    assert [c[0] for c in changes] == ["1"]

    db = dispatcher_store._db
    real_read = db.read
    calls = 0

    def read_then_commit_elsewhere(sql: str, params: Sequence[Any] = ()) -> list[Any]:
        nonlocal calls
        out = real_read(sql, params)
        calls += 1
        if calls == 1:  # right after the dispatcher's read
            other_process.add_jobs_at([spec], owner_uid=0, executor="direct")
        return out

    db.read = read_then_commit_elsewhere  # type: ignore[method-assign]
    rev, changes, _ = dispatcher_store.changes_since(rev)
    db.read = real_read  # type: ignore[method-assign]
    _, later, _ = dispatcher_store.changes_since(rev)
    assert calls == 1 and "2" in {c[0] for c in changes} | {c[0] for c in later}
    dispatcher_store.close()
    other_process.close()
