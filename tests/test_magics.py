"""The %gpusched magics on a real IPython shell, as IPython's own tests drive magics."""

from __future__ import annotations

import json
import logging
import os
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from nbsched import GPUJobScheduler
from nbsched.checks import check_requirement
from nbsched.jupyter.extension import magics_of
from nbsched.jupyter.magics import VERBS, GpuschedMagics
from nbsched.jupyter.parsing import SHELL_BLANKS, expand_vars, split_dashdash
from nbsched.jupyter.status import StatusReport
from nbsched.verbs.values import gpus_type

ARGV_SCRIPT = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


@pytest.fixture
def started(ip: InteractiveShell, tmp_path: Path) -> GPUJobScheduler:
    s = gs(ip, f"start --simulate 2 --state-dir {tmp_path / 'state'}")
    assert isinstance(s, GPUJobScheduler) and s.running
    return s


def gs(ip: InteractiveShell, line: str) -> Any:
    return ip.run_line_magic("gpusched", line)


def cell(ip: InteractiveShell, line: str, body: str) -> Any:
    return ip.run_cell_magic("gpusched", line, body)


# -- the extension and its help ---------------------------------------------------------------


def test_help_lists_every_verb(ip: InteractiveShell) -> None:
    doc = ip.find_line_magic("gpusched").__doc__
    for name in VERBS:
        assert f"%gpusched {name}" in doc
    assert "--simulate N" in doc and "--gpus X" in doc
    assert ip.find_cell_magic("gpusched") is not None


def test_verb_help_is_printed(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    assert gs(ip, "add -h") is None
    out = capsys.readouterr().out
    assert "%gpusched add" in out and "--allowed" in out


@pytest.mark.parametrize("word", ["help", "-h", "--help"])
def test_help_words_print_the_overview(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str], word: str
) -> None:
    capsys.readouterr()
    assert gs(ip, word) is None
    out = capsys.readouterr().out
    assert out.strip() == ip.find_line_magic("gpusched").__doc__.strip()  # as %gpusched? shows
    assert gs(ip, f"{word} add") is None  # one verb's help, as %gpusched add -h
    verb_help = capsys.readouterr().out
    assert gs(ip, "add -h") is None
    assert verb_help == capsys.readouterr().out and "--allowed" in verb_help


def test_only_a_real_help_word_asks_for_help(
    ip: InteractiveShell,
    started: GPUJobScheduler,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = tmp_path / "t.py"
    script.write_text("")
    capsys.readouterr()
    jid = gs(ip, f"add {script} --name 'a -h b' -- --x -h")  # inside a value; after --
    assert isinstance(jid, str) and started.job(jid)["name"] == "a -h b"
    assert started.store.get(jid).spec.args == ("--x", "-h")
    assert capsys.readouterr().out == ""
    assert gs(ip, f"add {script} --name x -h") is None  # a word of its own: help
    assert "%gpusched add" in capsys.readouterr().out
    assert len(started.jobs()) == 1


def test_unload_stops_the_engine_and_drops_the_magics(tmp_path: Path) -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbsched")
    s = gs(shell, f"start --simulate 1 --state-dir {tmp_path}")
    board = gs(shell, "dashboard --interval 0.2")
    assert s.running and board.refreshing
    shell.run_line_magic("unload_ext", "nbsched")
    assert not s.running and not board.refreshing
    assert shell.find_line_magic("gpusched") is None
    assert shell.find_cell_magic("gpusched") is None
    shell.run_line_magic("load_ext", "nbsched")  # and it loads again
    assert shell.find_line_magic("gpusched") is not None
    shell.run_line_magic("unload_ext", "nbsched")


# -- verbs return the API's values -------------------------------------------------------------


def test_start_is_idempotent_for_the_same_settings(
    ip: InteractiveShell, started: GPUJobScheduler, tmp_path: Path
) -> None:
    assert gs(ip, f"start --simulate 2 --state-dir {tmp_path / 'state'}") is started
    with pytest.raises(UsageError, match="already running"):
        gs(ip, f"start --simulate 3 --state-dir {tmp_path / 'state'}")
    assert started.config.num_gpus == 2 and started.config.gpu_provider == "simulated"


@pytest.mark.usefixtures("no_nvidia_gpu")
def test_start_says_when_auto_took_simulated_gpus(
    ip: InteractiveShell,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="nbsched"):
        s = gs(ip, f"start --num-gpus 2 --state-dir {tmp_path / 'a'}")
    assert s.provider.name == "simulated"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbsched: no NVIDIA GPU found (nvml: ")
    assert lines[0].endswith("using 2 simulated GPUs")
    assert [r for r in caplog.records if r.name.startswith("nbsched.gpus")] == []  # said once
    gs(ip, "stop")
    gs(ip, f"start --simulate 2 --state-dir {tmp_path / 'b'}")  # chosen: nothing to say
    assert capsys.readouterr().out == ""


def test_start_passes_every_setting(ip: InteractiveShell, tmp_path: Path) -> None:
    llm = tmp_path / "llm.json"
    llm.write_text('{"models": {"small": 0.5}}')
    jobs = tmp_path / "jobs.txt"  # (need not exist yet)
    s = gs(
        ip,
        f"start --simulate 2 --state-dir {tmp_path / 'st'} --executor screen "
        f"--llm-config {llm} --jobs-file {jobs}",
    )
    try:
        cfg = s.config
        assert (cfg.executor, cfg.llm_config_file, cfg.jobs_file) == ("screen", str(llm), str(jobs))
    finally:
        gs(ip, "stop --kill")


@pytest.mark.parametrize("executor", ["", "--executor direct", "--executor screen"])
def test_start_refuses_a_ray_address_without_the_ray_executor(
    ip: InteractiveShell, tmp_path: Path, executor: str
) -> None:
    # (--executor ray --ray-address ADDR would join a real cluster: not tried here)
    with pytest.raises(UsageError) as info:
        gs(ip, f"start --simulate 1 --state-dir {tmp_path} {executor} --ray-address auto")
    text = str(info.value)
    assert "--ray-address auto applies to --executor ray" in text and "\n" not in text
    assert magics_of(ip).scheduler is None  # type: ignore[union-attr]


def test_run_add_wait_logs(ip: InteractiveShell, started: GPUJobScheduler, tmp_path: Path) -> None:
    script = tmp_path / "show args.py"
    script.write_text(ARGV_SCRIPT)
    tricky = ["a b", "it's", "$(echo no)", "x;y", "ünï", '"q"', "--flag"]
    from shlex import quote

    jid = gs(
        ip, f"add {quote(str(script))} --gpus 0.5 --priority 3 -- {' '.join(map(quote, tricky))}"
    )
    cmd = gs(ip, "run --gpus 0.25 --name hello -- printf '%s|' \"$HOME\" 'a;b' $(echo sub)")
    assert isinstance(jid, str) and isinstance(cmd, str)
    done = gs(ip, "wait --no-progress --timeout 60")
    assert isinstance(done, pd.DataFrame) and set(done["status"]) == {"succeeded"}
    assert json.loads(gs(ip, f"logs {jid}")) == tricky
    assert gs(ip, f"logs {cmd} -n 1") == f"{os.environ['HOME']}|a;b|sub|"
    row = started.job(jid)
    assert (row["priority"], row["required_gpus"]) == (3, 0.5)
    assert started.job(cmd)["name"] == "hello"
    jobs = gs(ip, "jobs --status succeeded")
    assert list(jobs["id"]) == [jid, cmd]
    assert list(gs(ip, "jobs --first 1")["id"]) == [jid]
    assert list(gs(ip, "jobs --status succeeded --last 1")["id"]) == [cmd]
    assert list(gs(ip, "gpus")["gpu"]) == [0, 1]


def test_dollar_names_expand_before_the_double_dash(
    ip: InteractiveShell, started: GPUJobScheduler
) -> None:
    first = gs(ip, "run -- echo one")
    second = gs(ip, "run -- echo two")
    ip.user_ns["ids"] = [first, second]
    ip.user_ns["jid"] = first
    rows = gs(ip, "wait $ids --timeout 60 --no-progress")
    assert list(rows["id"]) == [first, second]
    assert gs(ip, "logs $jid") == "one\n"
    # after --, $ belongs to the shell
    third = gs(ip, "run -- echo $jid")
    gs(ip, f"wait {third} --timeout 60 --no-progress")
    assert gs(ip, f"logs {third}") == "\n"


def test_brace_names_expand_as_in_ipython(ip: InteractiveShell, started: GPUJobScheduler) -> None:
    """``{name}`` is how IPython users give a variable: ``logs {jid}`` said "no job
    '{jid}'".  (A sweep's braces are its grammar: see the test below.)"""
    first = gs(ip, "run -- echo one")
    second = gs(ip, "run -- echo two")
    ip.user_ns["ids"] = [first, second]
    ip.user_ns["jid"] = first
    rows = gs(ip, "wait {ids} --timeout 60 --no-progress")
    assert list(rows["id"]) == [first, second]
    assert gs(ip, "logs {jid}") == "one\n"
    ip.user_ns["n"] = 1
    assert gs(ip, "logs -n {n} {jid}") == "one\n"
    with pytest.raises(UsageError, match="no job '{unknown}'"):
        gs(ip, "logs {unknown}")  # an unknown name stays as written


def test_expand_vars_leaves_a_sweeps_braces_alone() -> None:
    ns = {"a": 1, "ids": ["x", "y"], "none": []}
    assert expand_vars("logs {a} $a {{a}} {a,b}", ns).text == "logs 1 1 {{a}} {a,b}"
    assert expand_vars("wait {ids} {none}", ns).empty == ("none",)
    swept = expand_vars("sweep --name {a} $a", ns, braces=False)
    assert swept.text == "sweep --name {a} 1"


@pytest.mark.parametrize("empty", [[], (), set(), ""])
def test_an_empty_dollar_list_means_no_jobs_not_every_job(
    ip: InteractiveShell, started: GPUJobScheduler, empty: object
) -> None:
    # e.g. ids = %gpusched sweep ... returned [] (nothing new), then %gpusched wait $ids
    gs(ip, "pause 0")
    gs(ip, "pause 1")  # the job stays queued
    queued = gs(ip, "run -- true")
    ip.user_ns["ids"] = empty
    rows = gs(ip, "wait $ids --timeout 0 --no-progress")
    assert isinstance(rows, pd.DataFrame) and rows.empty
    assert gs(ip, "cancel $ids") == []
    assert gs(ip, "retry $ids") == []
    assert started.job(queued)["status"] == "queued"
    with pytest.raises(UsageError, match=r"required: id \(\$ids is empty\)"):
        gs(ip, "logs $ids")
    with pytest.raises(UsageError, match=r"\$ids is empty; give a sweep id"):
        gs(ip, "results $ids")
    # written with no id at all, they keep their meaning
    with pytest.raises(UsageError, match=f"job\\(s\\) {queued} had not ended"):
        gs(ip, "wait --timeout 0 --no-progress")
    with pytest.raises(UsageError, match="the following arguments are required: ID"):
        gs(ip, "cancel")


def test_expand_vars_says_which_names_gave_nothing() -> None:
    ns = {"ids": ["1", "2"], "none": [], "blank": "", "n": 3}
    expanded = expand_vars("wait $ids $none $blank $n $unknown", ns)
    assert expanded.text == "wait 1 2   3 $unknown"
    assert expanded.empty == ("none", "blank")
    assert expanded.empty_note() == "$none, $blank are empty"
    assert expand_vars("wait $ids", ns).empty == ()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10**6), max_size=5), st.sampled_from([list, tuple]))
def test_expand_vars_gives_a_list_item_by_item(values: list[int], kind: type) -> None:
    expanded = expand_vars("wait $ids --timeout 1", {"ids": kind(values)})
    assert expanded.text.split() == ["wait", *map(str, values), "--timeout", "1"]
    assert expanded.empty == (() if values else ("ids",))


def test_cell_job_runs_the_cell_and_leaves_the_kernel_free(
    ip: InteractiveShell, started: GPUJobScheduler, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    body = (
        "import os, pathlib, time\n"
        f"flag = pathlib.Path({str(flag)!r})\n"
        "while not flag.exists():\n"
        "    time.sleep(0.01)\n"
        "print('cell ran on', os.environ['CUDA_VISIBLE_DEVICES'])\n"
    )
    jid = cell(ip, "run --gpus 0.5", body)
    assert started.job(jid)["status"] in ("queued", "running")  # returned before the job ended
    flag.touch()
    started.wait([jid], timeout=60)
    assert started.logs(jid).startswith("cell ran on ")
    script = Path(started.store.get(jid).spec.script or "")
    assert script.parent == started.config.state_dir / "cells"
    assert script.read_text() == body
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    assert stat.S_IMODE(script.parent.stat().st_mode) == 0o700


def test_a_cell_job_run_again_unchanged_is_the_same_job(
    ip: InteractiveShell, started: GPUJobScheduler
) -> None:
    """A notebook run again top to bottom (after its kernel died) gets the cell's job
    while it is queued, running or succeeded; a changed cell, or one that failed, runs."""
    first = cell(ip, "run --gpus 0.5", "print('hi')\n")
    assert cell(ip, "run --gpus 0.5", "print('hi')\n") == first
    started.wait([first], timeout=60)
    assert started.job(first)["status"] == "succeeded"
    assert cell(ip, "run --gpus 0.5", "print('hi')\n") == first
    other = cell(ip, "run --gpus 0.5 -- --x", "print('hi')\n")  # other arguments
    changed = cell(ip, "run --gpus 0.5", "print('hello')\n")  # other code
    assert len({first, other, changed}) == 3
    fails = cell(ip, "run", "import sys\nsys.exit(3)\n")
    started.wait([fails], timeout=60)
    again = cell(ip, "run", "import sys\nsys.exit(3)\n")
    assert again != fails and started.job(again)["status"] in ("queued", "running", "failed")
    assert len(started.jobs()) == 5


def test_wait_for_a_sweep_by_its_id(ip: InteractiveShell, started: GPUJobScheduler) -> None:
    body = "import sys\nsys.exit(int(sys.argv[2]) % 2)\n"
    ids = cell(ip, "sweep --gpus 0.5 -- --x {1..4}", body)
    ip.user_ns["sid"] = ids.sweep_id
    rows = gs(ip, "wait --sweep $sid --timeout 60 --no-progress")
    assert sorted(rows["id"]) == sorted(ids)
    assert sorted(rows["status"]) == ["failed", "failed", "succeeded", "succeeded"]
    again = cell(ip, "sweep --gpus 0.5 -- --x {1..4}", body)  # the notebook run again
    assert len(again) == 4 and len(again.queued) == 2  # the failed ones, queued again
    assert "4 jobs, 2 queued now, 2 already there (2 succeeded)" in again.describe()
    ip.user_ns["ids"] = again
    rows = gs(ip, "wait $ids --timeout 60 --no-progress")
    assert sorted(rows["id"]) == sorted(again)
    assert list(gs(ip, "results $sid")["id"]) == list(again)
    with pytest.raises(UsageError, match="not both"):
        gs(ip, f"wait --sweep {ids.sweep_id} {ids[0]}")
    with pytest.raises(UsageError, match="no such sweep"):
        gs(ip, "wait --sweep sw99")


def test_sweep_line_and_cell_forms_and_results(
    ip: InteractiveShell, started: GPUJobScheduler, tmp_path: Path
) -> None:
    body = (
        "import json, os, sys\n"
        "lr = float(sys.argv[2])\n"
        "json.dump({'score': lr * 10}, open(os.environ['NBSCHED_RESULT_FILE'], 'w'))\n"
    )
    ids = cell(ip, "sweep --gpus 0.5 -- --lr {0.1,0.2,0.3}", body)
    assert len(ids) == 3 and ids.sweep_id.startswith("sw")
    gs(ip, "wait --timeout 60 --no-progress")
    table = gs(ip, f"results {ids.sweep_id}")
    assert list(table["lr"]) == [0.1, 0.2, 0.3]
    assert list(table["score"]) == pytest.approx([1.0, 2.0, 3.0])
    script = tmp_path / "s.py"
    script.write_text(body)
    more = gs(ip, f"sweep {script} --priority 1 -- --lr {{1..2}}")
    assert len(more) == 2
    assert list(gs(ip, "sweeps")["sweep"]) == [ids.sweep_id, more.sweep_id]
    gs(ip, "wait --timeout 60 --no-progress")
    assert list(gs(ip, "results")["score"]) == [10.0, 20.0]  # default: the latest


def test_cancel_pause_resume_retry_why_status(
    ip: InteractiveShell, started: GPUJobScheduler
) -> None:
    assert gs(ip, "pause 0") is None and gs(ip, "pause 1") is None
    assert list(started.get_gpu_status()["paused"]) == [True, True]
    a = gs(ip, "run -- true")
    b = gs(ip, "run -- true")
    assert "GPU" in gs(ip, f"why {a}") or "waiting" in gs(ip, f"why {a}")
    report = gs(ip, "status")
    assert isinstance(report, StatusReport)
    assert report.counts["queued"] == 2
    html = report._repr_html_()
    assert "Queued (2)" in html and "#e9ecef" in html  # the queued colour
    assert "queued (2):" in repr(report)
    assert gs(ip, f"cancel {a}") is True
    assert gs(ip, f"cancel {a} {b}") == [False, True]
    assert gs(ip, f"retry {a}") == a
    assert gs(ip, "resume 0") is None
    started.wait([a], timeout=60)
    assert started.job(a)["status"] == "succeeded"
    assert started.job(b)["status"] == "cancelled"


@pytest.mark.parametrize("bad", ["999", "abc"])
def test_cancel_checks_every_id_before_cancelling_any(
    ip: InteractiveShell, started: GPUJobScheduler, bad: str
) -> None:
    gs(ip, "pause 0")
    gs(ip, "pause 1")
    c = gs(ip, "run -- true")
    with pytest.raises(UsageError, match=f"no job '{bad}'"):
        gs(ip, f"cancel {c} {bad}")
    assert started.job(c)["status"] == "queued"


def test_wait_timeout_is_a_one_line_error_naming_the_jobs(
    ip: InteractiveShell, started: GPUJobScheduler
) -> None:
    gs(ip, "pause 0")
    gs(ip, "pause 1")  # the jobs stay queued
    a = gs(ip, "run -- true")
    b = gs(ip, "run -- true")
    with pytest.raises(UsageError) as info:
        gs(ip, f"wait {a} {b} --timeout 0 --no-progress")
    text = str(info.value)
    assert text.startswith("%gpusched wait: ") and "\n" not in text
    assert f"job(s) {a}, {b} had not ended" in text
    assert started.job(a)["status"] == "queued"  # waiting gave up; the job did not


def test_status_html_escapes_commands_names_and_gpu_names(
    ip: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from html import escape

    from nbsched.gpus import write_simulated_gpus

    gpu = {"memory_total_mb": 1000, "external_memory_used_mb": 0, "external_load": 0}
    gpus_file = tmp_path / "gpus.json"
    write_simulated_gpus(gpus_file, [{**gpu, "name": "<b>A&B</b>"}, {**gpu, "name": "plain"}])
    monkeypatch.setenv("NBSCHED_SIMULATED_GPUS", str(gpus_file))
    s = gs(ip, f"start --simulate 2 --state-dir {tmp_path / 'state'}")
    gs(ip, "pause 0")
    gs(ip, "pause 1")  # the jobs stay queued
    name = "<img src=x onerror=alert(1)>"
    command = "cat <input.txt >output.txt"
    gs(ip, f"run --gpus 1 --name '{name}' -- {command}")
    assert s.jobs()["command"].tolist() == [command]
    html = gs(ip, "status")._repr_html_()
    for text in (name, command, "<b>A&B</b>"):
        assert text not in html
        assert escape(text) in html


def test_status_shows_the_head_of_a_long_queue(
    ip: InteractiveShell, started: GPUJobScheduler
) -> None:
    """The status shows the first 20 queued jobs in the order they start (an urgent one
    first, though submitted last) and says how many more wait."""
    from nbsched.jupyter.status import MAX_ROWS

    gs(ip, "pause 0")
    gs(ip, "pause 1")
    queued = [gs(ip, "run -- true") for _ in range(MAX_ROWS + 4)]
    urgent = gs(ip, "run --priority -10 -- true")
    report = gs(ip, "status")
    assert list(report.queued["id"]) == [urgent, *queued[: MAX_ROWS - 1]]
    assert report.counts["queued"] == MAX_ROWS + 5
    assert "... and 5 more" in repr(report) and "... and 5 more" in report._repr_html_()
    # One short reason per shown row, naming what it waits for (the pause, the job ahead).
    assert set(report.waiting) == set(report.queued["id"])
    assert report.waiting[urgent] == "needs 1 free GPU; GPU 0,1 paused"
    assert {report.waiting[j] for j in queued[: MAX_ROWS - 1]} == {f"after job {urgent}"}


def test_status_shows_the_notices(ip: InteractiveShell, tmp_path: Path) -> None:
    """A jobs-file line that was skipped is said in the notebook's status, as in the
    command's (not only in the engine's log)."""
    from html import escape

    from waiting import wait_for

    jobs = tmp_path / "jobs.txt"
    jobs.write_text("0,<nope>.py,,,\n")
    s = gs(ip, f"start --simulate 2 --state-dir {tmp_path / 'state'} --jobs-file {jobs}")
    wait_for(s.notices, what="the jobs file's notice")
    report = gs(ip, "status")
    assert "script '<nope>.py' not found" in repr(report)
    assert escape("script '<nope>.py' not found") in report._repr_html_()
    assert report.notices == s.notices(5)


def test_form_and_dashboard_verbs(ip: InteractiveShell, started: GPUJobScheduler) -> None:
    from nbsched.jupyter import Dashboard, SubmitForm

    form = gs(ip, "form")
    board = gs(ip, "dashboard")
    assert isinstance(form, SubmitForm) and isinstance(board, Dashboard)
    assert board.refreshing
    board.close()
    assert not board.refreshing


@pytest.mark.parametrize("interval", ["0", "0.01", "-1", "1e9", "nan", "soon"])
def test_dashboard_refuses_the_interval_the_dashboard_refuses(
    ip: InteractiveShell, started: GPUJobScheduler, interval: str
) -> None:
    """``--interval`` follows ``Dashboard(interval=)``'s rule; it was clamped (``0`` ran
    at 0.1 s) while the README says "above 0"."""
    with pytest.raises(UsageError, match=r"--interval: .* from 0.1 to 86400") as info:
        gs(ip, f"dashboard --interval {interval}")
    assert repr(interval) in str(info.value)
    assert magics_of(ip)._dashboard is None  # type: ignore[union-attr]


def test_a_new_dashboard_closes_the_previous_and_closed_widgets_are_dropped(
    ip: InteractiveShell, started: GPUJobScheduler
) -> None:
    magics = magics_of(ip)
    assert magics is not None
    first = gs(ip, "dashboard --interval 0.2")
    assert first.refreshing
    second = gs(ip, "dashboard --interval 0.2")  # the same cell run again
    assert not first.refreshing and first.comm is None  # stopped and closed
    assert second.refreshing
    assert magics._dashboard is second
    form = gs(ip, "form")
    form.close()
    kept = gs(ip, "form")
    assert magics._forms == [kept]
    gs(ip, "stop")  # stops the dashboard and leaves both on screen, for a person to read
    assert not second.refreshing and second.comm is not None and kept.comm is not None
    assert magics._dashboard is None and magics._forms == []


def test_unloading_the_extension_closes_the_widgets(
    ip: InteractiveShell, started: GPUJobScheduler
) -> None:
    board = gs(ip, "dashboard --interval 0.2")
    form = gs(ip, "form")
    ip.run_line_magic("unload_ext", "nbsched")
    try:
        assert not board.refreshing and board.comm is None and form.comm is None
    finally:
        ip.run_line_magic("load_ext", "nbsched")


def test_stop_then_verbs_say_there_is_none(ip: InteractiveShell, started: GPUJobScheduler) -> None:
    jid = gs(ip, "run -- sleep 30")
    gs(ip, "stop --kill")
    assert not started.running
    with pytest.raises(UsageError, match="no scheduler is running"):
        gs(ip, "jobs")
    assert magics_of(ip).scheduler is None  # type: ignore[union-attr]
    assert jid  # (the job was cancelled by --kill; its state is in the store)


def test_stop_right_after_start_leaves_no_engine_thread(
    ip: InteractiveShell, tmp_path: Path
) -> None:
    # Regression: a stop() that came before the engine thread had made its dispatcher
    # could not stop it; the thread then ran on after stop() gave up waiting for it.
    import threading

    for i in range(3):
        s = gs(ip, f"start --simulate 1 --state-dir {tmp_path / str(i)}")
        gs(ip, "run -- true")
        s.stop(kill=True)
        engines = [t for t in threading.enumerate() if t.name == "nbsched-engine"]
        assert engines == []
        gs(ip, "stop")


# -- user mistakes: UsageError, one line, nothing queued ---------------------------------------


@pytest.mark.parametrize("verb", [v for v in VERBS if v not in ("start",)])
def test_every_verb_needs_a_scheduler(ip: InteractiveShell, verb: str) -> None:
    args = {
        "add": "x.py",
        "logs": "1",
        "cancel": "1",
        "retry": "1",
        "pause": "0",
        "resume": "0",
        "why": "1",
        "hold": "1",
        "release": "1",
        "priority": "0 1",
    }
    line = f"{verb} {args.get(verb, '')}"
    if verb in ("run", "sweep"):
        line += " -- x"
    with pytest.raises(UsageError, match="no scheduler is running: start one with %gpusched"):
        gs(ip, line)


MISTAKES = [
    ("", "needs a verb; accepted verbs are start, add"),
    ("launch x", "unknown verb 'launch': accepted verbs are"),
    ("run --gpus 1.5 -- true", "--gpus: 1.5 is not accepted: use a fraction in (0, 1]"),
    ("run --gpus 0 -- true", "--gpus: 0 is not accepted"),
    ("run --gpus abc -- true", "'abc' is not a number of GPUs"),
    ("run --gpus nan -- true", "'nan' is not a number of GPUs"),
    ("run --gpu 1 -- true", "unrecognized arguments: --gpu 1 (usage: %gpusched run"),
    ("run --priority high -- true", "'high' is not accepted: expected a whole number"),
    ("run --allowed 5 -- true", "5"),
    ("run --allowed 0 --gpus 2 -- true", "required_gpus=2: allowed_gpus [0] has only 1 GPU"),
    ("run true", "unrecognized arguments: true; the job's arguments go after --"),
    ("run --env torch -- true", "--env applies to the cell form"),
    ("add", "the following arguments are required: script"),
    ("add missing.py", "script 'missing.py' not found"),
    ("add {script} -- 'unclosed", "No closing quotation"),
    ("sweep -- --lr {{1,2}}", "needs a SCRIPT"),
    ("sweep {script}", "needs the swept arguments after --"),
    ("sweep {script} -- --lr {{1,2", "a '{{' without '}}'"),
    ("sweep {script} --limit 2 -- --lr {{1..3}}", "3 jobs exceeds the limit of 2; add --limit 3"),
    ("sweep {script} -- --lr {{1..6000}}", "limit of 5000; add --limit 6000 to submit it anyway"),
    ("sweep {script} --limit 0 -- --lr {{1,2}}", "--limit: 0 is not accepted"),
    ("logs 999", "no job '999'"),
    ("logs 1 -n -3", "-n/--lines: -3 is not accepted"),
    ("cancel abc", "job ids are numbers"),
    ("cancel", "the following arguments are required: ID"),
    ("pause 5", "gpu=5: GPUs are 0-1"),
    ("pause x", "'x' is not accepted: expected a GPU index"),
    ("jobs --status nope", "status='nope': accepted values are queued"),
    ("jobs --last -2", "--last: -2 is not accepted: expected a number of jobs"),
    ("jobs --first 1 --last 1", "jobs: argument --last: not allowed with argument --first"),
    ("wait --timeout -1", "'-1' is not accepted: expected seconds >= 0"),
    ("wait 12345", "no job '12345'"),
    ("results sw77", "sw77"),
    ("stop -- now", "takes nothing after --"),
    ("start --simulate 2 --provider nvml", "--simulate 2 means --provider simulated"),
    ("start --executor pbs", "invalid choice: 'pbs'"),
    ("start --jobs-file {script.parent}", "is a directory; give the path of a jobs file"),
    ("retry 1 2", "no job '1'"),
]


@pytest.mark.parametrize(("line", "message"), MISTAKES)
def test_mistakes_raise_one_line_usage_errors_and_queue_nothing(
    ip: InteractiveShell, started: GPUJobScheduler, tmp_path: Path, line: str, message: str
) -> None:
    script = tmp_path / "ok.py"
    script.write_text("")
    with pytest.raises(UsageError) as info:
        gs(ip, line.format(script=script))
    text = str(info.value)
    assert "\n" not in text
    assert message.format() in text
    assert started.jobs().empty
    assert started.sweeps().empty


@pytest.mark.parametrize(
    ("line", "body", "message"),
    [
        ("jobs", "x = 1", "only run and sweep have a cell form"),
        ("run --gpus 0.5", "   \n", "the cell is empty"),
        ("run --gpus 3", "print(1)", "required_gpus=3: this machine has only 2 GPU(s)"),
        ("sweep s.py -- --lr {1,2}", "print(1)", "the cell is the script"),
        ("sweep --gpus 2.5 -- --lr {1,2}", "print(1)", "--gpus: 2.5 is not accepted"),
        ("sweep -- --lr {1..6000}", "print(1)", "%%gpusched sweep: sweep of 6000 jobs exceeds"),
        ("sweep -- --lr {1..6000}", "print(1)", "limit of 5000; add --limit 6000 to submit"),
    ],
)
def test_cell_mistakes(
    ip: InteractiveShell, started: GPUJobScheduler, line: str, body: str, message: str
) -> None:
    with pytest.raises(UsageError, match=None) as info:
        cell(ip, line, body)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert started.jobs().empty


@pytest.mark.parametrize("verb", ["run --gpus 0.5", "sweep --gpus 0.5 -- --lr {1,2}"])
@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("!nvidia-smi\n", "line 1 of the cell's code, '!nvidia-smi': invalid syntax"),
        ("import os\n%matplotlib inline\n", "line 2 of the cell's code, '%matplotlib inline'"),
        ("x = 1\ndef f(:\n    pass\n", "line 2 of the cell's code, 'def f(:'"),
        ("for i in range(2):\n    !ls\n", "line 2 of the cell's code, '!ls'"),
    ],
)
def test_a_cell_that_is_not_python_is_refused_before_it_is_queued(
    ip: InteractiveShell, started: GPUJobScheduler, verb: str, body: str, where: str
) -> None:
    with pytest.raises(UsageError) as info:
        cell(ip, verb, body)
    text = str(info.value)
    assert text.startswith(f"%%gpusched {verb.split()[0]}: {where}")
    assert "plain Python script: no ! or % lines" in text and "\n" not in text
    assert started.jobs().empty and started.sweeps().empty
    assert not (started.config.state_dir / "cells").exists()  # not even saved


def test_a_mistake_in_a_cell_shows_no_traceback(
    ip: InteractiveShell, started: GPUJobScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    result = ip.run_cell("%gpusched run --gpus 1.5 -- true")
    assert isinstance(result.error_in_exec, UsageError)
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "UsageError: %gpusched run: argument --gpus: 1.5 is not accepted" in shown
    assert "Traceback" not in shown
    assert started.jobs().empty


# -- the parsers, with hypothesis -----------------------------------------------------------------

words = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(words.filter(lambda w: w.strip() == w and w != "--"), max_size=4), st.text())
@example([], "\x1f")
@example(["a"], " b\xa0 ")
def test_split_dashdash_keeps_the_tail_verbatim(head_words: list[str], tail: str) -> None:
    from shlex import quote

    head = " ".join(quote(w) for w in head_words)
    before, after = split_dashdash(f"{head} -- {tail}")
    assert before == head.strip()
    assert after == tail.strip(SHELL_BLANKS)  # (a shell's blanks only: "\x1f" is the job's)
    assert split_dashdash(head) == (head.strip(), None)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.floats(allow_nan=True), st.integers(-3, 10), st.text(max_size=5)))
def test_gpus_type_accepts_exactly_what_the_engine_accepts(value: object) -> None:
    import argparse

    text = str(value)
    try:
        expected: float | None = check_requirement("x", float(text))
    except ValueError:
        expected = None
    try:
        got: float | None = gpus_type(text)
    except argparse.ArgumentTypeError as exc:
        got = None
        assert text in str(exc) or repr(text) in str(exc)
    assert got == expected


@pytest.fixture(scope="module")
def unstarted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GPUJobScheduler]:
    """A scheduler that is never started: what is queued stays queued."""
    from nbsched import SchedulerConfig

    config = SchedulerConfig(
        state_dir=tmp_path_factory.mktemp("unstarted"), gpu_provider="simulated", num_gpus=1
    )
    s = GPUJobScheduler(config=config)
    yield s
    s.close()


@settings(max_examples=30, deadline=None)
@given(command=st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30))
@example(command="0\xa0")  # (a trailing no-break space is part of the command)
@example(command="\xa0")
def test_run_makes_the_command_by_the_one_rule(unstarted: GPUJobScheduler, command: str) -> None:
    magics = GpuschedMagics(InteractiveShell.instance())
    magics.scheduler = unstarted
    blanks = " \t\n"  # (a shell's word separators: a no-break space is part of a word)
    if not command.strip(blanks):
        with pytest.raises(UsageError, match="needs a command after --"):
            magics.gpusched(f"run -- {command}")
        return
    # One word (as a shell splits it) is the command line itself; several, or a line a
    # shell cannot split, are the command line as typed.
    try:
        words: list[str] | None = shlex.split(command)
    except ValueError:
        words = None
    expected = words[0] if words is not None and len(words) == 1 else command.strip(blanks)
    if not expected.strip():  # ('' or "  ": one word, and nothing to run)
        with pytest.raises(UsageError, match="expected a shell command"):
            magics.gpusched(f"run -- {command}")
        return
    jid = magics.gpusched(f"run --gpus 0.5 -- {command}")
    assert unstarted.job(jid)["command"] == expected
