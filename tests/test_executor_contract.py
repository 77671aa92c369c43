"""The Executor protocol's contract, run against every executor that can run here.

To add an executor, add one line to ``EXECUTORS``: a name and a function that builds
it from a :class:`SchedulerConfig` whose state directory is prepared.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from waiting import wait_for

from nbsched.config import SchedulerConfig
from nbsched.executors.base import Executor, Exit, Launch
from nbsched.executors.direct import DirectExecutor
from nbsched.executors.screen import ScreenExecutor
from nbsched.jobs import Job, JobSpec, JobStatus
from nbsched.launch import build_argv, build_env
from nbsched.store import prepare_state_dir

EXECUTORS: dict[str, Callable[[SchedulerConfig], Executor]] = {
    "direct": lambda config: DirectExecutor(config.run_dir),
    "screen": lambda config: ScreenExecutor(config.run_dir),
}

TIMEOUT = 60.0
_ids = itertools.count(1)


class Recorder:
    """An ``on_exit`` callback that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Job, Exit]] = []
        self._event = threading.Event()

    def __call__(self, job: Job, exit: Exit) -> None:
        self.calls.append((job, exit))
        self._event.set()

    def wait(self, timeout: float = TIMEOUT) -> Exit:
        """The first end reported, without its time: that, where the executor gives
        one, must lie between the job's start and now."""
        assert self._event.wait(timeout), "on_exit was not called"
        job, exit = self.calls[0]
        if exit.at is not None:
            assert (job.started or 0.0) - 1.0 <= exit.at <= time.time(), exit
        return Exit(exit.code, exit.reason)


class Harness:
    """Builds launches the way the dispatcher does, and executors of one kind."""

    def __init__(self, name: str, config: SchedulerConfig) -> None:
        self.name = name
        self.config = config
        self.made: list[Executor] = []

    def executor(self) -> Executor:
        ex = EXECUTORS[self.name](self.config)
        self.made.append(ex)
        return ex

    def launch(
        self,
        *,
        command: str | None = None,
        script: str | None = None,
        args: tuple[str, ...] = (),
        gpus: tuple[int, ...] = (1,),
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Launch:
        seq = next(_ids)
        spec = JobSpec(
            kind="command" if command is not None else "script",
            command=command,
            script=script,
            args=args,
            required_gpus=0.5 if len(gpus) == 1 else float(len(gpus)),
            cwd=cwd or os.getcwd(),
            env=env or {},
        )
        token = uuid.uuid4().hex
        job = Job(
            id=str(seq),
            seq=seq,
            status=JobStatus.RUNNING,
            spec=spec,
            submitted=time.time(),
            started=time.time(),
            attempts=1,
            gpus=gpus,
            token=token,
            executor=self.name,
            log_path=str(self.config.logs_dir / f"{seq}.log"),
        )
        base = dict(os.environ)
        return Launch(
            job=job,
            gpus=gpus,
            argv=build_argv(job, gpus, base),
            env=build_env(job, gpus, token, self.config.state_dir / f"{seq}.json", base),
            cwd=spec.cwd,
            log_path=self.config.logs_dir / f"{seq}.log",
            exit_path=self.config.run_dir / f"{token}.exit",
        )

    def run(self, ex: Executor, launch: Launch) -> tuple[Job, Recorder]:
        """Start and watch, as the dispatcher does; returns the job as recorded."""
        started = ex.start(launch)
        job = replace(launch.job, pid=started.pid, proc_start=started.proc_start, node=started.node)
        rec = Recorder()
        ex.watch(job, rec)
        return job, rec


@pytest.fixture(params=sorted(EXECUTORS))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    config = SchedulerConfig(state_dir=tmp_path / "state", gpu_provider="simulated", num_gpus=4)
    prepare_state_dir(config.state_dir)
    h = Harness(request.param, config)
    yield h
    for ex in h.made:
        ex.close()


def token_alive(token: str) -> list[int]:
    needle = f"NBSCHED_JOB_TOKEN={token}".encode()
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle not in fh.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        out.append(int(pid))
    return out


class TestExecutorContract:
    def test_is_available_and_named(self, harness: Harness) -> None:
        ex = harness.executor()
        assert ex.is_available() is True
        assert ex.name == harness.name

    def test_subclasses_the_protocol(self, harness: Harness) -> None:
        # Explicitly: it inherits the protocol's defaults for what it does not do.
        assert Executor in type(harness.executor()).__mro__

    def test_close_twice_is_harmless(self, harness: Harness) -> None:
        ex = harness.executor()
        ex.close()
        ex.close()

    @pytest.mark.parametrize("code", [0, 3, 255])
    def test_exit_code_reported_once(self, harness: Harness, code: int) -> None:
        ex = harness.executor()
        job, rec = harness.run(ex, harness.launch(command=f"exit {code}"))
        assert rec.wait() == Exit(code)
        assert rec.calls[0][0].id == job.id
        ex.close()
        assert len(rec.calls) == 1

    def test_log_gets_stdout_and_stderr(self, harness: Harness) -> None:
        ex = harness.executor()
        launch = harness.launch(command="echo out; echo err >&2; printf 'no newline'")
        _, rec = harness.run(ex, launch)
        rec.wait()
        assert launch.log_path.read_text() == "out\nerr\nno newline"
        assert launch.log_path.stat().st_mode & 0o777 == 0o600

    def test_environment_and_cwd(self, harness: Harness, tmp_path: Path) -> None:
        ex = harness.executor()
        launch = harness.launch(
            command='echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER $NBSCHED_JOB_ID $X $PWD"',
            gpus=(2, 3),
            cwd=str(tmp_path),
            env={"X": "from-spec"},
        )
        _, rec = harness.run(ex, launch)
        assert rec.wait() == Exit(0)
        expected = f"2,3 PCI_BUS_ID {launch.job.id} from-spec {tmp_path}\n"
        assert launch.log_path.read_text() == expected

    def test_argv_byte_identical(self, harness: Harness, tmp_path: Path) -> None:
        script = tmp_path / "dump.py"
        out = tmp_path / "argv.json"
        script.write_text(
            f"import json, sys\nopen({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        )
        args = ("it's", '"q"', "a; b", "$(id)", "`id`", " sp ace ", "new\nline", "ü🚀", "", "*")
        ex = harness.executor()
        _, rec = harness.run(ex, harness.launch(script=str(script), args=args))
        assert rec.wait() == Exit(0)
        assert tuple(json.loads(out.read_text())) == args

    def test_start_failure_raises(self, harness: Harness, tmp_path: Path) -> None:
        ex = harness.executor()
        launch = harness.launch(command="true", cwd=str(tmp_path / "missing"))
        with pytest.raises(Exception) as info:
            ex.start(launch)
        assert "missing" in str(info.value) or "No such file" in str(info.value)
        # and the executor still works afterwards
        _, rec = harness.run(ex, harness.launch(command="exit 0"))
        assert rec.wait() == Exit(0)

    def test_kill_ends_the_whole_tree(self, harness: Harness, tmp_path: Path) -> None:
        ready = tmp_path / "ready"
        cmd = (
            "setsid sleep 311 & sleep 312 & ( setsid bash -c 'sleep 313 & wait' & ) ; "
            f"bash -c 'trap \"\" TERM; exec sleep 314' & touch {ready}; wait"
        )
        ex = harness.executor()
        job, rec = harness.run(ex, harness.launch(command=cmd))
        token = job.token
        assert token is not None
        wait_for(ready.exists, "the job's children")
        wait_for(lambda: len(token_alive(token)) >= 6, "all the job's processes")
        ex.kill(job, 0.3)
        assert token_alive(token) == []
        exit = rec.wait()
        assert exit.code != 0  # killed: never reported as a success
        ex.close()
        assert len(rec.calls) == 1

    def test_kill_of_an_ended_job_is_harmless(self, harness: Harness) -> None:
        ex = harness.executor()
        job, rec = harness.run(ex, harness.launch(command="exit 0"))
        assert rec.wait() == Exit(0)
        ex.kill(job, 0.1)
        assert len(rec.calls) == 1

    def test_watch_adopts_a_job_that_already_ended(self, harness: Harness) -> None:
        """What recovery after an engine restart relies on: a new executor instance is
        told of a job whose process ended while nobody watched it."""
        first = harness.executor()
        launch = harness.launch(command="exit 7")
        started = first.start(launch)
        job = replace(launch.job, pid=started.pid, proc_start=started.proc_start)
        first.close()  # (its engine is gone: the exit code is then kept on disk)
        wait_for(launch.exit_path.exists, "the job to end")
        second = harness.executor()
        rec = Recorder()
        second.watch(job, rec)
        assert rec.wait() == Exit(7)

    def test_watch_adopts_a_running_job(self, harness: Harness, tmp_path: Path) -> None:
        go = tmp_path / "go"
        first = harness.executor()
        launch = harness.launch(command=f"while [ ! -e {go} ]; do sleep 0.01; done; exit 5")
        started = first.start(launch)
        job = replace(launch.job, pid=started.pid, proc_start=started.proc_start)
        second = harness.executor()
        rec = Recorder()
        second.watch(job, rec)
        assert rec.calls == []  # still running
        go.touch()
        assert rec.wait() == Exit(5)

    def test_many_jobs_each_reported_once(self, harness: Harness) -> None:
        ex = harness.executor()
        runs = [harness.run(ex, harness.launch(command=f"exit {i % 4}")) for i in range(12)]
        for i, (_, rec) in enumerate(runs):
            assert rec.wait() == Exit(i % 4)
        ex.close()
        assert all(len(rec.calls) == 1 for _, rec in runs)


def test_every_listed_executor_is_parametrised() -> None:
    assert "direct" in EXECUTORS
    assert sys.platform.startswith("linux")  # the process-tree checks read /proc
