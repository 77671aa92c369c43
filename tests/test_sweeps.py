"""Sweeps through the public API: expansion -> jobs, dedup on resubmission, the
results table, the size limit, and wait()'s progress bar."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import InvalidTypeError, InvalidValueError, MissingFileError

TRAIN = """\
import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
lr, seed = float(args.get("--lr", 0)), int(args.get("--seed", 0))
if seed < 0:
    sys.exit("negative seed")
with open(os.environ["NBSCHED_RESULT_FILE"], "w") as fh:
    json.dump({"loss": lr * seed, "status": "mine", "gpu": os.environ["CUDA_VISIBLE_DEVICES"]}, fh)
"""


def make(tmp: Path, **overrides: object) -> GPUJobScheduler:
    fields: dict[str, object] = {
        "state_dir": tmp / "state",
        "gpu_provider": "simulated",
        "num_gpus": 2,
        "gpu_monitor_interval_s": 0.0,
    }
    fields.update(overrides)
    return GPUJobScheduler(config=SchedulerConfig(**fields))  # type: ignore[arg-type]


@pytest.fixture
def scheduler_config() -> dict[str, object]:
    """sched (not started: jobs stay queued) and running (tests/conftest.py): as make()."""
    return {"num_gpus": 2, "gpu_monitor_interval_s": 0.0}


@pytest.fixture
def train(tmp_path: Path) -> str:
    path = tmp_path / "train.py"
    path.write_text(TRAIN)
    return str(path)


def params_of(s: GPUJobScheduler, ids: list[str]) -> list[dict[str, str]]:
    return [dict(s.store.get(i).spec.params or {}) for i in ids]


def test_design_example_one_job_per_combination(sched: GPUJobScheduler, train: str) -> None:
    ids = sched.add_sweep(train, args="--lr {0.1,0.01} --seed {1..3}", required_gpus=1)
    assert len(ids) == 6
    sweep_id = ids.sweep_id  # type: ignore[attr-defined]
    assert sweep_id.startswith("sw")
    jobs = sched.jobs()
    assert list(jobs["sweep"]) == [sweep_id] * 6
    assert list(jobs["required_gpus"]) == [1.0] * 6
    assert params_of(sched, ids) == [
        {"lr": lr, "seed": seed} for lr in ("0.1", "0.01") for seed in ("1", "2", "3")
    ]
    argv = [sched.store.get(i).spec.args for i in ids]
    assert argv[0] == ("--lr", "0.1", "--seed", "1")
    assert argv[-1] == ("--lr", "0.01", "--seed", "3")
    assert len({sched.store.get(i).spec.hash for i in ids}) == 6


def test_resubmitting_queues_only_what_is_missing(running: GPUJobScheduler, train: str) -> None:
    ids = running.add_sweep(train, args="--lr {1,2} --seed {-1,1}", required_gpus=0.5)
    running.wait(ids, timeout=60)
    table = running.sweep(ids.sweep_id)  # type: ignore[attr-defined]
    assert sorted(table["status"]) == ["failed", "failed", "succeeded", "succeeded"]
    again = running.add_sweep(train, args="--lr {1,2} --seed {-1,1}", required_gpus=0.5)
    assert again.sweep_id == ids.sweep_id
    failed = set(table.loc[table["status"] == "failed", "id"])
    succeeded = set(table.loc[table["status"] == "succeeded", "id"])
    assert len(again.queued) == 2  # the failed ones only are queued again, with new ids
    assert {running.store.get(i).spec.hash for i in again.queued} == {
        running.store.get(i).spec.hash for i in failed
    }
    assert not set(again.queued) & set(ids)
    # every combination's id, in the sweep's order: the succeeded ones' and the new ones
    assert len(again) == 4 and set(again) == succeeded | set(again.queued)
    assert [running.store.get(i).spec.args for i in again] == [
        running.store.get(i).spec.args for i in ids
    ]
    assert again.already == {"succeeded": 2}
    assert again.describe() == (
        f"sweep {ids.sweep_id}: 4 jobs, 2 queued now, 2 already there (2 succeeded)"
    )
    running.wait(again, timeout=60)
    table = running.sweep(ids.sweep_id)
    assert len(table) == 4  # one row per combination, the newest job of each
    assert list(table["id"]) == list(again)
    assert list(table["status"]).count("failed") == 2  # they fail again: seed -1 always does


def test_overlapping_sweep_reuses_queued_jobs(sched: GPUJobScheduler, train: str) -> None:
    first = sched.add_sweep(train, args="--lr 1 --seed {1..3}")
    wider = sched.add_sweep(train, args="--lr 1 --seed {1..5}")
    assert wider.sweep_id != first.sweep_id  # type: ignore[attr-defined]
    assert params_of(sched, wider.queued) == [{"seed": "4"}, {"seed": "5"}]
    assert wider == [*first, *wider.queued]  # the first sweep's jobs stand for seeds 1-3
    assert wider.already == {"queued": 3}
    table = sched.sweep(wider.sweep_id)  # type: ignore[attr-defined]
    assert list(table["seed"]) == [1, 2, 3, 4, 5]
    assert list(table["id"]) == [*first, *wider.queued]
    assert list(table["status"]) == ["queued"] * 5


def test_params_dict_and_template_combine(sched: GPUJobScheduler, train: str) -> None:
    ids = sched.add_sweep(train, args="--lr {0.1,0.2}", params={"seed": [1, 2], "bs": [32]})
    assert [sched.store.get(i).spec.args for i in ids] == [
        ("--lr", lr, "--seed", seed, "--bs", "32") for lr in ("0.1", "0.2") for seed in "12"
    ]
    assert params_of(sched, ids)[0] == {"lr": "0.1", "seed": "1", "bs": "32"}
    with pytest.raises(InvalidValueError, match="lr"):
        sched.add_sweep(train, args="--lr {1,2}", params={"lr": [3]})
    eq = sched.add_sweep(train, params={"x": [1, 2]}, param_style="--{name}={value}")
    assert [sched.store.get(i).spec.args for i in eq] == [("--x=1",), ("--x=2",)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"args": "--lr {1,2"}, InvalidValueError, "without '}'"),
        ({"args": "--lr {1..x}"}, InvalidValueError, "bad range"),
        ({"args": 12}, InvalidTypeError, "args=12"),
        ({"args": "--x {1,2}", "required_gpus": 1.5}, InvalidValueError, "whole number"),
        ({"args": "--x {1,2}", "allowed_gpus": "7"}, InvalidValueError, "7"),
        ({"params": {"lr": []}}, InvalidValueError, "at least one"),
        ({"params": {"lr": "0.1"}}, InvalidTypeError, "list of values"),
        ({"params": [1, 2]}, InvalidTypeError, "dict"),
        ({"args": "--x {1,2}", "limit": 0}, InvalidValueError, "limit=0"),
        ({"args": "--x {1..3}", "limit": 2}, InvalidValueError, "3 jobs exceeds the limit of 2"),
    ],
)
def test_mistakes_store_nothing(
    sched: GPUJobScheduler, train: str, kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        sched.add_sweep(train, **kwargs)  # type: ignore[arg-type]
    assert sched.jobs().empty
    assert sched.sweeps().empty


def test_missing_script_stores_nothing(sched: GPUJobScheduler, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        sched.add_sweep(tmp_path / "nope.py", args="--x {1,2}")
    assert sched.jobs().empty


def test_size_limit_from_config_and_limit_override(tmp_path: Path, train: str) -> None:
    s = make(tmp_path, max_sweep_jobs=10)
    try:
        with pytest.raises(InvalidValueError, match="12 jobs exceeds the limit of 10"):
            s.add_sweep(train, args="--a {1..3} --b {1..4}")
        assert s.jobs().empty
        assert len(s.add_sweep(train, args="--a {1..3} --b {1..4}", limit=12)) == 12
    finally:
        s.close()


def test_results_table(running: GPUJobScheduler, train: str) -> None:
    ids = running.add_sweep(train, args="--lr {0.5,2} --seed {-1,1,3}", required_gpus=0.5)
    running.wait(ids, timeout=60)
    df = running.sweep(ids.sweep_id)  # type: ignore[attr-defined]
    assert list(df.columns) == [
        "lr",
        "seed",
        "status",
        "duration",
        "exit_code",
        "id",
        "loss",
        "result_status",
        "gpu",
    ]
    assert df["lr"].dtype == float and df["seed"].dtype == "int64"
    assert list(df["id"]) == list(ids)
    ok = df[df["seed"] > 0]
    assert list(ok["status"]) == ["succeeded"] * 4
    assert list(ok["loss"]) == [0.5, 1.5, 2.0, 6.0]
    assert set(ok["result_status"]) == {"mine"}
    assert set(ok["gpu"]) <= {"0", "1"}
    bad = df[df["seed"] < 0]
    assert list(bad["status"]) == ["failed", "failed"]
    assert list(bad["exit_code"]) == [1, 1]
    assert bad["loss"].isna().all()
    assert (df["duration"] > 0).all()
    # a user plots it in one line
    pivot = ok.pivot(index="seed", columns="lr", values="loss")
    assert pivot.shape == (2, 2)
    # the latest sweep is the default, and the list of sweeps counts its jobs
    pd.testing.assert_frame_equal(running.sweep(), df)
    listing = running.sweeps()
    row = listing.set_index("sweep").loc[ids.sweep_id]  # type: ignore[attr-defined]
    assert (row["combinations"], row["succeeded"], row["failed"]) == (6, 4, 2)


def test_the_list_of_sweeps_counts_combinations_another_sweep_ran(
    running: GPUJobScheduler, train: str
) -> None:
    """A sweep whose combinations another sweep had already run shows the statuses of
    the jobs that hold them: it showed 0 in every status column."""
    first = running.add_sweep(train, args="--lr 0.5 --seed {1,3}", required_gpus=0.5)
    running.wait(first, timeout=60)
    same = running.add_sweep(train, args="--lr 0.5 --seed {3,1}", required_gpus=0.5)
    more = running.add_sweep(train, args="--lr 0.5 --seed {1..3}", required_gpus=0.5)
    assert len(same.queued) == 0 and len(more.queued) == 1  # the first did the others
    assert same == [first[1], first[0]] and more == [first[0], more.queued[0], first[1]]
    running.wait(more, timeout=60)
    rows = running.sweeps().set_index("sweep")
    for sweep, n in [(first, 2), (same, 2), (more, 3)]:
        row = rows.loc[sweep.sweep_id]  # type: ignore[attr-defined]
        assert (row["combinations"], row["succeeded"], row["queued"]) == (n, n, 0)


def test_the_list_of_sweeps_shows_their_words_as_given(sched: GPUJobScheduler, train: str) -> None:
    """Two sweeps that differ only in how their words are split look different."""
    one = sched.add_sweep(train, args=["q {1..2}"])  # one word (literal braces)
    two = sched.add_sweep(train, args=["q", "{1..2}"])  # a word, then a group
    shown = sched.sweeps().set_index("sweep")["args"]
    assert shown[one.sweep_id] == "'q {1..2}'"  # type: ignore[attr-defined]
    assert shown[two.sweep_id] == "q '{1..2}'"  # type: ignore[attr-defined]


def test_unknown_sweep(sched: GPUJobScheduler) -> None:
    with pytest.raises(InvalidValueError, match="no sweep was submitted"):
        sched.sweep()
    with pytest.raises(InvalidValueError, match="sw9"):
        sched.sweep("sw9")


def test_counts_and_jobs_slices(sched: GPUJobScheduler, train: str) -> None:
    ids = sched.add_sweep(train, args="--seed {1..5}")
    sched.add_job(train)
    assert sched.counts(sweep=ids.sweep_id)["queued"] == 5  # type: ignore[attr-defined]
    assert sched.counts()["queued"] == 6
    assert list(sched.jobs(first=2)["id"]) == ids[:2]
    assert list(sched.jobs("queued", last=2)["id"]) == [ids[-1], "6"]
    with pytest.raises(InvalidValueError):
        sched.jobs(first=1, last=1)


def test_wait_progress_bar_in_a_terminal(
    running: GPUJobScheduler, train: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = running.add_sweep(train, args="--seed {1..3}", required_gpus=0.5)
    running.wait(ids, timeout=60, progress=True)
    err = capsys.readouterr().err
    assert "jobs ended" in err and "3/3" in err
    running.wait(ids, timeout=60)  # not a terminal, not a kernel: no bar
    assert capsys.readouterr().err == ""


names = st.text(alphabet="abcdefgh", min_size=1, max_size=4)
values = st.lists(
    st.one_of(st.integers(-50, 50), st.text(alphabet="xyz019.", min_size=1, max_size=3)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(names, values, min_size=0, max_size=3))
def test_params_expansion_becomes_jobs(params: dict[str, list[object]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "t.py")
        script.write_text("")
        s = make(Path(tmp))
        try:
            ids = s.add_sweep(script, params=params)
            jobs = [s.store.get(i) for i in ids]
        finally:
            s.close()
    combos = list(itertools.product(*([str(v) for v in vs] for vs in params.values())))
    distinct = len(set(combos))
    assert len(jobs) == distinct == len(set(ids))  # same argv twice: one job
    expected = [dict(zip(params, c, strict=True)) for c in dict.fromkeys(combos)]
    assert [dict(j.spec.params or {}) for j in jobs] == expected
    for job, combo in zip(jobs, dict.fromkeys(combos), strict=True):
        assert job.spec.args == tuple(
            x for name, v in zip(params, combo, strict=True) for x in (f"--{name}", v)
        )
    assert len(combos) == math.prod(len(v) for v in params.values())


def test_sweep_table_is_a_dataframe_even_when_nothing_ran(
    sched: GPUJobScheduler, train: str
) -> None:
    ids = sched.add_sweep(train, args="--lr {1,2}")
    df = sched.sweep(ids.sweep_id)  # type: ignore[attr-defined]
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["lr", "status", "duration", "exit_code", "id"]
    assert df["duration"].isna().all()
    assert json.loads(df.to_json())["status"] == {"0": "queued", "1": "queued"}


def test_a_sweep_submitted_again_returns_every_combinations_job(
    sched: GPUJobScheduler, train: str, tmp_path: Path
) -> None:
    """A notebook run again after its kernel died submits its sweep again from a new
    scheduler: it gets the ids of the jobs already there (it got ``[]``, and its
    ``wait(ids)`` returned at once), ``.queued`` says none is new."""
    first = sched.add_sweep(train, args="--lr {1,2} --seed {1,2}")
    assert first.queued == first and first.already == {}
    assert first.describe() == f"sweep {first.sweep_id}: queued 4 job(s): {', '.join(first)}"
    sched.close()
    kernel = make(tmp_path)  # (sched's state directory)
    try:
        again = kernel.add_sweep(train, args="--lr {1,2} --seed {1,2}")
        assert again == first and again.sweep_id == first.sweep_id
        assert again.queued == [] and again.already == {"queued": 4}
        assert again.describe() == (
            f"sweep {first.sweep_id}: nothing new to queue: its 4 job(s) are already there "
            "(4 queued)"
        )
        assert len(kernel.jobs()) == 4
        kernel.cancel(first[1])  # a cancelled combination is queued again, with a new id
        third = kernel.add_sweep(train, args="--lr {1,2} --seed {1,2}")
        assert len(third.queued) == 1 and third.queued[0] not in first
        assert third == [first[0], third.queued[0], *first[2:]]
        assert "4 jobs, 1 queued now, 3 already there (3 queued)" in third.describe()
    finally:
        kernel.close()


def test_wait_for_a_sweep_by_its_id(running: GPUJobScheduler, train: str) -> None:
    ids = running.add_sweep(train, args="--lr {1,2} --seed {-1,1}", required_gpus=0.5)
    rows = running.wait(sweep=ids.sweep_id, timeout=60, progress=False)
    assert sorted(rows["id"]) == sorted(ids)
    assert sorted(rows["status"]) == ["failed", "failed", "succeeded", "succeeded"]
    again = running.add_sweep(train, args="--lr {1,2} --seed {-1,1}", required_gpus=0.5)
    rows = running.wait(sweep=again, timeout=60, progress=False)  # (what add_sweep returned)
    assert sorted(rows["id"]) == sorted(again) and len(again.queued) == 2
    assert set(running.sweep(ids.sweep_id)["status"]) == {"failed", "succeeded"}
    with pytest.raises(InvalidValueError, match="not both"):
        running.wait(ids, sweep=ids.sweep_id)
    with pytest.raises(InvalidValueError, match="no such sweep"):
        running.wait(sweep="sw9")
    with pytest.raises(InvalidTypeError, match="sweep id"):
        running.wait(sweep=3)  # type: ignore[arg-type]
