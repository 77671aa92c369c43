"""The screen executor: each job in a detached GNU screen session, ``nbsched-<job id>``.

``screen -r nbsched-17`` shows the job's live output; the same output goes, byte
for byte, to its log.  How:

* ``screen -c /dev/null -h 10000 -dmS nbsched-17 bash -c SCREEN_LAUNCHER ...``:
  the user's ``~/.screenrc`` is not read (a ``zombie`` or ``deflog`` setting there
  would keep sessions alive or write stray logs); 10,000 lines of scrollback.
  ``SCREENDIR`` is left alone, so a plain ``screen -r`` / ``screen -ls`` finds the
  sessions.
* The wrapper writes its pid to ``run/<token>.pid``, runs the job as
  ``"$@" 2>&1 | tee -i -a LOG`` and records ``${PIPESTATUS[0]}`` (the job's exit
  code, not tee's) in ``run/<token>.exit``, as the direct executor's spawner does.  Why tee
  and not screen's own ``-L -Logfile``: screen logs what it *draws* (CR-LF line
  ends, terminal escapes) and flushes every few seconds, so the log would be late
  and altered; tee writes each chunk the moment the job writes it, unaltered, whether
  or not anyone is attached.  ``-i`` keeps tee alive through a Ctrl-C typed in the
  session, so the job's last words still reach the log.  The job's stdin is the
  session's terminal (a user who attaches may type to it).
* Arguments travel as argv (screen executes its arguments as given, no shell
  re-parses them), so they arrive byte-identical, as with the direct executor.
* The job is identified by the wrapper's pid and start time (read from the pid
  file), never by the session name: two state directories may both have a job 17.
  The session's full name (``<screen pid>.nbsched-17``) is read from the wrapper's
  ``STY`` environment variable.
* A session that ends without an exit code recorded (killed, ``screen -X quit``)
  makes the job ``failed`` with that reason, never ``succeeded``.
* Cancel (and a time limit) ends the job's processes first, so its wrapper records
  its exit code, then whatever is left of the tree, then the session.
* What a job leaves running when it ends (``cmd &``, ``setsid``, daemons: the processes
  carrying its ``NBSCHED_JOB_TOKEN``) is killed before its end is reported, as the
  direct executor's spawner does; the session's own screen process ends by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from ..jobs import Job
from ..launch import LaunchError
from .base import Exit, Launch, OnExit, Started
from .environ import environ_value
from .local import LocalProcessExecutor
from .process import (
    find_by_token,
    kill_tree,
    open_log,
    process_start_time,
    same_process_alive,
    signal_process,
    wait_ended,
)

SCREEN_LAUNCHER = (
    'exit_file=$1 pid_file=$2 log=$3; shift 3; printf "%d\\n" "$$" > "$pid_file"; '
    '"$@" 2>&1 | tee -i -a -- "$log"; rc=${PIPESTATUS[0]}; '
    'printf "%d\\n" "$rc" > "$exit_file"; exit "$rc"'
)

#: Lines of scrollback in each session.
SCROLLBACK = 10_000
#: How long ``start`` waits for the wrapper to report its pid.
START_TIMEOUT_S = 30.0


def session_name(job_id: str) -> str:
    return f"nbsched-{job_id}"


def session_of(pid: int | None) -> str | None:
    """The full screen session name (``STY``) of the process ``pid``, if it has one."""
    return None if pid is None else environ_value(pid, "STY")


def live_session(job: Job) -> str | None:
    """The full session name of a job run by this executor, while its process lives
    (None once it has ended, or where the job never started)."""
    if job.pid is None or not same_process_alive(job.pid, job.proc_start):
        return None
    return session_of(job.pid)


class ScreenExecutor(LocalProcessExecutor):
    name = "screen"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self._sessions: dict[str, str] = {}

    def is_available(self) -> bool:
        return shutil.which("screen") is not None

    def _screen(self, env: Any = None) -> str:
        path = env.get("PATH") if env is not None else None
        exe = shutil.which("screen", path=path)
        if exe is None:
            raise LaunchError(
                "GNU screen is not installed (no 'screen' on PATH); install it "
                "(apt-get install screen) or use executor='direct'"
            )
        return exe

    def start(self, launch: Launch) -> Started:
        screen = self._screen(launch.env)
        os.close(open_log(launch.log_path))  # created 0600 before tee appends to it
        pid_path = launch.exit_path.with_suffix(".pid")
        session = session_name(launch.job.id)
        argv = [
            screen,
            "-c",
            os.devnull,
            "-h",
            str(SCROLLBACK),
            "-dmS",
            session,
            "bash",
            "-c",
            SCREEN_LAUNCHER,
            "nbsched-job",
            str(launch.exit_path),
            str(pid_path),
            str(launch.log_path),
            *launch.argv,
        ]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=launch.cwd,
                env=dict(launch.env),
                timeout=START_TIMEOUT_S,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise LaunchError(f"screen did not start session {session} in time") from None
        if done.returncode != 0:
            said = done.stdout.decode("utf-8", "replace").strip() or "no message"
            raise LaunchError(f"screen could not start session {session}: {said}")
        pid = self._wait_pid(pid_path, launch)
        sty = session_of(pid)
        if sty is not None and launch.job.token:
            self._sessions[launch.job.token] = sty
        return Started(pid=pid, proc_start=process_start_time(pid))

    def _wait_pid(self, pid_path: Path, launch: Launch) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        delay = 0.0005
        while True:
            try:
                text = pid_path.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text.isdigit():
                try:
                    pid_path.unlink()
                except OSError:
                    pass
                return int(text)
            if time.monotonic() > deadline:
                kill_tree(None, None, launch.job.token, 1.0)
                raise LaunchError(
                    f"the job's screen session did not start within {START_TIMEOUT_S:g} s"
                )
            time.sleep(delay)  # the wrapper writes its pid within milliseconds
            delay = min(delay * 2, 0.02)

    def watch(self, job: Job, on_exit: OnExit) -> None:
        sty = self._sessions.get(job.token or "") or session_of(job.pid) or session_name(job.id)

        def ended(j: Job, exit: Exit) -> None:
            self._sessions.pop(job.token or "", None)
            end_leftovers(job.token, sty)  # before its GPUs can go to another job
            if exit.code is None:
                exit = Exit(
                    None,
                    f"its screen session {sty} ended without recording an exit code "
                    f"(the session was killed or closed)",
                )
            on_exit(j, exit)

        super().watch(job, ended)

    def session(self, job: Job) -> str | None:
        """The full session name of a running job (``None`` if it is not running)."""
        if not same_process_alive(job.pid, job.proc_start):
            return None
        return self._sessions.get(job.token or "") or session_of(job.pid)

    def kill(self, job: Job, grace_s: float) -> None:
        sty = self.session(job)
        end_under_wrapper(job, grace_s)  # (so its wrapper records its real exit code)
        kill_tree(job.pid, job.proc_start, job.token, grace_s)
        if sty is not None:
            quit_session(sty)


def end_under_wrapper(job: Job, grace_s: float) -> None:
    """SIGTERM the job's processes but those of its session's frame (the wrapper,
    ``tee``, ``screen``), SIGKILL what is left after ``grace_s``, and give the wrapper a
    moment to record the job's exit code (a time limit's end keeps it, as the direct
    executor's does); :func:`kill_tree` then ends whatever is left."""
    if not job.token or job.pid is None or not same_process_alive(job.pid, job.proc_start):
        return

    def job_processes() -> list[psutil.Process]:
        found = []
        for proc in find_by_token(job.token or ""):
            try:
                if proc.pid != job.pid and proc.name() not in ("tee", "screen"):
                    found.append(proc)
            except psutil.Error:
                pass
        return found

    procs = job_processes()
    for proc in procs:
        signal_process(proc, signal.SIGTERM)
    for proc in wait_ended(procs, timeout=grace_s) + job_processes():
        signal_process(proc, signal.SIGKILL)
    try:
        wait_ended([psutil.Process(job.pid)], timeout=2.0)
    except psutil.Error:
        pass


def end_leftovers(token: str | None, sty: str | None) -> None:
    """SIGKILL the processes that carry ``token`` but the screen process of session
    ``sty`` (it ends by itself once its window's process has: killed, it would leave a
    dead session behind)."""
    if not token:
        return
    head = (sty or "").split(".", 1)[0]
    screen_pid = int(head) if head.isdigit() else None
    for proc in find_by_token(token):
        try:
            # (the session's own screen, also when its full name is not known)
            if proc.pid == screen_pid or proc.name().lower() == "screen":
                continue
            proc.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def quit_session(sty: str) -> None:
    """``screen -S sty -X quit``, if the session is still there."""
    exe = shutil.which("screen")
    if exe is None:
        return
    subprocess.run(
        [exe, "-S", sty, "-X", "quit"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=10,
        check=False,
    )


def list_sessions() -> list[str]:
    """The names of this user's screen sessions (``screen -ls``)."""
    exe = shutil.which("screen")
    if exe is None:
        return []
    out = subprocess.run(
        [exe, "-ls"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False
    ).stdout.decode("utf-8", "replace")
    names = []
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("\t") and parts and "." in parts[0]:
            names.append(parts[0])
    return names


__all__ = [
    "ScreenExecutor",
    "SCREEN_LAUNCHER",
    "list_sessions",
    "live_session",
    "quit_session",
    "session_of",
]
