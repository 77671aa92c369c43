"""Turning a job into the argv and environment of one attempt.

* a ``.py`` script runs as ``python -u script args`` (the Python running nbsched,
  or ``python`` inside the job's conda environment); a ``.sh`` script as
  ``bash script args``; any other executable file directly;
* a ``.ipynb`` script is a notebook, run by papermill with its arguments as its
  parameters (:mod:`nbsched.pipeline.notebooks`);
* a command job runs as ``bash -c command``;
* ``conda_env`` wraps it in ``conda run --no-capture-output -n ENV``;
* ``launcher="torchrun"`` runs ``torchrun --standalone --nproc-per-node=N script args``;
* ``gpu_arg="--cuda"`` appends the job's *local* GPU indices (0..n-1), which is
  what ``CUDA_VISIBLE_DEVICES`` makes them inside the job.

The environment is the submitter's (:func:`capture_env`, at submission: stored once per
distinct environment, without the variables whose names look secret, which the engine
that starts the job gives instead: :func:`submitter_env`) or, with
``env_policy="engine"`` or for a job stored without one, the engine's; plus the job's
own ``env``, plus
``CUDA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, ``NBSCHED_JOB_ID``,
``NBSCHED_JOB_TOKEN``, ``NBSCHED_RESULT_FILE`` and ``PYTHONUNBUFFERED=1``.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import NotSupportedError
from .jobs import Job
from .logtail import last_line
from .pipeline.notebooks import is_notebook, notebook_argv

LAUNCHERS = (None, "torchrun")


class LaunchError(RuntimeError):
    """The job cannot be started as asked (missing conda, missing env, ...)."""


def find_conda(environ: Mapping[str, str] | None = None) -> str | None:
    """The conda executable: ``$CONDA_EXE`` if it exists, else ``conda`` on ``PATH``."""
    env = os.environ if environ is None else environ
    exe = env.get("CONDA_EXE")
    if exe and os.path.isfile(exe) and os.access(exe, os.X_OK):
        return exe
    return shutil.which("conda", path=env.get("PATH"))


def build_argv(job: Job, gpus: tuple[int, ...], environ: Mapping[str, str]) -> tuple[str, ...]:
    spec = job.spec
    local_ids = ",".join(str(i) for i in range(len(gpus)))
    if spec.kind == "command":
        # ("--": a command that starts with "-" is the command, not bash's options)
        argv: list[str] = ["bash", "-c", "--", spec.command or ""]
    else:
        script = spec.script or ""
        args = list(spec.args)
        if spec.gpu_arg:
            args += [spec.gpu_arg, local_ids]
        if spec.launcher == "torchrun":
            argv = ["torchrun", "--standalone", f"--nproc-per-node={max(1, len(gpus))}"]
            argv += [script, *args]
        elif is_notebook(script):
            argv = notebook_argv(sys.executable, script, args, spec.kernel, job.log_path)
        elif script.endswith(".py"):
            python = "python" if spec.conda_env else sys.executable
            argv = [python, "-u", script, *args]
        elif script.endswith(".sh"):
            argv = ["bash", script, *args]
        else:
            argv = [script, *args]
    if spec.conda_env:
        conda = find_conda(environ)
        if conda is None:
            raise LaunchError(
                f"conda_env={spec.conda_env!r}: no conda found (neither $CONDA_EXE nor "
                f"'conda' on PATH)"
            )
        argv = [conda, "run", "--no-capture-output", "-n", spec.conda_env, *argv]
    return tuple(argv)


#: What ``conda run`` prints when the environment does not exist (conda 4.x to 24.x).
_CONDA_NO_ENV = (
    "EnvironmentLocationNotFound",
    "EnvironmentNameNotFound",
    "Could not find conda environment",
    "Not a conda environment",
)


def conda_failure(job: Job, log_path: str | os.PathLike[str] | None) -> str | None:
    """Why a failed conda job failed, if conda said its environment does not exist.

    Reads the end of the job's log (where ``conda run`` writes its error).
    """
    if not job.spec.conda_env:
        return None
    line = last_line(log_path, lambda text: any(m in text for m in _CONDA_NO_ENV), 4096)
    if line is None:
        return None
    return f"conda environment {job.spec.conda_env!r} not found ({line.strip()})"


def build_env(
    job: Job,
    gpus: tuple[int, ...],
    token: str,
    result_file: str | os.PathLike[str],
    base: Mapping[str, str],
) -> dict[str, str]:
    env = dict(base)
    env.update(job.spec.env)
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "NBSCHED_JOB_ID": job.id,
            "NBSCHED_JOB_TOKEN": token,
            "NBSCHED_RESULT_FILE": str(result_file),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass(frozen=True)
class SubmitterEnv:
    """A submitter's environment as stored: ``text``, JSON of ``{"vars": {name: value},
    "withheld": [name, ...]}`` (the variables kept, and the names of those left out as
    secret-looking), and ``key``, its hash, under which it is stored once however many
    jobs start from it."""

    key: str
    text: str


def capture_env(exclude: Sequence[str], environ: Mapping[str, str] | None = None) -> SubmitterEnv:
    """This process's environment (or ``environ``) as its jobs will start from it,
    without the variables whose names match one of ``exclude`` (shell wildcards, case
    ignored).  Called once per submission, not per job: a sweep's jobs share it.

    This process's own is captured again only when it changed since the last call
    (compared as the raw bytes ``os.environ`` keeps, a plain ``dict`` comparison): an
    ``add_command`` in a loop must not encode and hash the whole environment each time.
    """
    raw = getattr(os.environ, "_data", None) if environ is None else None
    if isinstance(raw, dict):
        last = _LAST_CAPTURE.get(tuple(exclude))
        if last is not None and last[0] == raw:
            return last[1]
        snapshot = dict(raw)
        found = _capture(exclude, os.environ)
        _LAST_CAPTURE[tuple(exclude)] = (snapshot, found)
        return found
    return _capture(exclude, os.environ if environ is None else environ)


#: exclude patterns -> (the raw environment last captured, what it gave); a few entries
_LAST_CAPTURE: dict[tuple[str, ...], tuple[dict[bytes, bytes], SubmitterEnv]] = {}


def _capture(exclude: Sequence[str], environ: Mapping[str, str]) -> SubmitterEnv:
    env = dict(environ)
    secret = _matcher(tuple(exclude))
    withheld = sorted(k for k in env if secret(k))
    for name in withheld:
        del env[name]
    # (ASCII JSON: a value os.environ decoded with surrogate escapes survives SQLite)
    text = json.dumps({"vars": env, "withheld": withheld}, sort_keys=True)
    return SubmitterEnv(hashlib.sha256(text.encode()).hexdigest()[:32], text)


@functools.lru_cache(maxsize=16)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a variable name matches one of ``patterns``, ignoring case; each name's
    answer kept (the same few dozen names come at each submission: matching them all
    again was most of an ``add_command``'s time)."""
    regex = re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)", re.I)
    known: dict[str, bool] = {}

    def secret(name: str) -> bool:
        found = known.get(name)
        if found is None:
            if len(known) > 4096:
                known.clear()
            found = known[name] = regex.match(name) is not None
        return found

    return secret


def submitter_env(text: str, engine: Mapping[str, str]) -> dict[str, str]:
    """The environment a job starts from, from its stored :class:`SubmitterEnv` text:
    the submitter's variables, and those it withheld as the ``engine``'s (that starts
    the job) where it has them, as jobs had before they had their submitter's."""
    stored = json.loads(text)
    env: dict[str, str] = dict(stored["vars"])
    for name in stored["withheld"]:
        if name in engine:
            env[name] = engine[name]
    return env


def check_launcher(launcher: object) -> str | None:
    if launcher not in LAUNCHERS:
        raise NotSupportedError(f"launcher={launcher!r}: accepted values are None, 'torchrun'")
    return launcher if isinstance(launcher, str) else None
