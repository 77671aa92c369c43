"""Estimates: a time limit and a hint as a job's own (in the API, the CLI, the magics and
the form, checked where they enter), and estimates learned from the runs that succeeded
(the job's sweep, the same script with the same argument names, the same command),
shown in ``jobs()`` and carried by the dispatcher's queue entries."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import run_cli
from hypothesis import given
from hypothesis import strategies as st
from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.dispatcher.entries import Batch, Queued
from nbsched.formats.duration import format_duration, parse_duration
from nbsched.jobs import JobSpec, JobStatus
from nbsched.store import AttemptEnd, AttemptStart, Store
from nbsched.store.durations import RECENT, estimate_key, typical
from nbsched.store.estimates import Estimator

TIMEOUT = 60.0


@pytest.fixture
def scheduler_config() -> dict[str, Any]:
    return {"num_gpus": 2}


# -- durations as people write them ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2h30m", 9000), ("90m", 5400), ("45s", 45), ("1h", 3600), ("1d", 86400), ("90", 90),
     ("1.5h", 5400), (" 2H ", 7200), ("2.5", 2.5), ("1m30s", 90)],
)  # fmt: skip
def test_durations_read(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2x", "1h1h", "30m1h", "1h30", "-5", "1 h", "inf"])
def test_what_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


@given(st.integers(min_value=1, max_value=10**7))
def test_a_whole_number_of_seconds_reads_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(alphabet="0123456789.dhms -+eE_xHM", max_size=12) | st.text(max_size=12))
def test_any_text_is_a_duration_or_none_never_an_error(text: str) -> None:
    seconds = parse_duration(text)
    assert seconds is None or (seconds >= 0 and seconds == seconds)


def test_durations_are_written_in_whole_units() -> None:
    assert [format_duration(s) for s in (9000, 90, 45, 0.5, 3600, 86460)] == [
        "2h30m", "1m30s", "45s", "0.5s", "1h", "1d1m",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "error", "words"),
    [
        ("time_limit", "2x", ValueError, "time_limit='2x': expected seconds (a number > 0) or "
         "a duration like '2h30m'"),
        ("time_limit", 0, ValueError, "time_limit=0: must be more than 0 s"),
        ("time_limit", float("nan"), ValueError, "time_limit=nan: must be more than 0 s"),
        ("time_limit", True, TypeError, "time_limit=True: expected seconds"),
        ("time_limit", [60], TypeError, "time_limit=[60]: expected seconds"),
        ("expected_s", -1, ValueError, "expected_s=-1: must be more than 0 s"),
        ("expected_s", "soon", ValueError, "expected_s='soon': expected seconds"),
    ],
)  # fmt: skip
def test_a_bad_limit_or_hint_is_refused_and_nothing_is_queued(
    sched: GPUJobScheduler, script: str, field: str, value: object, error: type, words: str
) -> None:
    for submit in (
        lambda: sched.add_command("true", **{field: value}),
        lambda: sched.add_job(script, **{field: value}),
        lambda: sched.add_sweep(script, args="--lr {1,2}", **{field: value}),
    ):
        with pytest.raises(error) as info:
            submit()
        assert words in str(info.value)
    assert sched.jobs().empty


# -- a job's own: the time limit, the hint -------------------------------------------------


def test_jobs_show_a_time_limit_then_a_hint_as_the_estimate(
    sched: GPUJobScheduler, script: str
) -> None:
    both = sched.add_command("sleep 1", time_limit="2h30m", expected_s=60)
    hint = sched.add_job(script, args=["--lr", "1"], expected_s="10m")
    none = sched.add_command("sleep 2")
    swept = sched.add_sweep(script, args="--lr {1,2}", time_limit=90)
    table = sched.jobs().set_index("id")
    assert (
        table.loc[both, "estimate"] == 9000 and table.loc[both, "estimate_source"] == "time limit"
    )
    assert (table.loc[hint, "estimate"], table.loc[hint, "estimate_source"]) == (600, "hint")
    assert table.loc[none, ["estimate", "estimate_source"]].isna().all()
    assert set(table.loc[list(swept), "estimate_source"]) == {"time limit"}
    assert sched.job(both)["estimate"] == 9000 and sched.job(hint)["estimate_source"] == "hint"
    assert (sched.job(none)["estimate"], sched.job(none)["estimate_source"]) == (None, None)
    assert str(table["estimate"].dtype) == "float64"


_cli = run_cli


def test_time_and_expected_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_sched: Callable[..., GPUJobScheduler]
) -> None:
    sim = ["--state-dir", str(tmp_path / "state"), "--simulate", "2", "--json"]
    rc, out, err = _cli(["run", *sim, "--time", "2h30m", "--expected", "90m", "--", "true"], capsys)
    assert rc == 0, err
    job_id = json.loads(out)["id"]
    rc, _, err = _cli(["run", *sim, "--time", "2x", "--", "true"], capsys)
    assert rc == 2 and "argument --time: time_limit='2x': expected seconds" in err
    rc, _, err = _cli(["run", *sim, "--expected", "0", "--", "true"], capsys)
    assert rc == 2 and "argument --expected: expected_s='0': must be more than 0 s" in err
    s = make_sched(state_dir=tmp_path / "state")
    job = s.store.get(job_id)
    assert (job.spec.time_limit, job.spec.expected_s) == (9000.0, 5400.0)
    assert len(s.jobs()) == 1


def test_time_and_expected_in_the_magics(ip: Any, tmp_path: Path) -> None:
    from IPython.core.error import UsageError

    s = ip.run_line_magic("gpusched", f"start --simulate 2 --state-dir {tmp_path / 'state'}")
    for g in (0, 1):
        s.pause_gpu(g)
    job_id = ip.run_line_magic("gpusched", "run --time 45s --expected 30 -- sleep 9")
    row = s.job(job_id)
    assert (row["estimate"], row["estimate_source"]) == (45.0, "time limit")
    assert s.store.get(job_id).spec.expected_s == 30.0
    with pytest.raises(UsageError, match="time_limit='soon'"):
        ip.run_line_magic("gpusched", "run --time soon -- sleep 9")


def test_the_form_takes_a_time_limit_and_a_hint(sched: GPUJobScheduler, tmp_path: Path) -> None:
    from nbsched.jupyter import SubmitForm

    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    form = SubmitForm(sched, conda_env_names=[])
    form.script.value = str(script)
    form.time_limit.value = "2x"
    form.submit_button.click()
    assert form.error is not None and "time limit='2x': expected seconds" in form.error
    assert sched.jobs().empty
    form.time_limit.value, form.expected.value = "1h", "10m"
    form.submit_button.click()
    assert form.error is None and len(form.submitted) == 1
    spec = sched.store.get(form.submitted[0]).spec
    assert (spec.time_limit, spec.expected_s) == (3600.0, 600.0)


# -- learned estimates ----------------------------------------------------------------------


def test_the_statistic_is_the_upper_median_and_one_outlier_cannot_move_it() -> None:
    assert typical([]) is None
    assert typical([7.0]) == 7.0
    assert typical([5.0, 9.0]) == 9.0  # (two runs: the longer)
    assert typical([10.0, 10.0, 1000.0]) == 10.0
    assert typical([10.0, 0.001, 11.0]) == 10.0
    assert typical([10.0, 12.0, 11.0, 1e9]) == 12.0  # (between two real runs)


def test_argument_names_not_values_make_a_scripts_key() -> None:
    key = estimate_key("script", "/t.py", ["--lr", "0.1", "--seed", "1"], None)
    assert key == estimate_key("script", "/t.py", ["--seed", "-3", "--lr=2"], None)
    assert key != estimate_key("script", "/t.py", ["--lr", "0.1"], None)
    assert key != estimate_key("script", "/u.py", ["--lr", "0.1", "--seed", "1"], None)
    assert key is not None and key.startswith("script:")
    assert estimate_key("command", None, (), "sleep 1") != estimate_key("command", None, (), "x")


def _ran(store: Store, specs: list[JobSpec], seconds: list[float], at: float = 1000.0) -> None:
    """Store jobs of ``specs`` that ran ``seconds`` each and succeeded (real SQLite, the
    dispatcher's own writes)."""
    _, jobs = store.add_jobs_at(specs, owner_uid=os.getuid(), executor="direct")
    starts = [AttemptStart(j, (0,), f"t{j.seq}", "log") for j in jobs if j is not None]
    _, running, _ = store.record_attempts([], starts, at)
    ends = [
        AttemptEnd(job, JobStatus.SUCCEEDED, 0, None, at=at + took)
        for job, took in zip(running, seconds, strict=True)
        if job is not None
    ]
    store.record_attempts(ends, [], at + max(seconds))


def script_spec(args: tuple[str, ...], sweep: str | None = None, **more: Any) -> JobSpec:
    key = estimate_key("script", "/t.py", args, None)
    return JobSpec(
        kind="script", script="/t.py", args=args, required_gpus=1.0, sweep=sweep,
        estimate_key=key, **more,
    )  # fmt: skip


def command_spec(command: str, **more: Any) -> JobSpec:
    return JobSpec(
        kind="command", command=command, required_gpus=1.0,
        estimate_key=estimate_key("command", None, (), command), **more,
    )  # fmt: skip


def test_sources_in_their_order(store: Store) -> None:
    _ran(store, [script_spec(("--lr", str(i))) for i in range(3)], [100.0, 110.0, 5000.0])
    _ran(store, [script_spec(("--lr", str(i)), sweep="sw1") for i in range(2)], [30.0, 20.0])
    _ran(store, [command_spec("sleep 7")] * 3, [7.0, 7.5, 6.5])
    est = Estimator(store)
    assert est.of_spec(script_spec(("--lr", "9"), sweep="sw1")) == (30.0, "sweep")
    # (its five runs: 20, 30, 100, 110 and 5000 s: the middle one)
    assert est.of_spec(script_spec(("--lr", "9"), sweep="sw2")) == (100.0, "script")
    assert est.of_spec(script_spec(("--lr", "9"))) == (100.0, "script")
    assert est.of_spec(command_spec("sleep 7")) == (7.0, "command")
    assert est.of_spec(command_spec("sleep 8")) == (None, None)
    assert est.of_spec(command_spec("sleep 7", expected_s=3.0)) == (3.0, "hint")
    assert est.of_spec(command_spec("sleep 7", expected_s=3.0, time_limit=9.0)) == (
        9.0,
        "time limit",
    )


def test_only_the_latest_runs_count(store: Store) -> None:
    spec = command_spec("train")
    _ran(store, [spec] * 25, [1.0] * 25, at=1000.0)  # (old runs)
    _ran(store, [spec] * RECENT, [50.0] * RECENT, at=5000.0)
    assert Estimator(store).of_spec(spec) == (50.0, "command")


def test_failed_runs_teach_nothing(store: Store) -> None:
    spec = command_spec("flaky")
    _, jobs = store.add_jobs_at([spec], owner_uid=os.getuid(), executor="direct")
    (job,) = jobs
    assert job is not None
    _, (run,), _ = store.record_attempts([], [AttemptStart(job, (0,), "tok", "log")], 10.0)
    assert run is not None
    store.record_attempts([AttemptEnd(run, JobStatus.FAILED, 1, "exit code 1", at=11.0)], [], 11.0)
    assert Estimator(store).of_spec(spec) == (None, None)


class Counting:
    """A store that counts the durations it is asked for."""

    def __init__(self, store: Store) -> None:
        self.store, self.asked, self.bulk = store, 0, 0

    def recent_durations(self, kind: str, key: str, limit: int = RECENT) -> list[float]:
        self.asked += 1
        return self.store.recent_durations(kind, key, limit)

    def durations_of(self, kind: str, keys: list[str]) -> dict[str, list[float]]:
        self.bulk += 1
        return self.store.durations_of(kind, keys)


def test_a_sweeps_queue_entries_cost_one_lookup_per_key(store: Store) -> None:
    _ran(store, [script_spec(("--lr", "1"))], [42.0])
    specs = [script_spec(("--lr", str(i)), sweep="sw9") for i in range(2000)]
    rev, jobs = store.add_jobs_at(specs, owner_uid=os.getuid(), executor="direct")
    counting = Counting(store)
    est = Estimator(counting)  # type: ignore[arg-type]
    batch = Batch.of(rev, [j for j in jobs if j is not None], est)
    assert {(e.estimate_s, e.estimate_source) for e in batch.entries} == {(42.0, "script")}
    assert counting.asked == 2  # (the sweep: no run yet; the script: one)
    feed = store.queue_changes(0)
    entries = [Queued.read(row, est) for row in feed.changes if row.status == "queued"]
    assert len(entries) == 2000 and entries[0].estimate_source == "script"
    assert counting.asked == 2  # (known already)
    # A sibling succeeds: the dispatcher forgets the sweep's value, and learns it again.
    first = next(j for j in jobs if j is not None)
    _ran(store, [script_spec(("--lr", "x"), sweep="sw9")], [7.0])
    est.forget([first])
    assert Queued.of(first, rev, est)[-2:] == (7.0, "sweep")
    assert counting.asked == 3


def test_learned_estimates_in_jobs_after_real_runs(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    s = make_sched(start=True)
    script = tmp_path / "work.sh"
    script.write_text("sleep 0.2\n")
    done = [s.add_job(str(script), args=["--n", str(i)], required_gpus=0.5) for i in range(3)]
    done.append(s.add_command("sleep 0.3", required_gpus=0.5))
    s.wait(done, timeout=TIMEOUT)
    assert set(s.jobs()["status"]) == {"succeeded"}
    for g in (0, 1):
        s.pause_gpu(g)
    like_script = s.add_job(str(script), args=["--n", "99"])
    like_command = s.add_command("sleep 0.3")
    new = s.add_command("sleep 0.4")
    table = s.jobs().set_index("id")
    assert table.loc[like_script, "estimate_source"] == "script"
    assert 0.2 <= table.loc[like_script, "estimate"] < 5.0
    assert table.loc[like_command, "estimate_source"] == "command"
    assert 0.3 <= table.loc[like_command, "estimate"] < 5.0
    assert table.loc[new, ["estimate", "estimate_source"]].isna().all()
    # The dispatcher's queue entries carry them too.
    d = s._dispatcher
    assert d is not None
    entry = wait_for(lambda: d._cache.entry(int(like_script)), what="the dispatcher to queue it")
    assert entry.estimate_source == "script"


def test_a_table_of_many_distinct_commands_reads_their_runs_at_once(store: Store) -> None:
    _ran(store, [command_spec(f"work {i}") for i in range(30)], [float(i) for i in range(30)])
    _ran(store, [command_spec("work 3")], [5.0], at=2000.0)
    counting = Counting(store)
    est = Estimator(counting)  # type: ignore[arg-type]
    specs = [command_spec(f"work {i}") for i in range(40)]
    est.prefetch((s.time_limit, s.expected_s, s.sweep, s.estimate_key) for s in specs)
    assert counting.asked == 0 and counting.bulk == 1
    assert [est.of_spec(s)[0] for s in specs[:5]] == [0.0, 1.0, 2.0, 5.0, 4.0]
    assert est.of_spec(specs[35]) == (None, None)
    assert counting.asked == 0  # (all known from the one read)
