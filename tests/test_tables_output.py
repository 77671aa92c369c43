"""A notebook job's executed notebook in the job tables: the ``output`` column of the
dashboard, ``%gpusched status`` and the terminal tables, where ``output_notebook(id)``
says it is (a real papermill run, on simulated GPUs)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.jupyter import Dashboard
from nbsched.jupyter.status import status_report
from nbsched.jupyter.tables import compact, fit, notebook_output, short_command

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def scheduler_config() -> dict[str, object]:
    return {"num_gpus": 1, "gpu_monitor_interval_s": 0.0}


def _notebook(path: Path, seconds: float) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    first = nbformat.v4.new_code_cell("lr = 1.0")
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, nbformat.v4.new_code_cell(f"import time\ntime.sleep({seconds})")]
    nbformat.write(nb, str(path))
    return str(path)


def _row(command: str, log: str | None, status: str = "succeeded") -> dict[str, object]:
    return {"id": "1", "status": status, "command": command, "log": log}


def test_only_a_started_notebook_job_has_an_output_cell() -> None:
    jobs = pd.DataFrame(
        [
            _row("nb/train.ipynb --lr 0.1", "/srv/state/logs/1.log"),
            _row("'my runs/a b.ipynb'", "/srv/state/logs/2.log"),
            _row("nb/train.ipynb", None, "queued"),
            _row("train.py --out x.ipynb", "/srv/state/logs/4.log"),
            _row("echo hi", "/srv/state/logs/5.log"),
        ]
    )
    table = compact(jobs, cwd="/srv")
    assert list(table["output"]) == ["state/logs/1.ipynb", "state/logs/2.ipynb", "", "", ""]
    assert list(table.columns)[-2:] == ["output", "command"]
    no_notebook = compact(jobs.iloc[3:], cwd="/srv")
    assert "output" not in no_notebook.columns  # (a column only where one holds something)
    assert notebook_output("x.ipynb", "/a/b/c/7") == "/a/b/c/7.ipynb"
    assert notebook_output("x.ipynb", float("nan")) is None


def test_the_dashboard_and_status_show_where_the_executed_notebook_is(
    running: GPUJobScheduler, tmp_path: Path
) -> None:
    nb = _notebook(tmp_path / "slow.ipynb", 4.0)
    job_id = running.add_notebook(nb)
    wait_for(lambda: running.job(job_id)["status"] != "queued", "it to start")
    out = running.output_notebook(job_id)
    assert out is not None
    shown = short_command(out, width=40)
    status = status_report(running)  # (running: the kernel's start, then 4 s asleep)
    assert running.job(job_id)["status"] == "running"
    assert "output" in repr(status) and shown in repr(status)
    assert ">output<" in status._repr_html_() and shown in status._repr_html_()
    running.wait([job_id], timeout=120, progress=False)
    assert running.job(job_id)["status"] == "succeeded", running.logs(job_id, tail=None)
    assert Path(out).is_file()
    board = Dashboard(running, autostart=False)
    try:
        assert ">output<" in board.jobs_table.value and shown in board.jobs_table.value
    finally:
        board.close()
    assert shown in fit(running.jobs(), width=200)  # (nbsched jobs: the same table)
