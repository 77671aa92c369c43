"""``--after`` and ``--after-KIND`` (issue 17) from ``nbsched`` and ``%gpusched``: one row
of the verb table each, the same meaning and the same refusals in both."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import run_cli
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from waiting import wait_for

from nbsched import GPUJobScheduler

MakeSched = Callable[..., GPUJobScheduler]


def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    wait_for(check, "the condition", timeout)


def _cli(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    return run_cli(list(words), capsys)


def test_the_cli_after_options(make_sched: MakeSched, capsys: pytest.CaptureFixture[str]) -> None:
    s = make_sched(start=True, num_gpus=1)
    st = ["--state-dir", str(s.config.state_dir)]
    s.pause_gpu(0)
    a, b = s.add_command("true"), s.add_command("exit 1")
    rc, out, _ = _cli(capsys, "run", *st, "--after", f"{a},{b}", "--", "true")
    c = out.strip()
    assert rc == 0 and s.job(c)["after"] == f"ok:{a},{b}"
    rc, out, _ = _cli(capsys, "run", *st, "--after-notok", b, "--after-started", a, "--", "true")
    d = out.strip()
    assert s.job(d)["after"] == f"notok:{b};started:{a}"
    rc, out, _ = _cli(capsys, "why", d, *st)
    assert out.strip() == f"waits for job {b} to fail and job {a} to start"
    rc, _, err = _cli(capsys, "run", *st, "--after-any", "x", "--", "true")
    assert rc == 2 and "--after-any='x': 'x' is not a job id (12) or a sweep id (sw3)" in err
    rc, _, err = _cli(capsys, "run", *st, "--after", "999", "--", "true")
    assert rc != 0 and "no job 999" in err
    s.resume_gpu(0)
    _until(lambda: all(s.job(i)["status"] in ("succeeded", "cancelled") for i in (c, d)))
    assert (s.job(c)["status"], s.job(c)["reason"]) == ("cancelled", f"dependency {b} failed")
    assert s.job(d)["status"] == "succeeded"


def gs(ip: InteractiveShell, line: str) -> Any:
    return ip.run_line_magic("gpusched", line)


def test_the_magic_after_options(ip: InteractiveShell, tmp_path: Path) -> None:
    s: GPUJobScheduler = gs(ip, f"start --simulate 1 --state-dir {tmp_path / 'state'}")
    gs(ip, "pause 0")
    a = gs(ip, "run -- true")
    script = tmp_path / "t.py"
    script.write_text("print('hi')\n")
    sweep = gs(ip, f"sweep --after-any {a} {script} -- --x {{1,2}}")
    b = gs(ip, f"add --after {sweep.sweep_id} {script}")
    assert s.job(b)["after"] == f"ok:{sweep.sweep_id}"
    assert s.why(b) == f"waits for jobs {', '.join(sweep)} to succeed"
    assert all(s.job(i)["after"] == f"any:{a}" for i in sweep)
    with pytest.raises(UsageError, match="unknown kind 'sometimes'"):
        gs(ip, "run --after sometimes:1 -- true")
    gs(ip, "resume 0")
    _until(lambda: s.job(b)["status"] == "succeeded")


def test_status_dashboard_and_form_show_holds_and_waits(
    make_sched: MakeSched, tmp_path: Path
) -> None:
    from nbsched.jupyter import Dashboard, SubmitForm
    from nbsched.jupyter.status import status_report

    s = make_sched(start=True, num_gpus=1)
    s.pause_gpu(0)
    a = s.add_command("true")
    ahead = [s.add_command("true") for _ in range(5)]  # (why() covers the first five)
    b = s.add_command("true", after=a)
    c = s.add_command("true")
    s.hold(c)
    waiting = status_report(s).queued.set_index("id")["waiting"]
    assert (waiting[b], waiting[c]) == (f"waits for {a}", "held")
    board = Dashboard(s, autostart=False)
    try:
        table = board.jobs_table.value
        # (the dashboard's compact table: the reason in its own "waiting" column)
        assert f">waits for {a}</td>" in table and ">held</td>" in table
    finally:
        board.close()
    script = tmp_path / "f.py"
    script.write_text("")
    form = SubmitForm(s, conda_env_names=[])
    form.script.value, form.after.value = str(script), f"any:{a};started:{ahead[0]}"
    (d,) = form.submit()
    assert s.job(d)["after"] == f"any:{a};started:{ahead[0]}"
    form.after.value = "soon"
    assert form.submit() == [] and form.error is not None
    assert "after='soon': 'soon' is not a job id (12) or a sweep id (sw3)" in form.error
