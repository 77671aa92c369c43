"""Many attempts as one Slurm job array (a sweep's combinations: one ``sbatch`` for up to
:data:`MAX_TASKS` of them, instead of one each).

Attempts go in one array when sbatch would be given the same options for each: the same
GPU request, priority and folder.  What differs per attempt -- its argv, its log, its
exit record and the variables of its environment that are not the array's -- is written
to ``run/<token>.task`` (NUL-separated); the array's task list, ``run/<array>.tasks``,
names one token per line, and the array wrapper (:data:`ARRAY_WRAPPER`) of task ``i``
runs line ``i``'s attempt exactly as the one-job wrapper would, its output appended to
the job's own log.  Each attempt's Slurm id is ``ARRAYID_i``.

Before sbatch, ``run/<token>.array`` says which array and task an attempt is: an engine
that dies between sbatch and writing the ids is re-attached by the array's name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .base import Launch, Started
from .slurm_status import SlurmError, slurm

if TYPE_CHECKING:
    from .slurm import Prepared, SlurmExecutor

#: Tasks per array at most (Slurm's default ``MaxArraySize`` is 1001).
MAX_TASKS = 1000

ARRAY_WRAPPER = r"""#!/bin/bash
# nbsched: task $SLURM_ARRAY_TASK_ID of a job array runs the attempt its task list names.
mapfile -t tokens < "$1"
mapfile -d '' -t f < "${1%/*}/${tokens[$SLURM_ARRAY_TASK_ID]}.task"
exec >>"${f[0]}" 2>&1
exit_file=${f[1]}
n=${f[2]}
for kv in "${f[@]:3:n}"; do
  case $kv in *=*) export "$kv" ;; *) unset "$kv" ;; esac
done
"${f[@]:3+n}" </dev/null
rc=$?
printf '%d\n' "$rc" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"
exit "$rc"
"""


def start_arrays(ex: SlurmExecutor, launches: list[Launch]) -> list[Started | Exception]:
    """Start ``launches``, those alike as job arrays; per launch, how it went."""
    out: list[Started | Exception | None] = [None] * len(launches)
    groups: dict[tuple[object, ...], list[tuple[int, Prepared]]] = {}
    for i, launch in enumerate(launches):
        try:
            prepared = ex.prepare(launch)
        except Exception as exc:
            out[i] = exc
            continue
        key = (prepared.gres, launch.job.priority, launch.cwd)
        groups.setdefault(key, []).append((i, prepared))
    for items in groups.values():
        for k in range(0, len(items), MAX_TASKS):
            chunk = items[k : k + MAX_TASKS]
            if len(chunk) == 1:
                i, prepared = chunk[0]
                out[i] = _one(ex, prepared.launch)
                continue
            try:
                results: list[Started | Exception] = list(_array(ex, [p for _, p in chunk]))
            except Exception as exc:
                results = [exc] * len(chunk)
            for (i, _), result in zip(chunk, results, strict=True):
                out[i] = result
    return [r if r is not None else SlurmError("not submitted") for r in out]


def _one(ex: SlurmExecutor, launch: Launch) -> Started | Exception:
    try:
        return ex.start(launch)
    except Exception as exc:
        return exc


def _array(ex: SlurmExecutor, tasks: Sequence[Prepared]) -> list[Started]:
    """One sbatch for ``tasks``; their ids recorded."""
    run = ex.run_dir
    name = f"nbsched-array-{uuid.uuid4().hex[:12]}"
    wrapper = run / "slurm-array.sh"
    ex.write_script(wrapper, ARRAY_WRAPPER)
    shared = tasks[0].env
    for index, task in enumerate(tasks):
        env = [f"{k}={v}" for k, v in task.env.items() if shared.get(k) != v]
        env += [k for k in shared if k not in task.env]
        launch = task.launch
        fields = [str(launch.log_path), str(launch.exit_path), str(len(env)), *env, *task.argv]
        _write(run / f"{task.token}.task", b"".join(f.encode() + b"\0" for f in fields))
        _write(run / f"{task.token}.array", f"{name} {index}\n".encode())
    tasks_file = run / f"{name}.tasks"
    _write(tasks_file, "".join(f"{t.token}\n" for t in tasks).encode())
    cmd = ex.options(name, os.devnull, tasks[0], f"0-{len(tasks) - 1}")
    from .slurm import submitted_id

    try:
        sid = submitted_id(slurm([*cmd, str(wrapper), str(tasks_file)], env=shared))
    except Exception:
        for task in tasks:
            forget_files(run, task.token)
        tasks_file.unlink(missing_ok=True)
        raise
    for index, task in enumerate(tasks):
        ex.record_id(task.token, f"{sid}_{index}")
    return [Started(pid=None, proc_start=None) for _ in tasks]


def find_by_name(run: Path, user: str, single_name: str, token: str) -> str | None:
    """The Slurm id of an attempt whose id was not recorded (the engine died in between):
    its own job's name, or its array's and task's."""
    try:
        name, index = (run / f"{token}.array").read_text().split()[:2]
    except (OSError, ValueError):
        name, index = single_name, ""
    try:
        out = slurm(["squeue", "-h", "-r", "-t", "all", "-u", user, "-o", "%A|%i|%j"])
    except SlurmError:
        return None
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2] == name:
            return f"{parts[1].split('_')[0]}_{index}" if index else parts[0]
    return None


def forget_files(run: Path, token: str) -> None:
    """An attempt's files of the Slurm executor: its id, exit record, task and array."""
    for suffix in (".slurm", ".exit", ".task", ".array"):
        (run / f"{token}{suffix}").unlink(missing_ok=True)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


__all__ = ["ARRAY_WRAPPER", "MAX_TASKS", "find_by_name", "forget_files", "start_arrays"]
