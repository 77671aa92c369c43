"""Shared tools of the reliability tests: engine processes, marker jobs, checks.

Every job these tests run is a bash command that appends ``start ID TIME GPUS`` and
``end ID TIME`` lines to a marker file, so a test can check from the outside that
each job started exactly once and that no GPU held more than it can.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from waiting import wait_for  # noqa: F401  (re-exported)

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")

#: Set in the environment of every engine a test starts (and so of every job it runs),
#: so that the fixture can end whatever is left, and only that.
RUN_TAG = "NBSCHED_RELTEST_RUN"


def job_command(
    markers: Path,
    code: int = 0,
    gate: Path | None = None,
    sleep: float | None = None,
) -> str:
    """A bash job that records its start and end in ``markers`` and exits with ``code``."""
    m = shlex.quote(str(markers))
    parts = [f'echo "start $NBSCHED_JOB_ID $EPOCHREALTIME $CUDA_VISIBLE_DEVICES" >> {m}']
    if gate is not None:
        parts.append(f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.03; done")
    if sleep:
        parts.append(f"sleep {sleep}")
    parts.append(f'echo "end $NBSCHED_JOB_ID $EPOCHREALTIME" >> {m}')
    parts.append(f"exit {code}")
    return "; ".join(parts)


@dataclass
class Interval:
    job: str
    start: float
    end: float | None
    gpus: tuple[int, ...]


def read_markers(markers: Path) -> tuple[dict[str, int], dict[str, int], list[Interval]]:
    """(starts per job, ends per job, [intervals]) from a marker file."""
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    open_: dict[str, Interval] = {}
    out: list[Interval] = []
    if not markers.exists():
        return starts, ends, out
    for line in markers.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "start":
            jid, t = parts[1], float(parts[2])
            gpus = tuple(int(g) for g in parts[3].split(",")) if len(parts) > 3 else ()
            starts[jid] = starts.get(jid, 0) + 1
            iv = Interval(jid, t, None, gpus)
            open_[jid] = iv
            out.append(iv)
        elif parts[0] == "end":
            jid, t = parts[1], float(parts[2])
            ends[jid] = ends.get(jid, 0) + 1
            if jid in open_:
                open_.pop(jid).end = t
    return starts, ends, out


def overbooked(intervals: Iterable[Interval], need: dict[str, float]) -> list[str]:
    """Moments where some GPU held more than 1 GPU's worth of jobs (an empty list: none).

    A job's share of each of its GPUs is ``need[job]`` if it is a fraction, else 1.
    """
    events: list[tuple[float, int, int, float, str]] = []
    for iv in intervals:
        end = iv.end if iv.end is not None else float("inf")
        share = need[iv.job] if need[iv.job] < 1 else 1.0
        for g in iv.gpus:
            events.append((iv.start, 1, g, share, iv.job))
            events.append((end, 0, g, -share, iv.job))
    events.sort()  # at equal times, ends (0) before starts (1)
    load: dict[int, float] = {}
    holders: dict[int, set[str]] = {}
    bad = []
    for t, _, g, delta, job in events:
        load[g] = load.get(g, 0.0) + delta
        h = holders.setdefault(g, set())
        (h.add if delta > 0 else h.discard)(job)
        if load[g] > 1.0 + 1e-6:
            bad.append(f"GPU {g} at {t:.3f}: {sorted(h)} ({load[g]:.2f})")
    return bad


@dataclass
class Engine:
    """One driver process, in a session of its own."""

    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def event(self, name: str, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev.get("event") == name:
                        return ev
                if self.proc.poll() is not None and not self._cond.wait(0.2):
                    raise AssertionError(
                        f"engine exited ({self.proc.returncode}) before {name!r}:\n"
                        + "".join(self.stderr[-40:])
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {name!r} from the engine after {timeout}s:\n"
                        + "".join(self.stderr[-40:])
                    )
                self._cond.wait(min(left, 0.2))

    def kill_group(self) -> None:
        """``kill -9`` of the engine's whole process group, as Jupyter restarting a kernel."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def wait_exit(self, timeout: float = 120.0) -> int:
        return self.proc.wait(timeout=timeout)


class Engines:
    """Starts driver processes for one test; ends them and their jobs afterwards."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tag = uuid.uuid4().hex
        self.started: list[Engine] = []
        self._n = 0

    def start(self, cfg: dict[str, Any], env: dict[str, str] | None = None) -> Engine:
        self._n += 1
        path = self.tmp / f"engine{self._n}.json"
        path.write_text(json.dumps(cfg))
        full_env = dict(os.environ)
        full_env.update(
            {
                "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                RUN_TAG: self.tag,
            }
        )
        full_env.pop("NBSCHED_TEST_CRASH_AT", None)
        full_env.update(env or {})
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        eng = Engine(proc)
        self.started.append(eng)
        return eng

    def cleanup(self) -> None:
        for eng in self.started:
            if eng.proc.poll() is None:
                eng.kill_group()
        kill_tagged(self.tag)


def processes_with_env(needle: str) -> list[int]:
    """Pids of live (non-zombie) processes whose environment holds ``needle`` (NAME=VALUE)."""
    want = needle.encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                data = fh.read()
            if want in data.split(b"\0") and psutil.Process(pid).status() != "zombie":
                found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found


def kill_tagged(tag: str) -> None:
    for pid in processes_with_env(f"{RUN_TAG}={tag}"):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
