"""Notebooks as jobs: a job whose script is a ``.ipynb`` file is the notebook run by
papermill, with its parameters, on the job's GPUs.

Such a job is a script job like any other (so sweeps, the jobs file, retries and every
executor take it as they are): its arguments are its parameters as ``--name value``
pairs (what :func:`params_to_args` makes of ``params={"lr": 0.1}``, and what the sweep
grammar names ``lr`` in ``--lr {0.1,0.01}``), and it runs as
``python -m nbsched.pipeline.notebook_run`` (:func:`notebook_argv`), which executes
the notebook and saves the executed copy beside the job's log (:func:`output_path`).

A value is written as papermill's command line takes ``-p``: ``0.1`` is a float,
``3`` an int, ``True``/``False``/``None`` those, ``[..]``/``{..}`` JSON, anything else
a string (a string that would read as something else is written as JSON, in quotes).

When a cell raises, the runner's last line in the log says which cell and what
(:data:`FAILED`); the engine puts it in the job's reason (:func:`failure_detail`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidTypeError, InvalidValueError, NotSupportedError
from ..logtail import last_line

#: The suffix that makes a script a notebook job.
SUFFIX = ".ipynb"
#: The module a notebook job runs as (``python -m``).
RUNNER = "nbsched.pipeline.notebook_run"
#: How the runner's line about a failed notebook starts (the rest is the reason).
FAILED = "nbsched: notebook failed: "
#: What starts each later attempt's part of a log (:mod:`nbsched.dispatcher.starts`).
_ATTEMPT = "--- nbsched: attempt "
INSTALL = "pip install 'nbsched[notebooks]' (or: pip install papermill ipykernel)"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_INT = re.compile(r"[-+]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?", re.ASCII)
_WORDS: dict[str, Any] = {
    "True": True, "true": True, "False": False, "false": False, "None": None, "null": None,
}  # fmt: skip


def is_notebook(script: str | None) -> bool:
    """Whether a script job's script is a notebook."""
    return bool(script) and str(script).endswith(SUFFIX)


def decode_value(text: str) -> Any:
    """A parameter's value from its text (see the module: papermill's ``-p`` rules)."""
    if text in _WORDS:
        return _WORDS[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text[:1] in ('"', "[", "{"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def encode_value(name: str, value: Any) -> str:
    """A parameter's value as text that :func:`decode_value` reads back as ``value``."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value if decode_value(value) == value else json.dumps(value)
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidValueError(
                f"params[{name!r}]={value!r}: a list or dict parameter must be JSON ({exc})"
            ) from None
    raise InvalidTypeError(
        f"params[{name!r}]={value!r}: a notebook parameter is a number, string, bool, None, "
        f"or a list or dict of those (got {type(value).__name__})"
    )


def check_name(name: object) -> str:
    """A parameter name: a Python identifier (the notebook's variable)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidValueError(
            f"notebook parameter {name!r}: a name is a Python variable name "
            "(letters, digits, _; not starting with a digit)"
        )
    return name


def params_to_args(params: Mapping[str, Any] | None) -> tuple[str, ...]:
    """A notebook job's arguments: ``--name value`` for each parameter, in order."""
    if params is None:
        return ()
    if not isinstance(params, Mapping):
        raise InvalidTypeError(f"params={params!r}: expected a dict of parameter names to values")
    args: list[str] = []
    for name, value in params.items():
        args += [f"--{check_name(name)}", encode_value(name, value)]
    return tuple(args)


def args_to_params(args: Sequence[str]) -> dict[str, Any]:
    """The parameters in a notebook job's arguments (``--name value`` or
    ``--name=value`` each); raises :class:`InvalidValueError` naming what is wrong."""
    params: dict[str, Any] = {}
    i = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("--"):
            raise InvalidValueError(
                f"notebook argument {word!r}: expected --NAME VALUE (a parameter and its value)"
            )
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise InvalidValueError(f"notebook parameter {word!r} has no value")
            value = args[i + 1]
            i += 1
        params[check_name(name)] = decode_value(value)
        i += 1
    return params


def check_notebook(path: str, args: Sequence[str], kernel: object, conda_env: object) -> None:
    """What a notebook job needs at submission: papermill, a notebook file, parameters
    as ``--name value`` pairs, and the kernel it names (or its own) installed."""
    if conda_env is not None:
        raise NotSupportedError(
            f"conda_env={conda_env!r}: a notebook runs in its kernel, not in a conda "
            "environment; pass kernel= naming a Jupyter kernel of that environment"
        )
    if importlib.util.find_spec("papermill") is None:
        raise NotSupportedError(f"running a notebook as a job needs papermill: {INSTALL}")
    args_to_params(args)
    try:
        with open(path, encoding="utf-8") as fh:
            found = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InvalidValueError(
            f"notebook {path!r}: cannot be read as a notebook ({exc})"
        ) from None
    if not isinstance(found, dict) or not isinstance(found.get("cells"), list):
        raise InvalidValueError(f"notebook {path!r}: not a Jupyter notebook (it has no cells)")
    check_kernel(kernel, found, path)


def check_kernel(kernel: object, notebook: Mapping[str, Any], path: str) -> str | None:
    """The kernel a notebook job runs in (None: the notebook's own), installed."""
    if kernel is not None and (not isinstance(kernel, str) or not kernel.strip()):
        raise InvalidTypeError(f"kernel={kernel!r}: expected a Jupyter kernel name or None")
    meta = notebook.get("metadata")
    spec = meta.get("kernelspec") if isinstance(meta, dict) else None
    own = spec.get("name") if isinstance(spec, dict) else None
    name = kernel if kernel is not None else own
    if not isinstance(name, str):
        raise InvalidValueError(
            f"notebook {path!r} names no kernel (metadata.kernelspec.name): pass kernel="
        )
    from jupyter_client.kernelspec import KernelSpecManager

    known = KernelSpecManager().find_kernel_specs()
    if name not in known:
        where = "kernel=" if kernel is not None else f"the kernel notebook {path!r} names"
        raise InvalidValueError(
            f"{where} {name!r} is not installed; installed kernels: "
            f"{', '.join(sorted(known)) or 'none'} (python3 -m ipykernel install --user)"
        )
    return kernel if isinstance(kernel, str) else None


def notebook_argv(
    python: str, script: str, args: Sequence[str], kernel: str | None, log_path: str | None
) -> list[str]:
    """The command of a notebook job: the runner, under ``python``."""
    argv = [python, "-u", "-m", RUNNER]
    if log_path:
        argv += ["--output", output_path(log_path)]
    if kernel:
        argv += ["--kernel", kernel]
    return [*argv, "--", script, *args]


def output_path(log_path: str) -> str:
    """Where a notebook job's executed notebook goes: beside its log, ``17.ipynb``."""
    root, ext = os.path.splitext(log_path)
    return (root if ext == ".log" else log_path) + SUFFIX


def failure_detail(log_path: str | None) -> str | None:
    """Why the last attempt of a notebook job failed, as its runner wrote in the log
    (``cell 3: ZeroDivisionError: division by zero``); None if it did not say."""
    line = last_line(log_path, lambda text: text.startswith((FAILED, _ATTEMPT)))
    if line is None or line.startswith(_ATTEMPT):  # (after it: an earlier attempt's)
        return None
    return line[len(FAILED) :].strip() or None


__all__ = [
    "FAILED",
    "RUNNER",
    "SUFFIX",
    "args_to_params",
    "check_notebook",
    "decode_value",
    "encode_value",
    "failure_detail",
    "is_notebook",
    "notebook_argv",
    "output_path",
    "params_to_args",
]
