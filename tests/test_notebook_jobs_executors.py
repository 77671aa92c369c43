"""A notebook job under the other executors: a real GNU screen session, and a real local
Ray (nbsched starts it) declaring simulated GPUs: the notebook runs with its parameters,
its result comes back and its executed notebook is saved beside the log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from test_notebook_jobs import write_notebook
from test_ray import config as ray_config
from test_ray import local_ray  # noqa: F401 (the fixture)

from nbsched import GPUJobScheduler

pytestmark = pytest.mark.timeout(240)

CELL = "import os, nbsched\nnbsched.save_result(lr=lr, gpus=os.environ['CUDA_VISIBLE_DEVICES'])"


def run_one(s: GPUJobScheduler, tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "t.ipynb", CELL)
    job_id = s.add_notebook(nb, params={"lr": 0.5}, required_gpus=1)
    [row] = s.wait([job_id], timeout=180).to_dict("records")
    assert row["status"] == "succeeded", (row["reason"], s.logs(job_id, tail=None))
    result = json.loads(Path(s.config.state_dir, "results", f"{job_id}.json").read_text())
    assert result["lr"] == 0.5 and result["gpus"] in ("0", "1", "2", "3")
    executed = nbformat.read(s.output_notebook(job_id) or "", as_version=4)
    assert executed.cells[1]["metadata"]["tags"] == ["injected-parameters"]


def test_a_notebook_job_in_a_screen_session(make_sched: Any, tmp_path: Path) -> None:
    run_one(make_sched(executor="screen", num_gpus=2, start=True), tmp_path)


@pytest.fixture
def ray_sched(local_ray: None, tmp_path: Path) -> Iterator[GPUJobScheduler]:  # noqa: F811
    """On the local Ray of tests/test_ray.py (nbsched's own start, 4 GPUs)."""
    s = GPUJobScheduler(config=ray_config(tmp_path)).start()
    try:
        yield s
    finally:
        s.stop(kill=True)
        s.close()


@pytest.mark.ray
def test_a_notebook_job_as_a_ray_task(ray_sched: GPUJobScheduler, tmp_path: Path) -> None:
    run_one(ray_sched, tmp_path)
