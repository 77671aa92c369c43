"""Tests of the jobs table (nbsched.frames.jobs_frame over Store.table): the table users
get from jobs() and wait() says what each job's record says, with the same types."""

from __future__ import annotations

import datetime as dt
import os
import time

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbsched import frames
from nbsched.frames import local_zone
from nbsched.jobs import Job, JobSpec, JobStatus, display_command
from nbsched.store import Store
from nbsched.store.rows import dumps as store_dumps

Q, R = JobStatus.QUEUED, JobStatus.RUNNING


#: The type pandas gives a column of strings (pandas 3: str, with NaN for a missing one).
TEXT = pd.Series(["x"]).dtype

#: What jobs() promises each column is, with rows or without.
DTYPES = {
    **dict.fromkeys(
        [
            "id",
            "status",
            "command",
            "log",
            "name",
            "sweep",
            "node",
            "reason",
            "after",
            "estimate_source",
        ],
        TEXT,
    ),
    "priority": "int64",
    "estimate": "float64",
    "required_gpus": "float64",
    "attempts": "int64",
    "exit_code": "Int64",
    **dict.fromkeys(
        ["submitted", "started", "ended", "eta"], pd.DatetimeTZDtype("ns", local_zone())
    ),
    "gpus": object,
    "held": "bool",
    "waiting": "bool",
    **dict.fromkeys(["gpu_memory_request", "gpu_memory", "gpu_memory_peak"], "float64"),
}


def row_by_row(jobs: list[Job]) -> pd.DataFrame:
    """The table built the plain way: one row per decoded job (``frames.job_row``, what
    ``job(id)`` returns), then the promised type for each column (what pandas infers
    for one with values: a column of no value at all, or one with only None, would be
    object otherwise)."""
    df = pd.DataFrame([frames.job_row(j) for j in jobs], columns=list(frames.JOB_COLUMNS))
    for col in ("submitted", "started", "ended", "eta"):
        df[col] = pd.to_datetime(df[col], utc=True).dt.tz_convert(local_zone())
    return df.astype(DTYPES)


def add(store: Store, spec: JobSpec) -> str:
    _, (job,) = store.add_jobs_at([spec], owner_uid=os.getuid(), executor="direct")
    assert job is not None
    return job.id


def varied(store: Store) -> list[str]:
    """Jobs in every status, of both kinds, with and without the optional fields."""
    cmd = JobSpec(kind="command", command="echo 'a b' | wc -c", required_gpus=0.25)
    script = JobSpec(
        kind="script",
        script="/data/train.py",
        args=("--name", 'it\'s a "test"', "ünï"),
        conda_env="torch",
        required_gpus=2,
        priority=-3,
        name="train",
        sweep="sw1",
    )
    bare = JobSpec(kind="script", script="run.sh", required_gpus=1)
    empty = JobSpec(kind="command", command="", required_gpus=1, name="")
    ids = [add(store, s) for s in (cmd, script, bare, empty, cmd, script, bare)]
    queued, running, succeeded, failed, cancelled, retried, cancelled_queued = ids
    now = 1_700_000_000.25
    store.transition(running, R, now=now, gpus=(0, 1), started=now, token="t1", attempts=1)
    store.update(running, node="node-2", pid=4242)
    for j, end, code, reason in (
        (succeeded, JobStatus.SUCCEEDED, 0, None),
        (failed, JobStatus.FAILED, 137, "exit code 137 (killed: SIGKILL)"),
        (cancelled, JobStatus.CANCELLED, None, "cancelled"),
    ):
        store.transition(j, R, now=now + 1, gpus=(3,), started=now + 1, token=f"t{j}", attempts=1)
        store.transition(j, end, now=now + 2.5, ended=now + 2.5, exit_code=code, reason=reason)
    store.transition(retried, R, now=now, gpus=(2,), started=now, token="t9", attempts=1)
    store.transition(
        retried, Q, now=now + 3, reason="retrying in 2s", exit_code=1, not_before=now + 5
    )
    store.transition(cancelled_queued, JobStatus.CANCELLED, now=now + 4, reason="cancelled")
    del queued
    return ids


def test_table_says_what_each_job_says(store: Store) -> None:
    ids = varied(store)
    table = frames.jobs_frame(store.table())
    pd.testing.assert_frame_equal(table, row_by_row(store.find()))
    assert list(table["id"]) == ids
    assert table["command"][1] == "[torch] /data/train.py --name 'it'\"'\"'s a \"test\"' 'ünï'"
    assert table["gpus"][1] == [0, 1] and table["node"][1] == "node-2"
    assert list(table["exit_code"].astype(object).where(table["exit_code"].notna(), None)) == [
        None, None, 0, 137, None, 1, None,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("statuses", "limit", "newest"),
    [
        (None, None, False),
        ([Q], None, False),
        ([R, Q], None, False),
        ([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED], 2, False),
        (None, 3, True),
        ([JobStatus.FAILED], 0, False),
        ([Q], 5, True),
    ],
)
def test_table_filters_as_find_does(
    store: Store, statuses: list[JobStatus] | None, limit: int | None, newest: bool
) -> None:
    varied(store)
    want = store.find(statuses=statuses, limit=limit, newest=newest)
    got = frames.jobs_frame(store.table(statuses=statuses, limit=limit, newest=newest))
    pd.testing.assert_frame_equal(got, row_by_row(want))


def test_table_by_ids_across_chunks(store: Store) -> None:
    """wait() asks for its jobs by number: more than one statement's worth of them,
    unknown ones left out, in submission order whatever the order asked."""
    _, ids = store.add_jobs_at(
        [JobSpec(kind="command", command=f"echo {i}", required_gpus=1) for i in range(1203)],
        owner_uid=os.getuid(),
        executor="direct",
    )
    wanted = [j.id for j in ids if j is not None][::-2] + ["99999"]
    rows = store.table(ids=wanted)
    assert [str(r[0]) for r in rows] == sorted(wanted[:-1], key=int)
    assert [r[6] for r in rows][:2] == ["echo 0", "echo 2"]
    assert store.table(ids=[]) == []
    assert len(store.table(ids=wanted, limit=3, newest=True)) == 3


def test_empty_table_has_the_columns_and_types(store: Store) -> None:
    table = frames.jobs_frame(store.table())
    assert list(table.columns) == list(frames.JOB_COLUMNS) and table.empty
    pd.testing.assert_frame_equal(table, row_by_row([]))
    assert str(table["exit_code"].dtype) == "Int64"
    assert all(str(table[c].dtype).startswith("datetime64") for c in ("submitted", "ended"))


@pytest.mark.parametrize(
    "statuses", [None, [Q], [R], [JobStatus.SUCCEEDED, JobStatus.FAILED], [JobStatus.CANCELLED]]
)
def test_types_are_the_same_with_rows_or_without(
    store: Store, statuses: list[JobStatus] | None
) -> None:
    """A table of no job, or of jobs none of which has a name, a node or a start yet,
    has the same column types as any other (the empty one had object for priority,
    required_gpus and attempts and datetime64[s] for times; pandas picked the unit of
    the times from the values, and gave a column of only None the type object)."""
    empty = frames.jobs_frame(store.table())
    varied(store)
    table = frames.jobs_frame(store.table(statuses=statuses))
    assert not table.empty
    assert (
        dict(table.dtypes)
        == dict(empty.dtypes)
        == {c: pd.Series(dtype=t).dtype for c, t in DTYPES.items()}
    )
    # One missing value in every text column: the reason's and the node's are alike.
    text = table[["log", "name", "sweep", "node", "reason"]]
    missing = {type(v) for col in text for v in text[col] if pd.isna(v)}
    assert len(missing) <= 1


def test_whole_second_times_are_nanoseconds_too(store: Store) -> None:
    j = add(store, JobSpec(kind="command", command="true", required_gpus=1))
    store.transition(j, R, now=2.0, gpus=(0,), started=2.0, token="t", attempts=1)
    table = frames.jobs_frame(store.table())
    assert table["started"].dtype == pd.DatetimeTZDtype("ns", local_zone())
    assert table["started"][0] == pd.Timestamp(2.0, unit="s", tz="UTC")
    assert table["started"][0].timestamp() == 2.0


@pytest.mark.parametrize("zone", ["America/New_York", "EST+5EDT,M3.2.0,M11.1.0"])
def test_times_are_in_this_machines_zone(
    store: Store, monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    """A researcher in New York reads 19:00:02-05:00, not an unmarked 00:00:02 (UTC);
    also where TZ is a POSIX rule (pandas cannot use dateutil's zone for one)."""
    j = add(store, JobSpec(kind="command", command="true", required_gpus=1))
    store.transition(j, R, now=2.0, gpus=(0,), started=2.0, token="t", attempts=1)
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        started = frames.jobs_frame(store.table())["started"][0]
        assert (started.hour, started.utcoffset()) == (19, dt.timedelta(hours=-5))
        assert started.timestamp() == 2.0
        assert frames.job_row(store.get(j))["started"] == started
        assert frames.jobs_frame(store.table()).to_json(date_format="iso")  # (it crashed)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_rows_do_not_share_their_gpu_lists(store: Store) -> None:
    for _ in range(2):
        j = add(store, JobSpec(kind="command", command="true", required_gpus=1))
        store.transition(j, R, now=1.0, gpus=(1,), started=1.0, token=f"t{j}", attempts=1)
    table = frames.jobs_frame(store.table())
    table["gpus"][0].append(7)
    assert table["gpus"][1] == [1]


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("",), None),
        (("--lr", "0.1", "--seed", "7"), None),
        (("--lr", "0.1", "--seed", "7"), "torch"),
        (("a b", "$(x)", "it's", "ünï", "--x=1,2:3@4%5+6", ""), "my env"),
        ((), None),
    ],
)
def test_command_column_quotes_as_display_command_does(
    store: Store, args: tuple[str, ...], env: str | None
) -> None:
    """The table quotes only the words that need it, as shlex.join (and so job(id))
    does: empty words, spaces, quotes, $(...) and non-ASCII letters."""
    for script in ("/data/train.py", "/data/my script.py"):
        add(store, JobSpec(kind="script", script=script, args=args, conda_env=env, required_gpus=1))
    table = frames.jobs_frame(store.table())
    assert list(table["command"]) == [j.display_command() for j in store.find()]


@settings(max_examples=300, deadline=None)
@given(
    args=st.lists(st.text(alphabet=st.sampled_from(list("ab1-_=,./\"'\\ $ü[]:@%+\n")), max_size=6)),
    script=st.sampled_from(["/d/train.py", "", "/d/a b.py", '/d/x"y.py']),
    env=st.sampled_from([None, "", "torch", "my env"]),
)
def test_command_column_is_display_command_for_any_words(
    args: list[str], script: str, env: str | None
) -> None:
    """The table's shortcut for words that need no quoting (cut from the stored JSON
    text) gives what shlex.join gives, whatever the words."""
    raw = {
        "kind": ["script"],
        "command": [None],
        "script": [script],
        "args": [store_dumps(args)],
        "conda_env": [env],
    }
    assert frames._commands(raw) == [display_command("script", None, script, args, env)]
