"""The submission form and the dashboard, built and driven as a user would."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import ipywidgets as widgets
import pytest
from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.gpus import write_simulated_gpus
from nbsched.jupyter import Dashboard, SubmitForm
from nbsched.jupyter.form import conda_envs

GPU = {
    "name": "Sim A100",
    "memory_total_mb": 1000,
    "external_memory_used_mb": 0,
    "external_load": 0,
}


@pytest.fixture
def gpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [dict(GPU) for _ in range(3)])
    return path


@pytest.fixture
def llm_file(tmp_path: Path) -> Path:
    path = tmp_path / "llm_config.json"
    path.write_text(json.dumps({"default_requirement": 1, "models": {"small": 0.25, "big": 2}}))
    return path


@pytest.fixture
def scheduler_config(gpus_file: Path, llm_file: Path) -> dict[str, object]:
    """sched (not started: what the form queues stays queued) and running
    (tests/conftest.py): the GPUs of gpus_file, the LLM config of llm_file."""
    return {
        "simulated_gpus_file": str(gpus_file),
        "llm_config_file": str(llm_file),
        "gpu_monitor_interval_s": 0.0,
    }


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text("import sys\nprint(sys.argv[1:])\n")
    return path


# -- the form ------------------------------------------------------------------------------------


def test_form_submits_a_job(sched: GPUJobScheduler, script: Path) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    assert isinstance(form, widgets.VBox)
    assert isinstance(form.conda_env, widgets.Text)  # no conda environments: a text field
    assert len(form.allowed) == 3
    form.script.value = str(script)
    form.arguments.value = "--lr 0.1 --note 'a b'"
    form.gpus.value = "0.5"
    form.allowed[0].value = True
    form.allowed[2].value = True
    form.priority.value = 4
    form.submit_button.click()
    assert form.error is None
    assert len(form.submitted) == 1
    job = sched.store.get(form.submitted[0])
    assert job.spec.args == ("--lr", "0.1", "--note", "a b")
    assert (job.required_gpus, job.allowed_gpus, job.priority) == (0.5, (0, 2), 4)
    assert f"queued job {job.id}" in form.result.value


def test_script_is_checked_as_you_type(sched: GPUJobScheduler, script: Path) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    form.script.value = str(script.parent / "nope.py")
    assert "no such file" in form.script_check.value
    form.script.value = str(script)
    assert "found" in form.script_check.value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gpus", "1.5", "GPUs: 1.5 is not accepted: use a fraction in (0, 1] or a whole number"),
        ("gpus", "lots", "GPUs: 'lots' is not a number of GPUs; use a fraction in (0, 1]"),
        ("gpus", "4", "has only 3 GPU(s)"),
        ("script", "missing.py", "not found"),
        ("script", "", "give the path of the script"),
        ("arguments", "'unclosed", "No closing quotation"),
        ("sweep", "--lr {1,2", "without '}'"),
        ("sweep", "--lr {1..6000}", "6000 jobs exceeds the limit of 5000: the form submits at"),
    ],
)
def test_form_mistakes_are_shown_inline_and_submit_nothing(
    sched: GPUJobScheduler, script: Path, field: str, value: str, message: str
) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    form.script.value = str(script)
    getattr(form, field).value = value
    form.submit_button.click()
    assert form.error is not None and message in form.error
    assert "nothing submitted" in form.result.value
    assert form.submitted == []
    assert sched.jobs().empty


def test_form_errors_use_its_labels_and_go_when_a_field_changes(
    sched: GPUJobScheduler, script: Path
) -> None:
    """The scheduler's names (``required_gpus``) become the form's labels ("GPUs"), and
    an error stays only until a field is changed: it was shown after the fix."""
    form = SubmitForm(sched, conda_env_names=[])
    form.script.value = str(script)
    form.gpus.value = "4"
    form.submit_button.click()
    assert form.error == "GPUs=4: this machine has only 3 GPU(s)"
    assert "required_gpus" not in form.result.value
    form.gpus.value = "2"  # fixed: the old error goes
    assert form.error is None and form.result.value == ""
    form.allowed[0].value = True
    form.submit_button.click()
    assert form.error == "GPUs=2: allowed GPUs [0] has only 1 GPU(s)"
    form.allowed[1].value = True
    assert form.error is None and form.result.value == ""
    form.submit_button.click()
    assert len(form.submitted) == 1 and "queued job" in form.result.value


def test_form_submits_a_sweep(sched: GPUJobScheduler, script: Path) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    form.script.value = str(script)
    form.arguments.value = "--epochs 2"
    form.sweep.value = "--lr {0.1,0.01} --seed {1..2}"
    form.gpus.value = "0.25"
    form.submit_button.click()
    assert len(form.submitted) == 4
    jobs = sched.jobs()
    assert jobs["sweep"].nunique() == 1
    assert [sched.store.get(i).spec.args for i in form.submitted][0] == (
        "--epochs",
        "2",
        "--lr",
        "0.1",
        "--seed",
        "1",
    )
    assert "queued 4 job(s)" in form.result.value
    form.submit_button.click()  # the same sweep again: nothing new
    assert "nothing new" in form.result.value and len(sched.jobs()) == 4


def test_llm_model_sets_the_gpus(sched: GPUJobScheduler, script: Path) -> None:
    form = SubmitForm(sched, conda_env_names=["base", "torch"])
    assert isinstance(form.conda_env, widgets.Dropdown)
    assert [v for _, v in form.llm_model.options] == ["", "big", "small"]
    form.llm_model.value = "small"
    assert form.gpus.value == "0.25"
    form.script.value = str(script)
    form.conda_env.value = "torch"
    form.submit_button.click()
    job = sched.store.get(form.submitted[0])
    assert job.spec.args == ("--llm", "small")
    assert (job.required_gpus, job.spec.conda_env) == (0.25, "torch")


def test_going_back_to_no_model_restores_the_gpus(sched: GPUJobScheduler) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    form.gpus.value = "0.5"
    form.llm_model.value = "small"
    form.llm_model.value = "big"
    assert form.gpus.value == "2"
    form.llm_model.value = ""  # "(none)": what the field held before any model
    assert form.gpus.value == "0.5"
    form.gpus.value = ""
    form.llm_model.value = "small"
    form.gpus.value = "0.75"  # edited after the model set it: the user's value stays
    form.llm_model.value = ""
    assert form.gpus.value == "0.75"


def test_no_conda_means_no_environment_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CONDA_EXE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert conda_envs() is None


# -- the dashboard ------------------------------------------------------------------------------


def test_dashboard_refresh_follows_the_gpus(
    sched: GPUJobScheduler, gpus_file: Path, script: Path
) -> None:
    board = Dashboard(sched, autostart=False)
    try:
        assert not board.refreshing
        assert bytes(board.chart.value).startswith(b"\x89PNG")
        labels = [row.children[2].value for row in board.gpu_rows.children]
        assert len(labels) == 3 and all("load 0%" in x for x in labels)
        busy = [dict(GPU) for _ in range(3)]
        busy[1].update(external_load=0.95, external_memory_used_mb=900)
        write_simulated_gpus(gpus_file, busy)
        before = bytes(board.chart.value)
        board.refresh()
        labels = [row.children[2].value for row in board.gpu_rows.children]
        assert "load 95%" in labels[1] and "load 0%" in labels[0]
        assert bytes(board.chart.value) != before  # a new reading, a new picture
        assert "3 GPU(s)" in board.header.value
    finally:
        board.close()


def test_dashboard_shows_the_command_of_an_unnamed_job(sched: GPUJobScheduler) -> None:
    unnamed = sched.add_command("echo unnamed-job", required_gpus=1)
    named = sched.add_command("echo named-job", required_gpus=1, name="labelled")
    board = Dashboard(sched, autostart=False)
    try:
        labels = {v: label for label, v in board.job_select.options}
        assert labels[unnamed] == f"{unnamed} · queued · echo unnamed-job"
        assert labels[named] == f"{named} · queued · labelled"
        table = board.jobs_table.value
        assert "nan" not in table
        assert "echo unnamed-job" in table and "labelled" in table
    finally:
        board.close()


def test_dashboard_jobs_cancel_pause_and_sweep_progress(running: GPUJobScheduler) -> None:
    running.pause_gpu(0)
    board = Dashboard(running, autostart=False)
    try:
        toggles = [row.children[1] for row in board.gpu_rows.children]
        assert [t.value for t in toggles] == [True, False, False]
        toggles[0].value = False  # resume GPU 0 from the dashboard
        toggles[1].value = True
        toggles[2].value = True
        assert list(running.get_gpu_status()["paused"]) == [False, True, True]
        long = running.add_command("sleep 60", required_gpus=1, name="long")
        queued = running.add_command("true", required_gpus=1, name="waits")
        wait_for(lambda: running.job(long)["status"] == "running")
        board.refresh()
        assert "long" in board.jobs_table.value and "waits" in board.jobs_table.value
        assert [v for _, v in board.job_select.options] == [long, queued]
        board.job_select.value = long
        board.cancel_button.click()
        assert running.job(long)["status"] == "cancelled"
        assert "cancelled" in board.job_message.value  # (beside the Cancel button)
        toggles[1].value = False
        running.wait([queued], timeout=60)
        script = running.config.state_dir / "s.py"
        script.write_text("")
        ids = running.add_sweep(str(script), args="--x {1..3}", required_gpus=0.5)
        board.refresh()
        running.wait(ids, timeout=60)
        board.refresh()
        assert (board.sweep_bar.value, board.sweep_bar.max) == (3, 3)
        assert f"{ids.sweep_id}: 3/3 ended" in board.sweep_label.value  # type: ignore[attr-defined]
    finally:
        board.close()


def test_cancel_acts_only_on_a_job_the_user_chose(running: GPUJobScheduler) -> None:
    """ipywidgets 8 leaves a Dropdown's value at None when its options go from none to
    some: Cancel was enabled and said "no job selected" while the job ran on."""
    for gpu in range(3):
        running.pause_gpu(gpu)  # the jobs stay queued
    board = Dashboard(running, autostart=False)
    try:
        assert board.cancel_button.disabled and board.cancel_button.tooltip == "no active job"
        first = running.add_command("sleep 60", required_gpus=1, name="first")
        second = running.add_command("sleep 60", required_gpus=1, name="second")
        board.refresh()
        assert [v for _, v in board.job_select.options] == [first, second]
        assert board.job_select.value is None
        assert board.cancel_button.disabled
        assert board.cancel_button.tooltip == "choose a job in the list first"
        board.job_select.value = second  # the user chooses
        assert not board.cancel_button.disabled
        assert board.cancel_button.tooltip == f"cancel job {second}"
        board.cancel_button.click()
        assert running.job(second)["status"] == "cancelled"
        assert running.job(first)["status"] == "queued"
        # The chosen job is gone: no other job is chosen in its place.
        assert [v for _, v in board.job_select.options] == [first]
        assert board.job_select.value is None and board.cancel_button.disabled
    finally:
        board.close()


def test_dashboard_shows_nothing_for_a_missing_name(sched: GPUJobScheduler) -> None:
    """The jobs table has NaN for a missing text (pandas 3's str columns): the dashboard
    shows the command in its place, never "nan"."""
    named = sched.add_command("echo named", required_gpus=1, name="named")
    plain = sched.add_command("echo unnamed", required_gpus=1)
    board = Dashboard(sched, autostart=False)
    try:
        board.refresh()
        labels = {v: label for label, v in board.job_select.options}
        assert labels[named].endswith("named") and labels[plain].endswith("echo unnamed")
        assert "nan" not in board.jobs_table.value
    finally:
        board.close()


def test_dashboard_thread_refreshes_and_stops_with_the_engine(
    running: GPUJobScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    escaped: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    board = Dashboard(running, interval=0.1)
    try:
        start = board.refreshes
        wait_for(lambda: board.refreshes >= start + 3)
        # An error inside the thread is shown, not raised; refreshing goes on.
        calls = {"n": 0}

        def broken() -> None:
            calls["n"] += 1
            raise RuntimeError("GPU readings unavailable")

        monkeypatch.setattr(running, "get_gpu_status", broken)
        wait_for(lambda: calls["n"] >= 3)
        assert "GPU readings unavailable" in board.message.value
        assert board.refreshing
        monkeypatch.undo()
        monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
        running.stop()
        wait_for(lambda: not board.refreshing)
        assert "engine stopped" in board.message.value
        assert escaped == []
    finally:
        board.close()


@pytest.mark.parametrize(
    "interval", [0, -1, 0.0, 1e-9, 0.05, float("nan"), float("inf"), 10**400, 1e9]
)
def test_dashboard_refuses_a_bad_interval(running: GPUJobScheduler, interval: object) -> None:
    before = [t for t in threading.enumerate() if t.name == "nbsched-dashboard"]
    with pytest.raises(ValueError, match=r"interval=.*: expected seconds between refreshes"):
        Dashboard(running, interval=interval)  # type: ignore[arg-type]
    assert [t for t in threading.enumerate() if t.name == "nbsched-dashboard"] == before


def test_a_too_short_interval_is_refused_naming_what_is_accepted(
    running: GPUJobScheduler,
) -> None:
    """A period near 0 only burns the kernel's CPU: refused, with the accepted range."""
    with pytest.raises(ValueError, match=r"interval=1e-09: .* from 0.1 to 86400"):
        Dashboard(running, interval=1e-9)
    board = Dashboard(running, interval=0.1)  # the shortest accepted
    board.close()


@pytest.mark.parametrize("interval", ["1", True, None])
def test_dashboard_interval_must_be_a_number(running: GPUJobScheduler, interval: object) -> None:
    with pytest.raises(TypeError, match="interval=.*: expected seconds"):
        Dashboard(running, interval=interval)  # type: ignore[arg-type]


def test_dashboard_takes_numpy_numbers(running: GPUJobScheduler) -> None:
    import numpy as np

    for interval in (np.int64(2), np.float32(0.5)):
        board = Dashboard(running, interval=interval)  # type: ignore[arg-type]
        try:
            assert board.refreshing
        finally:
            board.close()


def test_closing_the_dashboard_stops_its_thread(running: GPUJobScheduler) -> None:
    board = Dashboard(running, interval=0.1)
    assert board.refreshing
    board.close()
    assert not board.refreshing
    count = board.refreshes
    assert board._thread is None and board.refreshes == count


# -- what a person sees: messages beside their control, cut rows counted, pauses plain ----------


def _classes(widget: widgets.Widget) -> set[str]:
    return set(widget._dom_classes)


def test_the_widgets_a_browser_finds_carry_a_css_class(sched: GPUJobScheduler) -> None:
    board = Dashboard(sched, autostart=False)
    form = SubmitForm(sched, conda_env_names=[])
    try:
        assert "nbsched-job-select" in _classes(board.job_select)
        assert "nbsched-cancel" in _classes(board.cancel_button)
        assert "nbsched-job-message" in _classes(board.job_message)
        assert "nbsched-message" in _classes(board.message)
        assert {"nbsched-window"} <= _classes(board.window)
        assert {"nbsched-metric"} <= _classes(board.metric)
        for gpu, row in enumerate(board.gpu_rows.children):
            assert {"nbsched-pause", f"nbsched-pause-{gpu}"} <= _classes(row.children[1])
            assert {"nbsched-gpu-message", f"nbsched-gpu-message-{gpu}"} <= _classes(
                row.children[3]
            )
        assert "nbsched-submit" in _classes(form.submit_button)
        # (the texts the browser test finds them by stay as they were)
        assert board.cancel_button.description == "Cancel job"
        assert board.stop_button.description == "Stop refreshing"
        assert form.submit_button.description == "Submit"
    finally:
        board.close()
        form.close()


def test_messages_show_beside_the_control_that_caused_them(running: GPUJobScheduler) -> None:
    board = Dashboard(running, autostart=False)
    try:
        toggle, note = (
            board.gpu_rows.children[1].children[1],
            board.gpu_rows.children[1].children[3],
        )
        toggle.value = True
        assert "GPU 1 paused" in note.value and board.message.value == ""
        assert board.job_message.value == ""
        for gpu in range(3):
            running.pause_gpu(gpu)
        jid = running.add_command("sleep 60", required_gpus=1)
        board.refresh()
        board.job_select.value = jid
        board.cancel_button.click()
        assert f"job {jid} cancelled" in board.job_message.value
        assert "cancelled" not in board.message.value and "cancelled" not in note.value
    finally:
        board.close()


def test_pausing_an_idle_gpu_shows_on_its_row(running: GPUJobScheduler) -> None:
    board = Dashboard(running, autostart=False)
    try:
        bar, toggle, label, _ = board.gpu_rows.children[2].children
        assert toggle.button_style == "" and "PAUSED" not in label.value
        toggle.value = True  # an idle GPU: its bar is empty either way
        assert running.get_gpu_status()["paused"][2]
        assert toggle.button_style == "warning" and toggle.description == "paused"
        assert "PAUSED" in label.value and bar.bar_style == "warning"
        toggle.value = False
        assert toggle.button_style == "" and "PAUSED" not in label.value
    finally:
        board.close()


def test_rows_cut_from_the_table_are_counted(running: GPUJobScheduler) -> None:
    from nbsched.jupyter.dashboard import SHOWN_ENDED

    ids = [running.add_command("true", required_gpus=0.1) for _ in range(SHOWN_ENDED + 3)]
    running.wait(ids, timeout=60, progress=False)
    for gpu in range(3):
        running.pause_gpu(gpu)
    running.add_command("true", required_gpus=1)
    board = Dashboard(running, autostart=False)
    try:
        table = board.jobs_table.value
        assert "... and 3 more ended" in table
        assert "more queued" not in table  # (the one queued job is shown)
        assert table.count("<tr>") == 1 + 1 + SHOWN_ENDED  # header, queued, the last ended
    finally:
        board.close()


def test_dashboard_shows_when_the_gpus_were_read_and_what_is_true_after_a_job_ends(
    make_sched: object,
) -> None:
    # A reading cached for a minute: only a fresh one shows the ended job's GPU as idle.
    s = make_sched(start=True, num_gpus=2, gpu_monitor_interval_s=60.0)  # type: ignore[operator]
    board = Dashboard(s, autostart=False)
    try:
        assert re.search(r"GPUs read \d\d:\d\d:\d\d, \d+\.\d s ago", board.header.value)
        jid = s.add_command("sleep 1", required_gpus=1)
        wait_for(lambda: s.job(jid)["status"] == "running")
        board.refresh()
        assert "load 100%" in board.gpu_rows.children[0].children[2].value
        s.wait([jid], timeout=60, progress=False)
        board.refresh()
        assert "load 0%" in board.gpu_rows.children[0].children[2].value
    finally:
        board.close()


def test_a_pressed_gpu_toggle_looks_pressed(sched: GPUJobScheduler) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    try:
        toggle = form.allowed[1]
        assert toggle.button_style == ""
        toggle.value = True
        assert toggle.button_style == "info" and toggle.description == "1"
        toggle.value = False
        assert toggle.button_style == ""
    finally:
        form.close()


def test_the_chart_window_and_metric_are_chosen_on_the_dashboard(running: GPUJobScheduler) -> None:
    board = Dashboard(running, autostart=False)
    try:
        chart = board._chart
        assert chart is not None and board.window.value == "since start"
        assert board.chart.width == str(chart.size_px[0])  # shown at its CSS size
        before = bytes(board.chart.value)
        board.window.value = "10 min"
        labels = [t.get_text() for t in chart.axes[0].get_xticklabels()]
        assert labels == ["-10 min", "-5 min", "now"] and bytes(board.chart.value) != before
        board.metric.value = "allocation"
        assert chart.metric == "allocation"
        assert chart.axes[0].get_ylabel() == "nbsched allocation %"
    finally:
        board.close()
