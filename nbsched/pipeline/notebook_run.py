"""A notebook job's process: ``python -m nbsched.pipeline.notebook_run --output OUT
[--kernel NAME] -- NOTEBOOK [--name value ...]`` executes NOTEBOOK with papermill, with
those parameters, in the job's folder and environment (its GPUs, its result file), and
saves the executed notebook at OUT.  The cells' output goes to this process's output
(the job's log).

Exit status: 0 when every cell ran; 1 when a cell raised (or the kernel died), with a
last line ``nbsched: notebook failed: cell 3: ZeroDivisionError: division by zero``
(the cell's number among the notebook's own cells, from 1); 2 for a bad command line
or a missing papermill.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .notebooks import FAILED, INSTALL, args_to_params

#: Tags of the cells papermill adds (not the notebook's own: not counted).
_ADDED = frozenset({"injected-parameters", "papermill-error-cell-tag"})
_MAX_TEXT = 300


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbsched.pipeline.notebook_run")
    parser.add_argument("--output", help="where the executed notebook is saved")
    parser.add_argument("--kernel", help="the kernel to run it in (default: its own)")
    parser.add_argument("notebook")
    parser.add_argument("params", nargs=argparse.REMAINDER)
    words = list(sys.argv[1:] if argv is None else argv)
    if "--" in words:  # (the parameters, after "--", may look like options)
        cut = words.index("--")
        ns = parser.parse_args(words[:cut] + words[cut + 1 : cut + 2])
        ns.params = words[cut + 2 :]
    else:
        ns = parser.parse_args(words)
    try:
        params = args_to_params(ns.params)
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        import papermill
    except ImportError:
        return _fail(f"papermill is not installed: {INSTALL}", 2)
    return _execute(papermill, ns.notebook, ns.output, params, ns.kernel)


def _execute(
    papermill: Any, notebook: str, output: str | None, params: dict[str, Any], kernel: str | None
) -> int:
    """Run it; the exit status (see the module)."""
    try:
        papermill.execute_notebook(
            notebook,
            output,
            parameters=params,
            kernel_name=kernel,
            progress_bar=False,
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
            cwd=os.getcwd(),
        )
    except papermill.PapermillExecutionError as exc:
        print(str(exc), file=sys.stderr)  # (the cell's traceback, without colours)
        return _fail(_cell_error(exc, output), 1)
    except Exception as exc:  # (a kernel that died or never started, a bad notebook)
        return _fail(_clip(f"{type(exc).__name__}: {exc}"), 1)
    return 0


def _cell_error(exc: Any, output: str | None) -> str:
    """``cell N: ErrorName: message`` for papermill's error."""
    number = _cell_number(output, exc.cell_index)
    return _clip(f"cell {number}: {exc.ename}: {exc.evalue}".rstrip(": "))


def _cell_number(output: str | None, index: int) -> int:
    """The failing cell's number among the notebook's own cells (from 1): the first
    with an error output in the executed notebook, papermill's added cells not counted;
    else papermill's index, from 1."""
    if output:
        try:
            import nbformat

            nb = nbformat.read(output, as_version=4)  # type: ignore[no-untyped-call]
        except Exception:
            return index + 1
        number = 0
        for cell in nb.cells:
            if _ADDED & set(cell.get("metadata", {}).get("tags", [])):
                continue
            number += 1
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                return number
    return index + 1


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _fail(reason: str, code: int) -> int:
    sys.stdout.flush()
    print(f"\n{FAILED}{reason}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
