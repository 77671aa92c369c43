"""Job tables for people (nbsched.jupyter.tables): what ``%gpusched jobs``, ``wait``,
``status``, ``nbsched jobs`` and the dashboard show, on a real scheduler's jobs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbsched import GPUJobScheduler
from nbsched.cli import main
from nbsched.jupyter.tables import JobTable, compact, duration, fit, short_command

TIME = re.compile(r"\d\d:\d\d:\d\d")


@pytest.fixture
def ended_jobs(running: GPUJobScheduler, tmp_path: Path) -> Iterator[GPUJobScheduler]:
    """A started scheduler with a command, a script with arguments under the working
    folder, a failed named job, and a two-job sweep, all ended."""
    script = tmp_path / "train.py"
    script.write_text("print('ok')\n")
    running.add_command("echo one\necho two", required_gpus=0.5)
    running.add_job(str(script), args=["--epochs", "3"], required_gpus=1)
    running.add_command("exit 3", required_gpus=0.5, name="fails")
    running.add_sweep(str(script), args="--lr {0.1,0.01}", required_gpus=0.5)
    running.wait(timeout=60, progress=False)
    yield running


def test_compact_view_is_short_and_local(
    ended_jobs: GPUJobScheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = ended_jobs.jobs()
    table = compact(jobs)
    # Times to the second, no date for today, no offset; a duration per started job.
    assert all(TIME.fullmatch(x) for x in table["started"])
    assert all(re.fullmatch(r"\d+\.\ds|\d+s|\d+m\d\ds", x) for x in table["took"])
    # Only the columns that hold something: no log path, no "held", no priority 0.
    assert {"log", "held", "priority", "submitted", "ended"}.isdisjoint(table.columns)
    assert list(table.columns[:2]) == ["id", "status"] and table.columns[-1] == "command"
    commands = list(table["command"])
    assert commands[0] == "echo one echo two"  # one line
    assert commands[1] == "train.py --epochs 3"  # against the working folder
    assert commands[3:] == ["train.py --lr 0.1", "train.py --lr 0.01"]  # the sweep's values
    assert list(table["exit"]) == ["0", "0", "3", "0", "0"]
    assert "reason" not in table.columns  # ("exit code 3" is what the exit column says)
    assert list(table["sweep"])[3:] == [jobs["sweep"][3]] * 2


def test_a_cell_file_reads_cell_and_long_paths_their_name() -> None:
    cell = "/home/u/.nbsched/cells/cell_f72fd8215c221521.py --lr 0.001 --width 16"
    assert short_command(cell, cwd="/elsewhere") == "<cell> --lr 0.001 --width 16"
    assert short_command("python /data/a/b/run.py -x", cwd="/elsewhere") == "python …/run.py -x"
    long = "python train.py " + " ".join(f"--opt{i} {i}" for i in range(30)) + " --seed 7"
    short = short_command(long, cwd="/", width=40)
    assert len(short) == 40 and short.startswith("python train.py") and short.endswith("seed 7")


@pytest.mark.parametrize(
    "seconds, text",
    [(0.43, "0.4s"), (42, "42s"), (65, "1m05s"), (7380, "2h03m"), (100000, "1d03h"), (None, "")],
)
def test_durations_read_as_people_write_them(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_a_column_added_later_shows_when_it_holds_something(ended_jobs: GPUJobScheduler) -> None:
    jobs = ended_jobs.jobs()
    jobs["mem"] = [None, "18G", None, None, None]
    jobs["deps"] = [None] * len(jobs)
    table = compact(jobs)
    assert list(table["mem"]) == ["", "18G", "", "", ""]
    assert "deps" not in table.columns


def test_the_magic_table_is_the_whole_dataframe_shown_short(
    ip: InteractiveShell, tmp_path: Path
) -> None:
    gs = lambda line: ip.run_line_magic("gpusched", line)  # noqa: E731
    s = gs(f"start --simulate 2 --state-dir {tmp_path / 'state'}")
    jid = gs("run --gpus 0.5 -- echo hi")
    done = gs(f"wait {jid} --timeout 60 --no-progress")
    jobs = gs("jobs")
    for table in (done, jobs):
        assert isinstance(table, JobTable) and isinstance(table, pd.DataFrame)
        full = s.jobs()
        assert list(table.columns) == list(full.columns)  # every column, every type
        assert dict(table.dtypes) == dict(full.dtypes)
        text, page = repr(table), table._repr_html_()
        assert "+00:00" not in text and "logs/" not in text and ".full" in text
        assert "+00:00" not in page and "logs/" not in page and "succeeded" in page
        assert type(table.full) is pd.DataFrame and "log" in table.full._repr_html_()
        assert type(table[["id", "status"]]) is pd.DataFrame  # (a slice is a plain one)
    every = gs("jobs --all")
    assert type(every) is pd.DataFrame and "log" in every.columns


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(args) == 0
    return str(capsys.readouterr().out)


def test_nbsched_jobs_fits_100_columns(
    ended_jobs: GPUJobScheduler,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = str(ended_jobs.config.state_dir)
    monkeypatch.setenv("COLUMNS", "100")
    long = "python train.py " + " ".join(f"--option{i} value{i}" for i in range(20))
    ended_jobs.add_command(long, required_gpus=0.5, name="long-one")
    ended_jobs.wait(timeout=60, progress=False)
    out = _cli(["jobs", "--state-dir", state, "--provider", "simulated"], capsys)
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["id", "status"] and len(lines) == 7
    assert max(map(len, lines)) <= 100, out
    assert "+00:00" not in out and "logs/" not in out
    every = _cli(["jobs", "--all", "--state-dir", state, "--provider", "simulated"], capsys)
    assert "log" in every.splitlines()[0] and "logs/" in every


def test_fit_gives_the_command_what_is_left() -> None:
    jobs = pd.DataFrame({"id": ["1"], "status": ["queued"], "command": ["x " * 200]})
    lines = fit(jobs, 60).splitlines()
    assert max(map(len, lines)) <= 60 and "…" in lines[1]


def test_a_long_table_shows_its_first_and_last_rows(ended_jobs: GPUJobScheduler) -> None:
    from nbsched.jupyter.tables import SHOWN_ROWS

    jobs = ended_jobs.jobs()
    many = JobTable(pd.concat([jobs] * 400, ignore_index=True))  # 2,000 rows
    page, text = many._repr_html_(), repr(many)
    assert page.count("<tr>") == 1 + SHOWN_ROWS
    assert len(text.splitlines()) == 1 + SHOWN_ROWS + 1
    assert "2,000 job(s) (1,940 rows in the middle not shown)" in page
    assert "1,940 rows in the middle not shown" in text
