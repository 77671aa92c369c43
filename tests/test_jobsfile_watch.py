"""The jobs-file watcher: new lines become jobs once (also after a restart), bad lines
are reported with their line number, and nothing stops the watcher."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from legacy_support import wait_for

from nbsched import GPUJobScheduler
from nbsched.formats.jobsfile import parse_line
from nbsched.jobs import JobStatus
from nbsched.jobsfile_watch import JobsFileWatcher

MakeSched = Callable[..., GPUJobScheduler]


# Writes its arguments (as JSON) and CUDA_VISIBLE_DEVICES to stdout.
ECHO = (
    "import json, os, sys\n"
    "print(json.dumps({'args': sys.argv[1:], 'cvd': os.environ['CUDA_VISIBLE_DEVICES']}))\n"
)


def _folder(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "echo.py").write_text(ECHO)
    (work / "sub" / "other.py").write_text(ECHO)
    (work / "llm.json").write_text(json.dumps({"default_requirement": 1, "models": {"big": 2}}))
    return work


def _output(s: GPUJobScheduler, job_id: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(s.logs(job_id, tail=1))
    return out


def _assert_reported(
    s: GPUJobScheduler, caplog: pytest.LogCaptureFixture, jobs_file: Path, reasons: dict[int, str]
) -> None:
    """Each line's reason was logged as a WARNING naming the file and the line, and kept
    as a notice."""
    warnings = [r for r in caplog.records if r.name.startswith("nbsched.jobsfile")]
    for line_no, reason in reasons.items():
        hits = [
            r
            for r in warnings
            if r.levelno == logging.WARNING
            and f"line {line_no}:" in r.getMessage()
            and str(jobs_file) in r.getMessage()
            and reason in r.getMessage()
        ]
        assert hits, (
            f"no WARNING for line {line_no} ({reason}): {[r.getMessage() for r in warnings]}"
        )
        notices = [n["message"] for n in s.store.notices(50)]
        assert any(f"{jobs_file}:{line_no}: " in m and reason in m for m in notices), notices


def test_lines_become_jobs_and_bad_lines_are_reported(
    tmp_path: Path, make_sched: MakeSched, caplog: pytest.LogCaptureFixture
) -> None:
    work = _folder(tmp_path)
    jobs_file = work / "jobs.txt"
    text = (
        "\ufeff# priority,script_path,conda_env,arguments,allowed_gpus\n"  # BOM + comment
        "0,echo.py,,--lr 1 --bs 2,0-1\n"
        "\n"
        "1,echo.py,,--lr 2 --bs 1,0-1\r\n"  # same words, other order: another job; CRLF
        "2,sub/other.py,,--name 'a, b' \"x,y\",\n"  # commas inside quoted arguments
        "x,echo.py,,,\n"  # 6: bad priority
        "0,nope.py,,,\n"  # 7: missing script
        "0,echo.py,,,7\n"  # 8: unknown GPU
        "0,echo.py,,--say 'unbalanced,\n"  # 9: unbalanced quote
        "0,echo.py,,--llm big,0\n"  # 10: needs 2 GPUs, allowed only 1
        "0,echo.py,,--lr 1 --bs 2,0-1\n"  # 11: a repeat of line 2: not a second job
        "3,echo.py,,--llm=big,\n"  # 12: 2 GPUs from the LLM config
    )
    jobs_file.write_bytes(text.encode("utf-8"))
    s = make_sched(jobs_file=str(jobs_file), llm_config_file=str(work / "llm.json"))
    with caplog.at_level(logging.WARNING, logger="nbsched"):
        s.start()
        wait_for(lambda: len(s.store.find()) >= 4, what="4 jobs from the file")
        s.wait(timeout=60)
    jobs = {j.spec.priority: j for j in s.store.find()}
    assert len(s.store.find()) == 4
    assert all(j.status == JobStatus.SUCCEEDED for j in jobs.values())
    assert _output(s, jobs[0].id)["args"] == ["--lr", "1", "--bs", "2"]
    assert _output(s, jobs[1].id)["args"] == ["--lr", "2", "--bs", "1"]
    assert _output(s, jobs[2].id)["args"] == ["--name", "a, b", "x,y"]
    assert jobs[2].spec.script == str(work / "sub" / "other.py")
    assert jobs[2].spec.cwd == str(work)
    assert jobs[0].spec.allowed_gpus == (0, 1)
    assert jobs[3].spec.required_gpus == 2.0 and jobs[3].gpus == (0, 1)
    assert _output(s, jobs[3].id)["cvd"] == "0,1"
    expected_hash = parse_line("0,echo.py,,--lr 1 --bs 2,0-1", 2)
    assert expected_hash is not None and jobs[0].spec.hash == expected_hash.hash

    reasons = {
        6: "bad priority",
        7: "not found",
        8: "GPU 7 does not exist",
        9: "unbalanced",
        10: "has only 1 GPU",
    }
    _assert_reported(s, caplog, jobs_file, reasons)
    assert s._engine.role.helpers[0].alive  # the watcher outlived every bad line


def test_new_lines_are_taken_while_running_and_partial_lines_wait(
    tmp_path: Path, make_sched: MakeSched
) -> None:
    work = _folder(tmp_path)
    jobs_file = work / "jobs.txt"
    jobs_file.write_text("# nothing yet\n")
    s = make_sched(jobs_file=str(jobs_file))

    # A half-written line (no newline yet) is not parsed; once finished it is one job.
    watcher = JobsFileWatcher(s._submitter())  # driven by hand, before the engine runs
    assert watcher.poll() == []
    with jobs_file.open("a") as fh:
        fh.write("0,echo.py,,--n 1 --half")
    assert watcher.poll() == []
    with jobs_file.open("a") as fh:
        fh.write("-done\n")
    ids = watcher.poll()
    assert len(ids) == 1

    # A line appended while the engine runs is picked up and run.
    s.start()
    with jobs_file.open("a") as fh:
        fh.write("0,echo.py,,--n 2,\n")
    jobs = wait_for(lambda: s.store.find() if len(s.store.find()) == 2 else None, what="job 2")
    s.wait(timeout=30)
    assert _output(s, jobs[0].id)["args"] == ["--n", "1", "--half-done"]
    assert _output(s, jobs[1].id)["args"] == ["--n", "2"]
    assert len(s.store.find()) == 2  # the engine's watcher did not add line 2 again


def test_no_line_runs_again_after_a_restart_until_retried(
    tmp_path: Path, make_sched: MakeSched
) -> None:
    work = _folder(tmp_path)
    jobs_file = work / "jobs.txt"
    jobs_file.write_text("0,echo.py,,--run 1,\n0,echo.py,,--run 2,\n")
    s = make_sched(jobs_file=str(jobs_file))
    s.start()
    wait_for(lambda: len(s.store.find()) == 2, what="two jobs")
    s.wait(timeout=30)
    s.close()

    with jobs_file.open("a") as fh:
        fh.write("0,echo.py,,--run 3,\n")
    s2 = make_sched(jobs_file=str(jobs_file))
    watcher = JobsFileWatcher(s2._submitter())
    new = watcher.poll()  # reads the whole file again, as a restarted engine does
    assert len(new) == 1
    assert s2.store.get(new[0]).spec.args == ("--run", "3")
    assert watcher.poll() == []
    s2.start()
    s2.wait(timeout=30)
    assert len(s2.store.find()) == 3
    assert [j.attempts for j in s2.store.find()] == [1, 1, 1]

    first = s2.store.find()[0]
    assert s2.retry(first.id) == first.id  # a re-run on purpose
    s2.wait([first.id], timeout=30)
    assert s2.store.get(first.id).status == JobStatus.SUCCEEDED
    assert s2.logs(first.id, tail=None).count('"--run", "1"') == 2


def test_garbage_never_stops_the_watcher(tmp_path: Path, make_sched: MakeSched) -> None:
    work = _folder(tmp_path)
    jobs_file = work / "jobs.txt"
    s = make_sched(jobs_file=str(jobs_file))  # the file does not exist yet
    watcher = JobsFileWatcher(s._submitter())
    assert watcher.poll() == []
    assert any("does not exist" in n["message"] for n in s.store.notices())
    garbage = (
        b"\x00\x01\x02,,,\n"
        b"\xff\xfe not utf-8\n"
        b",,,,,,,,,,\n"
        b"0\n"
        b"0,echo.py,,\\\n"
        b"0,echo.py,,--x,0-99999999\n"
        b"0,'echo.py' 'two',,,\n"
        b'0,echo.py,,--q "unterminated\n' + "0,echo.py,,--u über 日本,\n".encode()
    )
    jobs_file.write_bytes(garbage)
    ids = watcher.poll()
    assert [s.store.get(i).spec.args for i in ids] == [("--u", "über", "日本")]
    assert len(s.store.notices(50)) >= 8

    # An unexpected error while checking a line is reported; the other lines still go.
    real = watcher.submitter.make_spec
    calls = {"n": 0}

    def flaky(**kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(**kw)  # type: ignore[arg-type]

    watcher.submitter.make_spec = flaky  # type: ignore[method-assign,assignment]
    with jobs_file.open("ab") as fh:
        fh.write(b"0,echo.py,,--a,\n0,echo.py,,--b,\n")
    ids = watcher.poll()
    assert [s.store.get(i).spec.args for i in ids] == [("--b",)]
    assert any("internal error: boom" in n["message"] for n in s.store.notices(50))


def test_six_field_lines_run_with_their_execution_type(
    tmp_path: Path, make_sched: MakeSched
) -> None:
    """The latest original's lines: ``torchrun-2gpu`` is torchrun on 2 GPUs (it ran on 1,
    with argv ``['torchrun-2gpu,--epochs', '3']``); ``python`` is a plain job; a line that
    reads both ways is refused with its line number."""
    work = _folder(tmp_path)
    jobs_file = work / "jobs.txt"
    jobs_file.write_text(
        "0,echo.py,,torchrun-2gpu,--epochs 3,0-3\n"
        "1,echo.py,,python,--llm big,\n"
        "2,echo.py,,torchrun,,\n"
        "3,echo.py,,python,0-3\n"  # 4: ambiguous
        "4,echo.py,,torchrun-2GPU,--x,\n"  # 5: unknown execution type
    )
    s = make_sched(jobs_file=str(jobs_file), llm_config_file=str(work / "llm.json"), num_gpus=4)
    watcher = JobsFileWatcher(s._submitter())
    jobs = {s.store.get(i).spec.priority: s.store.get(i).spec for i in watcher.poll()}
    assert sorted(jobs) == [0, 1, 2]
    assert (jobs[0].launcher, jobs[0].required_gpus) == ("torchrun", 2.0)
    assert jobs[0].args == ("--epochs", "3") and jobs[0].allowed_gpus == (0, 1, 2, 3)
    assert (jobs[1].launcher, jobs[1].required_gpus) == (None, 2.0)  # from the LLM config
    assert (jobs[2].launcher, jobs[2].required_gpus) == ("torchrun", 1.0)
    notices = [n["message"] for n in s.store.notices(50)]
    assert any(f"{jobs_file}:4: ambiguous: 'python'" in m for m in notices), notices
    assert any(f"{jobs_file}:5: unknown execution type" in m for m in notices), notices


def test_reports_with_one_reason_make_one_notice(
    tmp_path: Path, make_sched: MakeSched, caplog: pytest.LogCaptureFixture
) -> None:
    """56 lines naming one unknown model are one notice (and one warning) with the count
    and the line numbers, and the one skipped line keeps its own notice."""
    work = _folder(tmp_path)
    jobs_file = work / "jobs.txt"
    lines = [f"0,echo.py,,--llm nobody --seed {i},\n" for i in range(56)]
    lines.insert(30, "x,echo.py,,,\n")  # line 31: skipped
    jobs_file.write_text("".join(lines))
    s = make_sched(jobs_file=str(jobs_file), llm_config_file=str(work / "llm.json"))
    with caplog.at_level(logging.WARNING, logger="nbsched"):
        assert len(JobsFileWatcher(s._submitter()).poll()) == 56
    notices = [n["message"] for n in s.store.notices(50)]
    assert len(notices) == 2, notices
    assert (
        notices.count(
            f"{jobs_file}: 56 lines (1-30,32-57): model 'nobody' is not in the LLM config "
            f"{work / 'llm.json'}; it gets default_requirement=1 GPU(s)"
        )
        == 1
    ), notices
    assert any(m.startswith(f"{jobs_file}:31: bad priority") for m in notices), notices
    assert any("bad priority" in n["message"] for n in s.notices(5))  # what status shows
    warnings = [r for r in caplog.records if r.name == "nbsched.jobsfile_watch"]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
