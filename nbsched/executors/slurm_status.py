"""Asking Slurm: its commands, their text parsed, and how a Slurm job ended.

Every Slurm command runs through :func:`slurm` (argv, no shell, a timeout) and a failure
is a :class:`SlurmError` that says which command and what Slurm answered.

**How a job ended**, in this order (:func:`exit_of`):

1. ``sacct -P`` where accounting is on (``AccountingStorageType`` is not ``none``):
   ``ExitCode`` ``CODE:SIGNAL`` of the job's own line.  (``sacct --json`` of 22.05 says 0
   for a failed job: never used.)
2. ``scontrol show job`` while the job is within ``MinJobAge``: ``JobState`` and
   ``ExitCode``.
3. The record the job's wrapper wrote (``run/<token>.exit``, the code alone): the path
   that survives everything, also Slurm forgetting the job.

A job cancelled or timed out (``CANCELLED``, ``TIMEOUT``, ``NODE_FAIL``, ...) ends with
no exit code and the state as its reason, whatever its wrapper wrote: a signal killed it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import NbschedError
from .base import Exit
from .process import read_exit

#: Seconds a Slurm command may take before it counts as Slurm not answering.
TIMEOUT_S = 30.0
#: States in which a job has ended (``scontrol``/``squeue``/``sacct`` spelling).
ENDED = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)
#: Ended states whose exit code is the job's own (others: a signal or Slurm ended it).
CODE_STATES = frozenset({"COMPLETED", "FAILED"})


class SlurmError(NbschedError, RuntimeError):
    """A Slurm command failed or Slurm cannot be reached; the message says which."""


def slurm(argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: str = "") -> str:
    """Run a Slurm command; its standard output.  A missing command, a timeout or a
    non-zero exit raises :class:`SlurmError` with Slurm's own words."""
    exe = shutil.which(argv[0], path=(env or os.environ).get("PATH"))
    if exe is None:
        raise SlurmError(
            f"{argv[0]}: no such command: Slurm's client commands are not installed here "
            "(apt-get install slurm-client, or use another executor)"
        )
    try:
        done = subprocess.run(
            [exe, *argv[1:]],
            input=stdin.encode(),
            capture_output=True,
            env=None if env is None else dict(env),
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode("utf-8", "replace").strip() or "no message"
        raise SlurmError(f"{argv[0]} failed (exit {done.returncode}): {said[-500:]}")
    return done.stdout.decode("utf-8", "replace")


def fields(line: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol -o`` line (values run to the next key)."""
    out: dict[str, str] = {}
    for match in re.finditer(r"(?:^|\s)([A-Za-z:/_]+)=(\S*(?:\s(?![A-Za-z:/_]+=)\S+)*)", line):
        out.setdefault(match.group(1), match.group(2))
    return out


@dataclass(frozen=True)
class SlurmJob:
    """What ``scontrol show job`` says of one job."""

    job_id: str
    state: str
    reason: str
    exit_code: int | None
    signal: int | None
    user: str
    node: str | None
    start: float | None
    gres: str

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``"3:0"`` -> (3, 0)."""
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def parse_time(text: str) -> float | None:
    """Slurm's local ``2026-12-05T17:02:57`` as a Unix time; None for ``Unknown``."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_job(line: str) -> SlurmJob:
    """One ``scontrol -d -o show job`` line."""
    f = fields(line)
    code, sig = parse_exit_code(f.get("ExitCode", ""))
    node = f.get("NodeList") or None
    return SlurmJob(
        job_id=f.get("JobId", ""),
        state=f.get("JobState", "").split("+")[0],
        reason=f.get("Reason", "None"),
        exit_code=code,
        signal=sig,
        user=f.get("UserId", "").split("(")[0],
        node=None if node in (None, "(null)") else node,
        start=parse_time(f.get("StartTime", "")),
        gres=f.get("GRES", ""),
    )


def show_job(job_id: str) -> SlurmJob | None:
    """``scontrol -d -o show job ID``; None where Slurm no longer knows the job."""
    try:
        out = slurm(["scontrol", "-d", "-o", "show", "job", job_id])
    except SlurmError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    lines = [line for line in out.splitlines() if line.strip()]
    return parse_job(lines[0]) if lines else None


@dataclass(frozen=True)
class QueueRow:
    """One ``squeue`` row: a job and its state now."""

    job_id: str
    state: str
    reason: str
    start: float | None
    node: str | None
    user: str


#: Job id, state, reason, start, node, user, and the id as ``ARRAYID_TASK`` for a task of
#: an array (``-r``: one line per task, also pending ones).
SQUEUE_FORMAT = "%A|%T|%r|%S|%N|%u|%i"


def squeue(ids: Iterable[str] | None = None, user: str | None = None) -> dict[str, QueueRow]:
    """The jobs Slurm holds (all states, ended ones within ``MinJobAge``), by job id:
    those of ``ids`` (every one, with None) and of ``user``."""
    argv = ["squeue", "-h", "-r", "-t", "all", "-o", SQUEUE_FORMAT]
    if user is not None:
        argv += ["-u", user]
    wanted = None if ids is None else set(ids)
    rows: dict[str, QueueRow] = {}
    for line in slurm(argv).splitlines():
        parts = line.split("|")
        if len(parts) < 7:
            continue
        sid = parts[6] if "_" in parts[6] else parts[0]
        if wanted is not None and sid not in wanted:
            continue
        node = parts[4] or None
        rows[sid] = QueueRow(sid, parts[1], parts[2], parse_time(parts[3]), node, parts[5])
    return rows


def accounting_on() -> bool:
    """Whether ``sacct`` can answer (accounting storage is configured)."""
    out = slurm(["scontrol", "show", "config"])
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            return "none" not in value
    return False


def parse_sacct(text: str) -> dict[str, tuple[str, int | None, int | None]]:
    """``sacct -P -n -o JobID,State,ExitCode`` text: job id -> (state, code, signal),
    the job's own line only (not its ``.batch`` / ``.extern`` steps)."""
    out: dict[str, tuple[str, int | None, int | None]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or "." in parts[0]:
            continue
        code, sig = parse_exit_code(parts[2])
        out[parts[0]] = (parts[1].split()[0] if parts[1] else "", code, sig)
    return out


def sacct(ids: Sequence[str]) -> dict[str, tuple[str, int | None, int | None]]:
    """How the jobs ``ids`` ended, as accounting recorded it."""
    out = slurm(["sacct", "-P", "-n", "-X", "-o", "JobID,State,ExitCode", "-j", ",".join(ids)])
    return parse_sacct(out)


def state_exit(state: str, code: int | None, sig: int | None, job_id: str) -> Exit:
    """The :class:`Exit` of a Slurm job that ended in ``state`` with ``code:sig``."""
    if state in CODE_STATES and code is not None and not sig:
        return Exit(code)
    if state in CODE_STATES and sig:
        return Exit(None, f"Slurm job {job_id} was killed by signal {sig}")
    return Exit(None, f"Slurm job {job_id} ended {state}")


def exit_of(job_id: str, exit_path: Path, accounting: bool) -> Exit | None:
    """How Slurm job ``job_id`` ended (see the module doc); None while it has not."""
    if accounting:
        try:
            found = sacct([job_id]).get(job_id)
        except SlurmError:
            found = None
        if found is not None and found[0] in ENDED:
            return state_exit(found[0], found[1], found[2], job_id)
    info = show_job(job_id)
    if info is not None:
        if not info.ended:
            return None
        return state_exit(info.state, info.exit_code, info.signal, job_id)
    record = read_exit(exit_path)
    if record is not None:
        return Exit(record[0], at=record[1])
    return Exit(
        None,
        f"Slurm no longer knows job {job_id} (older than MinJobAge, no accounting) and "
        "its wrapper left no exit record",
    )


def pending_reason(state: str, reason: str) -> str:
    """Slurm's reason a job waits, in words."""
    words = {
        "Resources": "the GPUs (or CPUs) it asks for are in use",
        "Priority": "jobs of higher priority are ahead of it",
        "Dependency": "it waits for a job it depends on",
        "DependencyNeverSatisfied": "a job it depends on failed: it will never start",
        "QOSMaxGRESPerUser": "its user's GPU limit (QOS) is reached",
        "ReqNodeNotAvail": "the node it needs is not available",
        "PartitionDown": "its partition is down",
        "BeginTime": "its start time has not come",
    }
    said = words.get(reason)
    return f"pending in Slurm: {reason}" + (f" ({said})" if said else "")


# -- the GPUs Slurm gave ------------------------------------------------------------------


def parse_idx(text: str) -> list[int]:
    """``"0-1,3"`` -> [0, 1, 3]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out.extend(range(int(lo), int(hi) + 1 if hi.isdigit() else int(lo) + 1))
    return out


def parse_gres_used(text: str) -> list[tuple[str, int, list[int]]]:
    """A job's ``GRES=`` detail: (kind, count, device indices) for gpu and shard."""
    out = []
    for match in re.finditer(r"(gpu|shard)(?::[^:(,]+)?:(\d+)\(IDX:([^)]*)\)", text):
        out.append((match.group(1), int(match.group(2)), parse_idx(match.group(3))))
    return out


def node_gres(text: str) -> dict[str, int]:
    """A node's ``Gres=gpu:4,shard:16`` -> {"gpu": 4, "shard": 16}."""
    counts: dict[str, int] = {}
    for item in text.split(","):
        parts = item.split("(")[0].split(":")
        if len(parts) >= 2 and parts[-1].isdigit():
            counts[parts[0]] = counts.get(parts[0], 0) + int(parts[-1])
    return counts


#: :func:`job_gres` asks for each job alone up to this many jobs, then for all at once.
GRES_ONE_BY_ONE = 8


def job_gres(ids: Sequence[str]) -> dict[str, str]:
    """The ``GRES=`` detail (``gpu:2(IDX:0-1)``) of each job of ``ids`` that Slurm still
    knows (``ARRAYID_TASK`` for an array's task): ``scontrol -d -o show job`` of each,
    or, for many, one of every job."""
    wanted = set(ids)
    if not wanted:
        return {}
    if len(wanted) <= GRES_ONE_BY_ONE:
        lines = []
        for sid in sorted(wanted):
            try:
                lines += slurm(["scontrol", "-d", "-o", "show", "job", sid]).splitlines()
            except SlurmError as exc:
                if "Invalid job id" not in str(exc):
                    raise
    else:
        lines = slurm(["scontrol", "-d", "-o", "show", "job"]).splitlines()
    out: dict[str, str] = {}
    for line in lines:
        f = fields(line)
        task = f.get("ArrayTaskId", "")
        sid = f"{f.get('ArrayJobId')}_{task}" if task.isdigit() else f.get("JobId", "")
        if sid in wanted:
            out[sid] = f.get("GRES", "")
    return out


__all__ = [
    "ENDED",
    "QueueRow",
    "SlurmError",
    "SlurmJob",
    "accounting_on",
    "exit_of",
    "fields",
    "parse_job",
    "parse_sacct",
    "pending_reason",
    "sacct",
    "job_gres",
    "node_gres",
    "parse_gres_used",
    "parse_idx",
    "show_job",
    "slurm",
    "squeue",
    "state_exit",
]
