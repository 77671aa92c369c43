"""Many attempts as one Slurm job array (a sweep's combinations: one ``sbatch`` for up to
:data:`MAX_TASKS` of them, instead of one each).

Attempts go in one array when sbatch would be given the same options for each: the same
GPU request, priority, folder and time limit.  What differs per attempt -- its argv, its log, its
exit record and the variables of its environment that are not the array's -- goes into
the array's task list ``run/<array>.tasks``: per task, its token and then a count and
that many NUL-separated fields.  The array wrapper (:data:`ARRAY_WRAPPER`) of task ``i``
runs the ``i``-th attempt exactly as the one-job wrapper would, its output appended to
the job's own log (created 0600 by the wrapper).  Each attempt's Slurm id is
``ARRAYID_i``; the array's id is written to ``run/<array>.id`` once sbatch answered.

Two files per array, none per attempt: on this machine a file's creation costs ~1 ms,
which for 1,000 attempts would be seconds.  :func:`array_ids` reads them back (an
attempt's Slurm id for ``why()``, for re-attachment); an engine that died between
sbatch and writing ``.id`` finds the array by its name (the task list's).
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
mapfile -d '' -t f < "$1"
pos=0
for ((i = 0; i < SLURM_ARRAY_TASK_ID; i++)); do pos=$((pos + 2 + f[pos + 1])); done
umask 077
exec >>"${f[pos + 2]}" 2>&1
exit_file=${f[pos + 3]}
n=${f[pos + 4]}
for kv in "${f[@]:pos + 5:n}"; do
  case $kv in *=*) export "$kv" ;; *) unset "$kv" ;; esac
done
"${f[@]:pos + 5 + n:f[pos + 1] - 3 - n}" </dev/null
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
        key = (prepared.gres, launch.job.priority, launch.cwd, launch.job.spec.time_limit)
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
    records = []
    for task in tasks:
        env = [f"{k}={v}" for k, v in task.env.items() if shared.get(k) != v]
        env += [k for k in shared if k not in task.env]
        launch = task.launch
        fields = [str(launch.log_path), str(launch.exit_path), str(len(env)), *env, *task.argv]
        records += [task.token, str(len(fields)), *fields]
    tasks_file = run / f"{name}.tasks"
    _write(tasks_file, b"".join(f.encode() + b"\0" for f in records))
    cmd = ex.options(name, os.devnull, tasks[0], f"0-{len(tasks) - 1}")
    from .slurm import submitted_id

    try:
        sid = submitted_id(slurm([*cmd, str(wrapper), str(tasks_file)], env=shared))
    except Exception:
        tasks_file.unlink(missing_ok=True)
        raise
    _write(run / f"{name}.id", f"{sid}\n".encode())
    ex.learn_ids({task.token: f"{sid}_{index}" for index, task in enumerate(tasks)}, name)
    return [Started(pid=None, proc_start=None) for _ in tasks]


def read_tasks(path: Path) -> list[str]:
    """The tokens of a task list, in task order."""
    fields = path.read_bytes().split(b"\0")
    tokens, pos = [], 0
    while pos + 1 < len(fields):
        tokens.append(fields[pos].decode())
        pos += 2 + int(fields[pos + 1])
    return tokens


_INDEX: dict[Path, tuple[float, dict[str, tuple[str, int]]]] = {}


def array_of(run: Path, token: str) -> tuple[str, int] | None:
    """(array name, task index) of an attempt submitted in an array, from the task lists
    (read again only when the run folder changed)."""
    try:
        stamp = run.stat().st_mtime
    except OSError:
        return None
    seen = _INDEX.get(run)
    if seen is None or seen[0] != stamp:
        index: dict[str, tuple[str, int]] = {}
        for path in run.glob("nbsched-array-*.tasks"):
            try:
                tokens = read_tasks(path)
            except (OSError, ValueError, IndexError):
                continue
            name = path.name[: -len(".tasks")]
            index.update((t, (name, i)) for i, t in enumerate(tokens))
        seen = _INDEX[run] = (stamp, index)
    return seen[1].get(token)


def array_id(run: Path, token: str) -> str | None:
    """``ARRAYID_i`` of an attempt submitted in an array whose id was recorded."""
    found = array_of(run, token)
    if found is None:
        return None
    try:
        sid = (run / f"{found[0]}.id").read_text().strip()
    except OSError:
        return None
    return f"{sid}_{found[1]}" if sid else None


def find_by_name(
    run: Path, user: str, single_name: str, token: str, strict: bool = False
) -> str | None:
    """The Slurm id of an attempt whose id was not recorded (the engine died in between):
    its own job's name, or its array's and task's.  Slurm not answering: None, or
    (``strict``) the :class:`SlurmError`."""
    found = array_of(run, token)
    name, index = (found[0], str(found[1])) if found else (single_name, "")
    try:
        out = slurm(["squeue", "-h", "-r", "-t", "all", "-u", user, "-o", "%A|%i|%j"])
    except SlurmError:
        if strict:
            raise
        return None
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2] == name:
            return f"{parts[1].split('_')[0]}_{index}" if index else parts[0]
    return None


def forget_files(run: Path, token: str) -> None:
    """An attempt's own files: its id (a single job's) and its exit record."""
    for suffix in (".slurm", ".exit"):
        (run / f"{token}{suffix}").unlink(missing_ok=True)


def forget_array(run: Path, name: str) -> None:
    """An array's files, once every attempt of it has ended."""
    for suffix in (".tasks", ".id"):
        (run / f"{name}{suffix}").unlink(missing_ok=True)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


__all__ = [
    "ARRAY_WRAPPER",
    "MAX_TASKS",
    "array_id",
    "find_by_name",
    "forget_array",
    "forget_files",
    "start_arrays",
]
