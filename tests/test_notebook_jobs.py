"""Notebooks as jobs: a real papermill run in a real ``python3`` kernel, on simulated
GPUs, through the API, the magics and the command line: parameters reach the
notebook, the executed notebook is saved beside the log, results come back through
the result file, a cell error fails the job naming the cell, and a sweep over a
notebook's parameters is one job per combination."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from legacy_support import cli

from nbsched import GPUJobScheduler
from nbsched.errors import InvalidTypeError, InvalidValueError, NotSupportedError
from nbsched.jupyter.extension import magics_of
from nbsched.pipeline.notebooks import (
    args_to_params,
    decode_value,
    failure_detail,
    params_to_args,
)

pytestmark = pytest.mark.timeout(180)


def write_notebook(path: Path, *cells: str, params: str = "lr = 1.0\nname = 'x'") -> str:
    """A notebook with a cell tagged ``parameters`` and then ``cells``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, str(path))
    return str(path)


@pytest.fixture
def scheduler_config() -> dict[str, object]:
    return {"num_gpus": 2, "gpu_monitor_interval_s": 0.0}


@pytest.fixture
def train(tmp_path: Path) -> str:
    return write_notebook(
        tmp_path / "train.ipynb",
        "import os\nprint('gpus', os.environ['CUDA_VISIBLE_DEVICES'], 'lr', lr, type(lr).__name__)",
        "import nbsched\nnbsched.save_result(loss=lr * 2, name=name)",
    )


def test_a_notebook_job_runs_with_its_parameters_and_hands_back_its_result(
    running: GPUJobScheduler, train: str
) -> None:
    job_id = running.add_notebook(train, params={"lr": 0.25, "name": "0.5"}, required_gpus=0.5)
    [row] = running.wait([job_id], timeout=120).to_dict("records")
    assert row["status"] == "succeeded", running.logs(job_id, tail=None)
    out = running.output_notebook(job_id)
    assert out is not None and Path(out).parent == Path(row["log"]).parent
    executed = nbformat.read(out, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "lr 0.25 float" in printed
    assert "gpus 0" in printed or "gpus 1" in printed
    assert "lr 0.25 float" in running.logs(job_id, tail=None)  # (the cells' output: the log)
    # the string "0.5" stays a string; the result comes back as a script's does
    result = json.loads(Path(running.config.state_dir, "results", f"{job_id}.json").read_text())
    assert result == {"loss": 0.5, "name": "0.5"}


def test_a_cell_error_fails_the_job_naming_the_cell_and_the_error(
    running: GPUJobScheduler, tmp_path: Path
) -> None:
    nb = write_notebook(tmp_path / "bad.ipynb", "x = 1", "y = lr / 0", "print('never')")
    job_id = running.add_notebook(nb, params={"lr": 1})
    [row] = running.wait([job_id], timeout=120).to_dict("records")
    assert row["status"] == "failed"
    assert row["exit_code"] == 1
    # the parameters cell is cell 1: the failing one is the notebook's third cell
    assert row["reason"].startswith("cell 3: ZeroDivisionError"), row["reason"]
    assert "ZeroDivisionError" in running.logs(job_id, tail=None)
    executed = nbformat.read(running.output_notebook(job_id) or "", as_version=4)
    assert any(
        o.get("ename") == "ZeroDivisionError" for c in executed.cells for o in c.get("outputs", [])
    )


def test_a_sweep_over_a_notebook_is_one_job_per_value(running: GPUJobScheduler, train: str) -> None:
    ids = running.add_sweep(train, args="--lr {0.1,0.2} --name run", required_gpus=0.5)
    assert len(ids) == 2
    running.wait(ids, timeout=120)
    table = running.sweep(ids.sweep_id)
    assert sorted(table["lr"]) == [0.1, 0.2]
    assert list(table["status"]) == ["succeeded", "succeeded"]
    assert sorted(table["loss"]) == pytest.approx([0.2, 0.4])


def test_bad_notebook_submissions_are_refused_before_anything_is_stored(
    sched: GPUJobScheduler, train: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidValueError, match="kernel= 'no-such-kernel' is not installed"):
        sched.add_notebook(train, kernel="no-such-kernel")
    with pytest.raises(InvalidValueError, match="notebook parameter '1x'"):
        sched.add_notebook(train, params={"1x": 1})
    with pytest.raises(InvalidTypeError, match=r"params\['f'\]"):
        sched.add_notebook(train, params={"f": object()})
    with pytest.raises(NotSupportedError, match="conda_env='torch'"):
        sched.add_job(train, "torch")
    with pytest.raises(InvalidValueError, match="expected the path of a .ipynb"):
        sched.add_notebook(str(tmp_path / "train.py"))
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(InvalidValueError, match="cannot be read as a notebook"):
        sched.add_notebook(str(tmp_path / "broken.ipynb"))
    with pytest.raises(InvalidValueError, match="kernel='python3': only a notebook job"):
        sched.make_spec(command="true", kernel="python3")
    with pytest.raises(InvalidValueError, match="is not a notebook job"):
        sched.output_notebook(sched.add_command("true"))
    assert len(sched.jobs()) == 1  # (the command alone)


@pytest.mark.parametrize(
    "value", [0.1, 3, -2, True, False, None, "x y", "0.1", "True", "", [1, "a"], {"k": [1.5]}]
)
def test_a_parameter_reaches_the_notebook_as_the_value_given(value: Any) -> None:
    args = params_to_args({"p": value})
    assert args_to_params(args) == {"p": value}
    assert type(args_to_params(args)["p"]) is type(value)


def test_typed_values_read_as_papermill_reads_p() -> None:
    assert [decode_value(t) for t in ("0.1", "3", "True", "None", "[1]", "abc")] == [
        0.1, 3, True, None, [1], "abc"
    ]  # fmt: skip
    assert args_to_params(["--lr=0.5", "--n", "2"]) == {"lr": 0.5, "n": 2}
    with pytest.raises(InvalidValueError, match="has no value"):
        args_to_params(["--lr"])


def test_only_the_last_attempts_failure_is_its_reason(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    log.write_text(
        "nbsched: notebook failed: cell 2: KeyError: 'a'\n--- nbsched: attempt 2 ---\nok\n"
    )
    assert failure_detail(str(log)) is None
    log.write_text("out\nnbsched: notebook failed: cell 4: ValueError: bad\n")
    assert failure_detail(str(log)) == "cell 4: ValueError: bad"


def test_the_magic_queues_a_notebook_and_a_sweep_over_its_parameters(
    ip: InteractiveShell, train: str, tmp_path: Path
) -> None:
    ip.run_line_magic("gpusched", f"start --simulate 2 --state-dir {tmp_path / 'state'}")
    job_id = ip.run_line_magic("gpusched", f"notebook {train} --gpus 0.5 -p lr 0.1 -p name a")
    ids = ip.run_line_magic("gpusched", f"notebook {train} --gpus 0.5 -p lr {{0.1,0.3}}")
    assert isinstance(job_id, str) and len(ids) == 2
    rows = ip.run_line_magic("gpusched", f"wait --no-progress {job_id} {' '.join(ids)}")
    assert list(rows["status"]) == ["succeeded"] * 3
    sched = magics_of(ip).scheduler  # type: ignore[union-attr]
    assert sched is not None and sched.store.get(job_id).spec.args == ("--lr", "0.1", "--name", "a")
    with pytest.raises(UsageError, match="notebook parameter"):
        ip.run_line_magic("gpusched", f"notebook {train} -p 9 1")


def test_the_command_line_queues_a_notebook(tmp_path: Path, train: str) -> None:
    state = tmp_path / "state"
    opts = ["--simulate", "2", "--json"]
    job = json.loads(
        cli(state, "notebook", train, "-p", "lr", "0.5", "--gpus", "0.5", *opts).stdout
    )
    swept = cli(state, "notebook", train, "-p", "lr", "{1,2}", "-p", "name", "n", *opts).stdout
    assert len(json.loads(swept)["ids"]) == 2
    bad = cli(state, "notebook", train, "--kernel", "nope", *opts, check=False)
    assert bad.returncode != 0 and "kernel= 'nope' is not installed" in bad.stderr
    with GPUJobScheduler(state_dir=state, gpu_provider="simulated", num_gpus=2) as s:
        assert s.store.get(str(job["id"])).spec.args == ("--lr", "0.5")
        assert len(s.jobs()) == 3


def test_a_notebook_with_a_snapshot_runs_as_it_was_submitted(
    sched: GPUJobScheduler, tmp_path: Path
) -> None:
    folder = tmp_path / "nb"
    folder.mkdir()
    nb = write_notebook(folder / "t.ipynb", "import nbsched\nnbsched.save_result(v=1)")
    job_id = sched.add_notebook(nb, snapshot=True)
    write_notebook(folder / "t.ipynb", "import nbsched\nnbsched.save_result(v=2)")
    sched.start()
    [row] = sched.wait([job_id], timeout=120).to_dict("records")
    assert row["status"] == "succeeded", sched.logs(job_id, tail=None)
    result = json.loads(Path(sched.config.state_dir, "results", f"{job_id}.json").read_text())
    assert result == {"v": 1}
    assert Path(sched.output_notebook(job_id) or "").parent == Path(row["log"]).parent


def test_cancelling_a_running_notebook_ends_its_kernel_too(
    running: GPUJobScheduler, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    nb = write_notebook(
        tmp_path / "slow.ipynb",
        f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)",
    )
    job_id = running.add_notebook(nb)
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, running.logs(job_id, tail=None)
        time.sleep(0.1)
    kernel = psutil.Process(int(marker.read_text()))
    assert running.cancel(job_id)
    kernel.wait(timeout=30)  # (raises if the kernel outlives its job)
    assert running.job(job_id)["status"] == "cancelled"


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), _VALUES))
def test_any_parameters_reach_the_notebook_as_given(params: dict[str, Any]) -> None:
    assert args_to_params(params_to_args(params)) == params


def test_a_notebook_waits_for_the_job_it_comes_after(
    sched: GPUJobScheduler, train: str, tmp_path: Path
) -> None:
    first = sched.add_command(f"sleep 0.5; touch {tmp_path / 'trained'}")
    job_id = sched.add_notebook(train, params={"lr": 1}, after=[first])
    assert sched.job(job_id)["after"] and sched.job(job_id)["waiting"]
    sched.start()
    rows = sched.wait([first, job_id], timeout=120)
    assert list(rows["status"]) == ["succeeded", "succeeded"]
    started = sched.job(job_id)["started"]
    assert started >= sched.job(first)["ended"]
