"""Tests of nbsched.store: a real SQLite file in tmp_path, opened as the engine opens it."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from transitions import history

from nbsched.errors import StateDirError, UnknownJobError
from nbsched.jobs import JobSpec, JobStatus
from nbsched.store import AttemptEnd, AttemptStart, Store, parse_job_id, prepare_state_dir

Q, R, S, F, C = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)


def spec(req: float = 1.0, **kw: object) -> JobSpec:
    return JobSpec(kind="command", command=kw.pop("command", "true"), required_gpus=req, **kw)  # type: ignore[arg-type]


def add(store: Store, *specs: JobSpec) -> list[str]:
    _, jobs = store.add_jobs_at(list(specs), owner_uid=os.getuid(), executor="direct")
    return [j.id for j in jobs if j is not None]


# ------------------------------------------------------------------ jobs


def test_add_jobs_committed_before_return(store: Store, state: Path) -> None:
    ids = add(store, spec(0.5, priority=2, name="a"), spec(2, allowed_gpus=(0, 1, 2)))
    other = Store(state / "state.db")  # a second connection, as another process has
    try:
        jobs = other.find(ids=ids)
        assert [j.id for j in jobs] == ids
        assert jobs[0].status == Q and jobs[0].priority == 2 and jobs[0].spec.name == "a"
        assert jobs[1].required_gpus == 2.0 and jobs[1].allowed_gpus == (0, 1, 2)
        assert other.counts()["queued"] == 2
    finally:
        other.close()
    # A raw sqlite3 connection sees them too: nothing is held in an open transaction.
    raw = sqlite3.connect(state / "state.db")
    try:
        assert raw.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2
    finally:
        raw.close()


def test_add_jobs_roundtrips_every_spec_field(store: Store) -> None:
    s = JobSpec(
        kind="script",
        required_gpus=0.25,
        priority=-3,
        script="/x/train.py",
        args=("--a", "b c", "ü'\"$(x)"),
        conda_env="env",
        allowed_gpus=(1, 3),
        max_retries=2,
        launcher="torchrun",
        gpu_arg="--cuda",
        cwd="/x",
        env={"K": "v"},
        name="n",
        sweep="sw1",
        params={"lr": 0.1},
        hash="h",
    )
    (job_id,) = add(store, s)
    assert store.get(job_id).spec == s
    assert store.get(int(job_id)).spec == s


def test_skip_hash_statuses(store: Store) -> None:
    (a,) = add(store, spec(hash="h1"))
    _, got = store.add_jobs_at(
        [spec(hash="h1"), spec(hash="h2"), spec(hash="h2"), spec()],
        owner_uid=os.getuid(),
        executor="direct",
        skip_hash_statuses=[Q, R, S],
    )
    # h1 is queued already; the second h2 meets the first, queued by this same call.
    assert [j is None for j in got] == [True, False, True, False]
    assert [j.id for j in store.find(hash="h1")] == [a]
    assert [j.id for j in store.find(hash="h2")] == [got[1].id]  # type: ignore[union-attr]
    assert got[3] is not None and int(got[3].id) == int(got[1].id) + 1  # type: ignore[union-attr]
    # Not skipping queued ones: both copies of a hash in one call go in.
    _, twice = store.add_jobs_at(
        [spec(hash="h3"), spec(hash="h3")],
        owner_uid=os.getuid(),
        executor="direct",
        skip_hash_statuses=[S],
    )
    assert all(twice) and len(store.find(hash="h3")) == 2
    assert store.add_jobs_at([], owner_uid=0, executor="direct", skip_hash_statuses=[Q])[1] == []


def test_unknown_job(store: Store) -> None:
    with pytest.raises(UnknownJobError, match="no job '99'"):
        store.get("99")
    with pytest.raises(KeyError):
        store.transition("99", R)
    for bad in ("abc", True, None, 1.5, "-1"):
        with pytest.raises(UnknownJobError):
            parse_job_id(bad)


# ------------------------------------------------------------------ transitions


def test_transitions_recorded_with_times(store: Store) -> None:
    (j,) = add(store, spec())
    store.transition(j, R, now=100.0, gpus=(2,), started=100.0, token="t")
    store.transition(j, F, now=105.5, reason="exit code 3", exit_code=3, ended=105.5)
    job = store.get(j)
    assert (
        job.status == F and job.exit_code == 3 and job.gpus == (2,) and job.reason == "exit code 3"
    )
    hist = history(store.path, j)
    assert [(h["old"], h["new"]) for h in hist] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "failed"),
    ]
    assert [h["at"] for h in hist[1:]] == [100.0, 105.5]
    assert hist[0]["reason"] == "submitted" and hist[2]["reason"] == "exit code 3"
    # A retry (ended -> queued) is allowed and recorded too.
    assert store.transition(j, Q, reason="retry requested", now=110.0) is not None
    assert history(store.path, j)[-1] == {
        "old": "failed",
        "new": "queued",
        "at": 110.0,
        "reason": "retry requested",
    }


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((), S),  # queued -> succeeded
        ((), F),  # queued -> failed
        ((R, S), R),  # succeeded -> running
        ((R, S), C),  # succeeded -> cancelled
        ((C,), R),  # cancelled -> running
    ],
)
def test_illegal_transitions_refused(
    store: Store, path: tuple[JobStatus, ...], illegal: JobStatus
) -> None:
    (j,) = add(store, spec())
    for st_ in path:
        assert store.transition(j, st_) is not None
    before, rev = store.get(j), store.revision()
    n_hist = len(history(store.path, j))
    assert store.transition(j, illegal, exit_code=9) is None
    assert store.get(j) == before
    assert store.revision() == rev
    assert len(history(store.path, j)) == n_hist


def test_expect_and_guard(store: Store) -> None:
    (j,) = add(store, spec())
    rev = store.revision()
    # expect: only from these statuses
    assert store.transition(j, C, expect={R}) is None
    assert store.get(j).status == Q and store.revision() == rev
    # guard: sees the current job, can refuse
    seen = []

    def no(job: object) -> bool:
        seen.append(job)
        return False

    assert store.transition(j, R, expect={Q}, guard=no, token="x") is None
    assert seen and seen[0].status == Q  # type: ignore[attr-defined]
    assert store.get(j).token is None and store.revision() == rev
    moved = store.transition(j, R, expect={Q}, guard=lambda job: job.status == Q, token="tok")
    assert moved is not None and moved.status == R and moved.token == "tok"
    # a second dispatcher that still thinks it is queued loses
    assert store.transition(j, R, expect={Q}, token="other") is None
    assert store.get(j).token == "tok"


def test_only_the_run_columns_may_be_set(store: Store) -> None:
    """A caller keyword is a column name in the SQL: one outside the fixed list (the
    spec, the status, the revision...) is refused before anything is written."""
    (j,) = add(store, spec(name="a"))
    before, rev = store.get(j), store.revision()
    for bad in ({"name": "x"}, {"rev": 0}, {"status": "failed"}, {"seq": 3}, {"x = 1, y": 2}):
        with pytest.raises(TypeError, match="does not set"):
            store.transition(j, R, **bad)
        with pytest.raises(TypeError, match="does not set"):
            store.update(j, **bad)
        with pytest.raises(TypeError, match="does not set"):
            store.record_attempts([], [], 1.0, pids=[(int(j), "t", bad)])
    assert store.get(j) == before and store.revision() == rev


def test_transition_returns_the_job_as_written(store: Store) -> None:
    (j,) = add(store, spec())
    fields: dict[str, Any] = {
        "started": 1.0, "ended": 2.0, "exit_code": 3, "attempts": 4, "gpus": [1, 2],
        "pid": 5, "proc_start": 6.0, "token": "t", "log_path": "/l", "node": "n",
        "not_before": 7.0, "cancel_requested": 1,
    }  # fmt: skip
    moved = store.transition(j, R, reason="why", **fields)
    assert moved is not None and moved == store.get(j)
    assert moved.gpus == (1, 2) and moved.cancel_requested is True and moved.reason == "why"


def test_update_sets_fields_without_transition(store: Store) -> None:
    (j,) = add(store, spec())
    store.transition(j, R, gpus=(0,))
    n = len(history(store.path, j))
    store.update(j, pid=1234, proc_start=5.5, node="n1", cancel_requested=True)
    job = store.get(j)
    assert (job.pid, job.proc_start, job.node, job.cancel_requested) == (1234, 5.5, "n1", True)
    assert job.status == R and len(history(store.path, j)) == n


# ------------------------------------------------------------------ derived allocation


def test_allocation_derived_from_running_jobs(store: Store) -> None:
    a, b, c, d = add(store, spec(0.5), spec(0.25), spec(2), spec(1))
    assert store.allocation() == {}
    store.transition(a, R, gpus=(0,))
    store.transition(b, R, gpus=(0,))
    store.transition(c, R, gpus=(1, 2))
    assert store.allocation() == {0: 0.75, 1: 1.0, 2: 1.0}
    store.transition(a, S)
    store.transition(c, C)
    assert store.allocation() == {0: 0.25}
    store.transition(d, R, gpus=(0,))  # (a 1-GPU job on a shared GPU only in this hand-made state)
    assert store.allocation() == {0: 1.25}
    store.transition(b, Q)  # back to the queue (retry): its share is released
    assert store.allocation() == {0: 1.0}


# ------------------------------------------------------------------ incremental reads


def test_changes_since_is_incremental(store: Store) -> None:
    rev0, changed, _ = store.changes_since(0)
    assert changed == []
    a, b = add(store, spec(), spec())
    rev1, changed, _ = store.changes_since(rev0)
    assert rev1 > rev0 and {c[0] for c in changed} == {a, b}
    assert store.changes_since(rev1) == (rev1, [], frozenset())
    store.transition(b, R, gpus=(3,))
    rev2, changed, _ = store.changes_since(rev1)
    assert rev2 > rev1 and [(c[0], c[1]) for c in changed] == [(b, R)]
    assert [j.gpus for j in store.get_many(c[0] for c in changed)] == [(3,)]
    store.update(a, not_before=5.0)
    rev3, changed, _ = store.changes_since(rev2)
    assert [c[0] for c in changed] == [a]
    # A refused transition writes nothing, so nothing looks changed.
    store.transition(a, S)
    assert store.changes_since(rev3) == (rev3, [], frozenset())


def test_changes_since_sees_other_connections(store: Store, state: Path) -> None:
    rev = store.revision()
    other = Store(state / "state.db")
    try:
        (j,) = add(other, spec())
    finally:
        other.close()
    _, changed, _ = store.changes_since(rev)
    assert [c[0] for c in changed] == [j]


# ------------------------------------------------------------------ pauses, notices, kv


def test_pauses(store: Store, state: Path) -> None:
    assert store.paused() == frozenset()
    rev = store.revision()
    store.set_paused(2, True)
    store.set_paused(2, True)
    store.set_paused(0, True)
    assert store.paused() == {0, 2}
    assert store.revision() > rev  # a pause wakes an incremental reader
    other = Store(state / "state.db")
    try:
        assert other.paused() == {0, 2}
    finally:
        other.close()
    store.set_paused(2, False)
    store.set_paused(5, False)  # resuming a GPU that is not paused is harmless
    assert store.paused() == {0}


def test_notices_are_bounded(store: Store) -> None:
    for i in range(1100):
        store.add_notice("jobs-file", f"line {i}: bad")
    got = store.notices(limit=5000)
    assert len(got) == 1000
    assert got[-1]["message"] == "line 1099: bad" and got[0]["message"] == "line 100: bad"
    assert [n["message"] for n in store.notices(limit=2)] == ["line 1098: bad", "line 1099: bad"]
    assert got[-1]["level"] == "warning" and got[-1]["source"] == "jobs-file"


def test_kv(store: Store) -> None:
    assert store.kv_get("engine") is None
    store.kv_set("engine", "a")
    store.kv_set("engine", "b")
    assert store.kv_get("engine") == "b"


def test_sweeps(store: Store) -> None:
    sid = store.new_sweep({"script": "t.py", "args": "--lr {1,2}"})
    assert sid.startswith("sw")
    assert store.sweep_spec(sid) == {"script": "t.py", "args": "--lr {1,2}"}
    assert store.sweep_spec("sw999") is None and store.sweep_spec("nope") is None


# ------------------------------------------------------------------ the state directory


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_modes_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        state = prepare_state_dir(tmp_path / "a" / "state")
        s = Store(state / "state.db")
        try:
            add(s, spec())
            files = sorted(p.name for p in state.iterdir())
            assert "state.db" in files and "state.db-wal" in files
            for p in state.iterdir():
                want = 0o700 if p.is_dir() else 0o600
                assert _mode(p) == want, (p.name, oct(_mode(p)))
        finally:
            s.close()
    finally:
        os.umask(old)
    assert _mode(state) == 0o700


def test_existing_dir_too_open_for_reading_is_tightened(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, 0o755)
    prepare_state_dir(d)
    assert _mode(d) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o702])
def test_writable_by_others_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(StateDirError, match="writable by other users") as info:
        prepare_state_dir(d)
    assert str(d) in str(info.value) and "chmod 700" in str(info.value)
    assert _mode(d) == mode  # refused, not silently changed


def test_symlink_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateDirError, match="symbolic link"):
        prepare_state_dir(link)
    assert not (real / "logs").exists()


def test_symlinked_logs_refused(tmp_path: Path) -> None:
    d = prepare_state_dir(tmp_path / "state")
    (d / "logs").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (d / "logs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateDirError, match="symbolic link"):
        prepare_state_dir(d)


def test_state_dir_that_is_a_file_refused(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_text("x")
    with pytest.raises(StateDirError, match="not a folder"):
        prepare_state_dir(f)


def _corrupt_variants(state: Path) -> dict[str, bytes]:
    """A file that is not SQLite at all, and a real database with a damaged page."""
    s = Store(state / "good.db")
    add(s, *(spec(command="x" * 500) for _ in range(50)))
    s.close()
    good = (state / "good.db").read_bytes()
    for side in ("-wal", "-shm"):
        Path(str(state / "good.db") + side).unlink(missing_ok=True)
    assert len(good) > 8192
    damaged = bytearray(good)
    damaged[4096 : 4096 + 512] = b"\xff" * 512  # the second page: part of the schema/data b-tree
    damaged[100:4096] = b"\x13" * (4096 - 100)  # the schema page's body after the header
    data_pages = bytearray(good)
    for off in range(4096 * 8, len(good), 4096):  # leave the schema, damage the rows
        data_pages[off : off + 64] = b"\xee" * 64
    return {
        "data_pages": bytes(data_pages),
        "garbage": b"this is not a database, it is a text file someone wrote here\n" * 200,
        "damaged": bytes(damaged),
    }


@pytest.mark.parametrize("variant", ["garbage", "damaged", "data_pages"])
def test_corrupt_db_is_refused_never_reset(state: Path, variant: str) -> None:
    content = _corrupt_variants(state)[variant]
    db = state / "state.db"
    db.write_bytes(content)
    os.chmod(db, 0o600)
    with pytest.raises(StateDirError) as info:
        s = Store(db)
        # If opening happened to work (SQLite reads lazily), the first read must fail.
        s.find()
    assert str(db) in str(info.value)
    assert db.read_bytes() == content


def test_newer_schema_refused(state: Path) -> None:
    s = Store(state / "state.db")
    s.close()
    raw = sqlite3.connect(state / "state.db")
    raw.execute("UPDATE meta SET value = '999' WHERE key = 'schema'")
    raw.commit()
    raw.close()
    with pytest.raises(StateDirError, match="newer nbsched"):
        Store(state / "state.db")


#: The jobs table as schema version 1 wrote it out by hand (before its columns were
#: derived from the dataclasses): a database made then must still open, unchanged.
_V1_JOBS = """CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL, status TEXT NOT NULL,
    priority INTEGER NOT NULL, kind TEXT NOT NULL, script TEXT, args TEXT NOT NULL,
    command TEXT, conda_env TEXT, required_gpus REAL NOT NULL, allowed_gpus TEXT,
    max_retries INTEGER NOT NULL, launcher TEXT, gpu_arg TEXT, cwd TEXT, env TEXT NOT NULL,
    name TEXT, sweep TEXT, params TEXT, hash TEXT, submitted REAL NOT NULL, started REAL,
    ended REAL, exit_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    gpus TEXT NOT NULL DEFAULT '[]', pid INTEGER, proc_start REAL, token TEXT,
    log_path TEXT, reason TEXT, owner_uid INTEGER, executor TEXT, node TEXT,
    not_before REAL, cancel_requested INTEGER NOT NULL DEFAULT 0)"""


def _columns(db: Path) -> dict[str, tuple[Any, ...]]:
    raw = sqlite3.connect(db)
    try:
        info = raw.execute("PRAGMA table_info(jobs)").fetchall()
    finally:
        raw.close()
    return {name: (type_, notnull, default, pk) for _, name, type_, notnull, default, pk in info}


#: The job columns added since schema 1's table, each nullable or with a default (ALTER
#: TABLE adds them to an old database at open; older versions name their columns and do
#: not see them).
_ADDED = {
    "environment": ("INTEGER", 0, None, 0),
    "held": ("INTEGER", 1, "0", 0),
    "after": ("TEXT", 0, None, 0),
    "dep_group": ("INTEGER", 0, None, 0),
    "waiting": ("INTEGER", 1, "0", 0),
    "time_limit": ("REAL", 0, None, 0),
    "expected_s": ("REAL", 0, None, 0),
    "estimate_key": ("TEXT", 0, None, 0),
    "notify": ("TEXT", 0, None, 0),
    "gpu_memory_request": ("REAL", 0, None, 0),
    "oom_retried": ("INTEGER", 1, "0", 0),
    "gpu_memory_learned": ("REAL", 0, None, 0),
    "gpu_memory_peak": ("REAL", 0, None, 0),
}


def test_the_derived_jobs_table_is_schema_1s(state: Path) -> None:
    Store(state / "state.db").close()
    raw = sqlite3.connect(state / "v1.db")
    raw.execute(_V1_JOBS)
    raw.close()
    assert _columns(state / "state.db") == {**_columns(state / "v1.db"), **_ADDED}


def test_a_schema_1_database_opens_and_keeps_working(state: Path) -> None:
    db = state / "state.db"
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    raw.execute("INSERT INTO meta VALUES ('schema', '1'), ('rev', '7')")
    raw.execute(_V1_JOBS)
    raw.execute(
        "INSERT INTO jobs (rev, status, priority, kind, command, args, required_gpus, "
        "max_retries, env, submitted, gpus) VALUES (7, 'running', 1, 'command', 'true', "
        "'[\"a b\"]', 0.5, 0, '{\"K\":\"v\"}', 3.0, '[2]')"
    )
    raw.commit()
    raw.close()
    os.chmod(db, 0o600)
    s = Store(db)
    try:
        job = s.get("1")
        assert (job.status, job.spec.args, job.spec.env, job.gpus) == (
            R,
            ("a b",),
            {"K": "v"},
            (2,),
        )
        assert s.revision() == 7 and s.allocation() == {2: 0.5}
        assert job.environment is None  # (the column added at open: NULL, the engine's)
        (new,) = add(s, spec())
        assert s.get(new).status == Q and s.revision() == 8
    finally:
        s.close()
    assert _columns(db).items() >= _ADDED.items()


# ------------------------------------------------------------------ light reads for the hot path


def test_changes_since_and_get_many(store: Store) -> None:
    rev0 = store.revision()
    a, b = add(store, spec(), spec(0.5))
    store.transition(b, R, token="tb", gpus=(1,))
    rev1, changes, _ = store.changes_since(rev0)
    assert rev1 == store.revision()
    assert sorted(c[:3] for c in changes) == [(a, Q, None), (b, R, "tb")]
    assert {c[0]: c[3] for c in changes}[b] == rev1  # each row's own revision
    assert {c[0]: c[3] for c in changes}[a] < rev1
    assert store.changes_since(rev1) == (rev1, [], frozenset())
    assert [j.id for j in store.get_many([b, a, "999", int(a)])] == [a, b]
    assert store.get_many([]) == []
    many = add(store, *(spec() for _ in range(1200)))  # more than one chunk of ids
    assert [j.id for j in store.get_many(many)] == many


def test_unended(store: Store) -> None:
    a, b, c = add(store, spec(), spec(), spec())
    store.transition(b, R)
    store.transition(c, C)
    seqs = {int(a), int(b), int(c)}
    assert store.unended_at(seqs)[1] == {int(a), int(b)}
    assert store.unended_at(None)[1] == {int(a), int(b)}
    assert store.unended_at(set())[1] == set()
    assert store.unended_at({999})[1] == set()
    many = {int(i) for i in add(store, *(spec() for _ in range(600)))}
    store.transition(str(min(many)), C)
    assert store.unended_at(many | seqs)[1] == (many - {min(many)}) | {int(a), int(b)}
    # With the revision of the same read: a change after it is one changes_since reports.
    rev, found = store.unended_at(seqs)
    assert (rev, found) == (store.revision(), {int(a), int(b)})
    assert store.unended_at(set()) == (rev, set())
    store.transition(a, R)
    assert [c[0] for c in store.changes_since(rev).changes] == [a]


def test_record_starts_is_guarded(store: Store) -> None:
    (j,) = add(store, spec())
    seq = int(j)
    assert store.record_starts([(seq, "tok", {"pid": 5})]) == {seq}  # still queued
    store.transition(j, R, token="tok")
    rev = store.revision()
    assert store.record_starts([(seq, "other", {"pid": 5})]) == {seq}  # another attempt
    assert store.revision() == rev and store.get(j).pid is None
    fields = {"pid": 5, "proc_start": 1.5, "node": "n"}
    assert store.record_starts([(seq, "tok", fields)]) == set()
    job = store.get(j)
    assert (job.pid, job.proc_start, job.node) == (5, 1.5, "n")
    rev2, changes, _ = store.changes_since(rev)
    assert rev2 == rev + 1 and changes == [(j, R, "tok", rev2)]
    store.update(j, cancel_requested=True)
    assert store.record_starts([(seq, "tok", {"pid": 6})]) == {seq}  # a cancel is under way
    assert store.get(j).pid == 5


def _open_store_at(args: tuple[str, Any]) -> str:
    path, barrier = args
    barrier.wait()
    try:
        Store(Path(path)).close()
        return "ok"
    except Exception as exc:  # reported to the test, which names it
        return f"{type(exc).__name__}: {exc}"


def test_many_processes_open_a_fresh_database_together(tmp_path: Path) -> None:
    """Kernels started together on a new state directory: none may see 'database is
    locked' (turning a new database to WAL needs an exclusive lock)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    n = 6
    with ctx.Manager() as manager, ctx.Pool(n) as pool:
        for round_ in range(8):
            folder = prepare_state_dir(tmp_path / f"s{round_}")
            barrier = manager.Barrier(n)
            results = pool.map(_open_store_at, [(str(folder / "state.db"), barrier)] * n)
            assert results == ["ok"] * n, results


def test_add_jobs_at_reports_the_revision_the_rows_carry(store: Store) -> None:
    rev, jobs = store.add_jobs_at([spec(), spec()], owner_uid=os.getuid(), executor="direct")
    assert rev == store.revision()
    _, changes, _ = store.changes_since(rev - 1)
    assert sorted((c[0], c[3]) for c in changes) == sorted((j.id, rev) for j in jobs if j)


def test_record_starts_writes_only_the_attempts_still_running(store: Store) -> None:
    a, b, c = add(store, spec(), spec(), spec())
    store.transition(a, R, token="ta")
    store.transition(b, R, token="tb")
    store.update(b, cancel_requested=True)
    rev = store.revision()
    missed = store.record_starts(
        [(int(a), "ta", {"pid": 11}), (int(b), "tb", {"pid": 12}), (int(c), "tc", {"pid": 13})]
    )
    assert missed == {int(b), int(c)}
    assert (store.get(a).pid, store.get(b).pid, store.get(c).pid) == (11, None, None)
    assert store.revision() == rev + 1  # one revision for the batch
    assert store.record_starts([(int(c), "tc", {"pid": 13})]) == {int(c)}
    assert store.revision() == rev + 1  # nothing written, nothing bumped


def test_record_attempts_applies_each_end_and_start_to_its_own_attempt(store: Store) -> None:
    ok, bad, retry, cancelled, stale, retry_cancelled, new, gone = add(
        store, *(spec() for _ in range(8))
    )
    for j in (ok, bad, retry, cancelled, stale, retry_cancelled):
        store.transition(j, R, token=f"t{j}", attempts=1)
    for j in (cancelled, retry_cancelled):
        store.update(j, cancel_requested=True)
    store.transition(gone, C)  # cancelled while queued: a start must not apply
    job = {j: store.get(j) for j in (ok, bad, retry, cancelled, stale, retry_cancelled, new, gone)}
    old_attempt = dataclasses.replace(job[stale], token="an-older-attempt")
    ends = [
        AttemptEnd(job[ok], S, 0, None),
        AttemptEnd(job[bad], F, 3, "exit code 3"),
        AttemptEnd(job[retry], Q, 1, "exit code 1", 500.0, "retrying in 1s"),
        AttemptEnd(job[cancelled], F, -15, "exit code -15"),
        AttemptEnd(old_attempt, F, 1, "exit code 1"),
        AttemptEnd(job[retry_cancelled], Q, 1, "exit code 1", 500.0, "retrying in 1s"),
    ]
    starts = [AttemptStart(job[new], (2,), "tnew", "/l/new.log"),
              AttemptStart(job[gone], (3,), "tgone", "/l/gone.log")]  # fmt: skip
    rev = store.revision()
    pids = [(int(ok), f"t{ok}", {"pid": 71}), (int(gone), "tgone", {"pid": 72})]
    recorded, running, missed = store.record_attempts(ends, starts, now=400.0, pids=pids)
    assert missed == {int(gone)}  # not running: its pid is not written
    assert store.get(ok).pid == 71  # written before its end, in the same transaction
    assert recorded == [S, F, Q, C, None, C]
    assert store.revision() == rev + 1  # one transaction, one revision
    assert (store.get(ok).status, store.get(ok).exit_code) == (S, 0)
    assert (store.get(bad).status, store.get(bad).reason) == (F, "exit code 3")
    again = store.get(retry)
    assert (again.status, again.not_before, again.reason, again.pid) == (
        Q,
        500.0,
        "retrying in 1s",
        None,
    )
    assert (store.get(cancelled).status, store.get(cancelled).reason) == (C, "cancelled")
    assert store.get(stale).status == R  # the end of another attempt changes nothing
    assert store.get(retry_cancelled).status == C
    assert running[1] is None and store.get(gone).status == C
    started = running[0]
    assert started is not None and started == store.get(new)  # the job as the row says
    assert (started.status, started.gpus, started.token, started.attempts) == (R, (2,), "tnew", 1)
    assert [h["new"] for h in history(store.path, ok)] == ["queued", "running", "succeeded"]
    assert history(store.path, new)[-1]["at"] == 400.0


def test_changes_since_reads_changes_revision_and_pauses_together(store: Store) -> None:
    rev0 = store.revision()
    (a,) = add(store, spec())
    store.set_paused(2, True)
    store.set_paused(0, True)
    rev, changes, paused = store.changes_since(rev0)
    assert rev == store.revision() and paused == frozenset({0, 2})
    assert [c[:3] for c in changes] == [(a, Q, None)]
    store.set_paused(2, False)
    feed = store.changes_since(rev)
    assert feed == (rev + 1, [], frozenset({0}))  # a pause moves the revision
    assert (feed.rev, feed.changes, feed.paused) == (rev + 1, [], frozenset({0}))
    assert store.changes_since(rev0) == (feed.rev, changes, frozenset({0}))


def test_reads_from_many_short_lived_threads_do_not_pile_up_connections(store: Store) -> None:
    """Each thread reads through its own connection; those of ended threads are closed."""
    import threading

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    store.revision()
    before = open_fds()
    for _ in range(40):
        t = threading.Thread(target=store.revision)
        t.start()
        t.join()
    store.revision()
    assert open_fds() <= before + 3  # (one thread's connection may still be open)


def test_reads_in_other_threads_see_every_commit(store: Store) -> None:
    import threading

    seen: list[int] = []
    (a,) = add(store, spec())
    t = threading.Thread(target=lambda: seen.append(len(store.get_many([a]))))
    t.start()
    t.join()
    store.transition(a, R, token="t")
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(store.get(a).status))
    t.start()
    t.join()
    assert seen == [1] and got == [R]


def test_job_evolve_is_dataclasses_replace(store: Store) -> None:
    """The dispatcher's fast copy of a job gives what dataclasses.replace gives."""
    (j,) = add(store, spec(0.5, name="a"))
    job = store.get(j)
    changes: dict[str, Any] = {"status": R, "pid": 12, "gpus": (1,), "node": "n"}
    assert job.evolve(**changes) == dataclasses.replace(job, **changes)
    assert job.evolve() == job and job.evolve() is not job
    assert job.pid is None and job.status == Q  # the original is unchanged
    with pytest.raises(TypeError, match="no field.*colour"):
        job.evolve(colour="red")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.evolve(pid=3).pid = 4  # type: ignore[misc]
