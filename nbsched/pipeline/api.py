"""Notebooks as jobs in :class:`~nbsched.scheduler.GPUJobScheduler`'s API:
``add_notebook`` and ``output_notebook`` (a sweep over a notebook is ``add_sweep`` of
it: see :mod:`nbsched.pipeline.notebooks`).

A mixin of ``GPUJobScheduler`` only, like :mod:`nbsched.scheduler_submit`; the
attributes it uses are declared below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidValueError
from .notebooks import is_notebook, output_path, params_to_args
from .record import record_of

if TYPE_CHECKING:  # (what it uses of GPUJobScheduler: its submitting half)
    from ..scheduler_submit import Submitting as _Scheduler
else:
    _Scheduler = object


class NotebookJobs(_Scheduler):
    """``add_notebook`` and ``output_notebook`` (see the module)."""

    def add_notebook(
        self,
        notebook: str | os.PathLike[str],
        params: Mapping[str, Any] | None = None,
        kernel: str | None = None,
        required_gpus: float | None = None,
        priority: int = 0,
        allowed_gpus: Iterable[int] | str | None = None,
        *,
        max_retries: int | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        once: bool = False,
        args: Sequence[str] | None = None,
        notify: Any = None,
        on_end: Callable[..., Any] | None = None,
        **options: Any,
    ) -> str:
        """Queue a notebook, run by papermill with ``params`` (injected after its cell
        tagged ``parameters``) in ``kernel`` (None: the notebook's own); returns the job id.

        The executed notebook is saved beside the job's log (:meth:`output_notebook`);
        a cell that raises fails the job, its reason naming the cell and the error
        (``cell 3: ZeroDivisionError: ...``).  ``nbsched.save_result(loss=...)`` in a
        cell writes the job's result, as a script's.  A sweep over a notebook:
        ``add_sweep("train.ipynb", args="--lr {0.1,0.01}")`` or ``params={"lr": [...]}``.
        ``args`` instead of ``params``: the parameters as words, ``["--lr", "0.1"]``,
        each value read as papermill's ``-p`` reads it (``0.1`` a float; what the
        command line and the magic pass).  ``once``, ``notify``, ``on_end`` and
        ``options`` (``after=``, ``snapshot=``, ...) are those of :meth:`add_job`.
        """
        self._check_open()
        script = os.fspath(notebook) if isinstance(notebook, os.PathLike) else notebook
        if not isinstance(script, str) or not is_notebook(script):
            raise InvalidValueError(
                f"notebook={notebook!r}: expected the path of a .ipynb notebook"
            )
        if args is not None and params is not None:
            raise InvalidValueError("add_notebook: give params= or args=, not both")
        spec = self.make_spec(
            script=script,
            args=params_to_args(params) if args is None else args,
            priority=priority,
            required_gpus=required_gpus,
            allowed_gpus=allowed_gpus,
            max_retries=max_retries,
            cwd=cwd,
            env=env,
            name=name,
            kernel=kernel,
            **options,
        )
        spec = self._notified(spec, notify, on_end)
        submit = (lambda: self._submit_once(spec)) if once else (lambda: self.submit([spec])[0])
        return self._watched(on_end, submit)

    def _with_code(self, row: dict[str, Any]) -> dict[str, Any]:
        """A job's row (:meth:`job`) with its code record (the job keeps its key)."""
        return {**row, "code": record_of(self.store, row["code"])}

    def output_notebook(self, job_id: str) -> str | None:
        """The path of a notebook job's executed notebook (beside its log; papermill
        writes it as the cells run), or None while the job has not started."""
        self._check_open()
        job = self.store.get(job_id)
        if not is_notebook(job.spec.script):
            raise InvalidValueError(
                f"job {job.id} is not a notebook job (its command: {job.display_command()})"
            )
        return None if job.log_path is None else output_path(job.log_path)


__all__ = ["NotebookJobs"]
