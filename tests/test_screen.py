"""The GNU screen executor, with real screen: sessions, live output and log, real exit
codes, vanished sessions, cancel, and quoting as safe as direct execution."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from legacy_support import wait_for

from nbsched import GPUJobScheduler
from nbsched.executors.process import find_by_token, same_process_alive
from nbsched.executors.screen import list_sessions
from nbsched.jobs import JobStatus

MakeSched = Callable[..., GPUJobScheduler]


SCREEN = shutil.which("screen") or "screen"  # .ci/run installs it; a missing one fails loudly

QUOTING_CORPUS = [
    "a'; echo foo",
    'say "hi, there"',
    "$(touch /tmp/nbsched-pwned)",
    "`id`",
    "a;b && c || d | e > f",
    "with space",
    "  leading and trailing  ",
    "line\nbreak",
    "tab\there",
    "über ∂ 日本 🚀",
    "back\\slash",
    "",
    "-c",
    "--",
    "*",
    "~",
    "$HOME",
    "#hash",
    "{a,b}",
    "%s %n",
    "\x01control",
]

# Prints its arguments as JSON, then waits for a file (if one is named) and exits with a code.
WAITER = """\
import json, os, sys, time
print("started", json.dumps(sys.argv[1:]), flush=True)
marker, code = os.environ.get("MARKER"), int(os.environ.get("CODE", "0"))
while marker and not os.path.exists(marker):
    time.sleep(0.01)
print("finishing with", code, flush=True)
sys.exit(code)
"""


@pytest.mark.parametrize("executor", ["direct", "screen"])
def test_arguments_arrive_byte_identical(
    executor: str, tmp_path: Path, make_sched: MakeSched
) -> None:
    script = tmp_path / "argv.py"
    out = tmp_path / "argv.json"
    script.write_text(
        "import json, sys\n"
        "open(sys.argv[1], 'w', encoding='utf-8').write(json.dumps(sys.argv[2:]))\n"
    )
    s = make_sched(executor=executor)
    s.start()
    jid = s.add_job(str(script), args=[str(out), *QUOTING_CORPUS], required_gpus=0.5)
    s.wait([jid], timeout=30)
    assert s.job(jid)["status"] == "succeeded", s.logs(jid)
    assert json.loads(out.read_text(encoding="utf-8")) == QUOTING_CORPUS


def test_screen_session_output_log_and_real_exit_code(
    tmp_path: Path, make_sched: MakeSched
) -> None:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    marker = tmp_path / "go"
    s = make_sched(executor="screen")
    s.start()
    jid = s.add_job(
        str(script), args=["hello"], required_gpus=1, env={"MARKER": str(marker), "CODE": "3"}
    )
    wait_for(lambda: "started" in s.logs(jid), what="the job's first output in its log")
    rows = s.screens()
    assert [r["id"] for r in rows] == [jid]
    session = rows[0]["session"]
    assert re.fullmatch(rf"\d+\.nbsched-{jid}", session), session
    assert rows[0]["pid"] == s.store.get(jid).pid
    assert session in list_sessions()

    # What `screen -r` would show: the window holds the live output.
    shot = tmp_path / "hardcopy.txt"

    def window_shows_output() -> bool:
        # `-X` only sends the command: ask again until the window's dump shows the line.
        subprocess.run([SCREEN, "-S", session, "-p", "0", "-X", "hardcopy", str(shot)], check=True)
        return shot.exists() and 'started ["hello"]' in shot.read_text(errors="replace")

    wait_for(window_shows_output, what="the output in the screen window")

    marker.touch()
    s.wait([jid], timeout=30)
    job = s.job(jid)
    assert (job["status"], job["exit_code"]) == ("failed", 3)
    assert s.logs(jid) == 'started ["hello"]\nfinishing with 3\n'  # complete, unaltered
    assert session not in list_sessions()
    assert s.screens() == []

    ok = s.add_job(str(script), args=["fine"], required_gpus=1)
    s.wait([ok], timeout=30)
    assert (s.job(ok)["status"], s.job(ok)["exit_code"]) == ("succeeded", 0)


def test_vanished_session_is_failed_not_succeeded(tmp_path: Path, make_sched: MakeSched) -> None:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    s = make_sched(executor="screen")
    s.start()
    jid = s.add_job(str(script), required_gpus=1, env={"MARKER": str(tmp_path / "never")})
    wait_for(lambda: "started" in s.logs(jid), what="the job to start")
    session = s.screens()[0]["session"]
    subprocess.run([SCREEN, "-S", session, "-X", "quit"], check=True)
    s.wait([jid], timeout=30)
    job = s.job(jid)
    assert job["status"] == "failed"
    assert job["exit_code"] is None or str(job["exit_code"]) == "<NA>"
    assert "ended without recording an exit code" in job["reason"]
    assert session in job["reason"]


def test_cancel_ends_the_tree_and_the_session(tmp_path: Path, make_sched: MakeSched) -> None:
    s = make_sched(executor="screen", kill_grace_s=2.0)
    s.start()
    # A job whose child sits in a new session of its own: found through the token.
    jid = s.add_command(
        "setsid sleep 300 & sleep 300 & echo children started; wait", required_gpus=1
    )
    wait_for(lambda: "children started" in s.logs(jid), what="the job's children")
    job = s.store.get(jid)
    assert job.token is not None
    wait_for(lambda: len(find_by_token(job.token or "")) >= 4, what="all the job's processes")
    session = s.screens()[0]["session"]
    assert s.cancel(jid) is True
    assert s.job(jid)["status"] == "cancelled"
    assert find_by_token(job.token) == []
    assert session not in list_sessions()


def test_what_a_job_leaves_running_ends_with_it(tmp_path: Path, make_sched: MakeSched) -> None:
    s = make_sched(executor="screen")
    s.start()
    # (their output elsewhere: under screen a job ends when its output does, see README)
    jid = s.add_command(
        "setsid sleep 341 >/dev/null 2>&1 & sleep 342 >/dev/null 2>&1 & echo left; exit 4",
        required_gpus=1,
    )
    s.wait([jid], timeout=60)
    assert (s.job(jid)["status"], s.job(jid)["exit_code"]) == ("failed", 4)
    assert "left" in s.logs(jid)
    token = s.store.get(jid).token
    assert token
    wait_for(lambda: find_by_token(token) == [], what="the job's leftovers to be ended")
    wait_for(
        lambda: not [n for n in list_sessions() if n.endswith(f".nbsched-{jid}")],
        what="its session to end by itself",
    )


def test_two_state_dirs_each_have_their_job_1(tmp_path: Path, make_sched: MakeSched) -> None:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    a = make_sched(executor="screen", state_dir=tmp_path / "a")
    b = make_sched(executor="screen", state_dir=tmp_path / "b")
    a.start()
    b.start()
    ja = a.add_job(str(script), required_gpus=1, env={"MARKER": str(tmp_path / "go-a")})
    jb = b.add_job(str(script), required_gpus=1, env={"MARKER": str(tmp_path / "go-b")})
    assert ja == jb == "1"
    wait_for(lambda: "started" in a.logs(ja) and "started" in b.logs(jb), what="both jobs")
    (ra,), (rb,) = a.screens(), b.screens()
    assert ra["pid"] != rb["pid"] and ra["session"] != rb["session"]
    assert ra["session"].endswith(".nbsched-1") and rb["session"].endswith(".nbsched-1")
    (tmp_path / "go-a").touch()
    a.wait(timeout=30)
    assert a.job("1")["status"] == "succeeded"
    assert b.store.get("1").status == JobStatus.RUNNING  # the other job 1 is untouched
    assert b.screens() == [rb]
    (tmp_path / "go-b").touch()
    b.wait(timeout=30)
    assert b.job("1")["status"] == "succeeded"


def test_no_screen_fails_the_job_with_the_reason(tmp_path: Path, make_sched: MakeSched) -> None:
    s = make_sched(executor="screen")
    s.start()
    jid = s.add_command("true", required_gpus=1, env={"PATH": str(tmp_path)})
    s.wait([jid], timeout=30)
    job = s.job(jid)
    assert job["status"] == "failed"
    assert "GNU screen is not installed" in job["reason"]
    assert "GNU screen is not installed" in s.logs(jid)


def test_a_new_engine_adopts_a_running_screen_job(tmp_path: Path, make_sched: MakeSched) -> None:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    marker = tmp_path / "go"
    s = make_sched(executor="screen")
    s.start()
    jid = s.add_job(str(script), required_gpus=1, env={"MARKER": str(marker), "CODE": "7"})
    wait_for(lambda: "started" in s.logs(jid), what="the job to start")
    job = s.store.get(jid)
    s.close()  # the engine goes; the job goes on in its session
    assert same_process_alive(job.pid, job.proc_start)

    s2 = make_sched(executor="screen")
    s2.start()
    assert s2.store.get(jid).status == JobStatus.RUNNING
    wait_for(lambda: s2._dispatcher is not None and s2._dispatcher.cycles > 0, what="recovery")
    marker.touch()
    s2.wait([jid], timeout=30)
    assert (s2.job(jid)["status"], s2.job(jid)["exit_code"]) == ("failed", 7)
    assert s2.logs(jid) == "started []\nfinishing with 7\n"
