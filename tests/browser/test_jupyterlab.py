"""The notebooks, the form and the dashboard in JupyterLab, in a real browser.

What a person does: open a notebook, Run All, look at what came out; submit a job from
the form, see it on the dashboard, pause and resume a GPU, choose a job and cancel it.
The results are checked where they land: in the page (every widget drawn, no
"Loading widget…", no text repr of a widget, no unplanned error) and in the store (the
job cancelled, the GPU paused).  Screenshots go to a temporary folder named on the
output (``NBSCHED_SCREENSHOTS=DIR`` chooses it).
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

NOTEBOOKS = ("quickstart", "sweeps", "dashboard", "api")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# what a widget looks like when the page could not draw it
NOT_DRAWN = ("Loading widget", "Error displaying widget", "children=(", "Dashboard(", "SubmitForm(")


def _open(page: Any, url: str, name: str) -> None:
    """Open a notebook and wait for its kernel to be idle.  JupyterLab may first ask which
    kernel to start (when its list of kernels came after the notebook): the one it offers
    is the notebook's own, Python 3."""
    page.goto(f"{url}/lab/tree/{name}?reset")
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    idle = page.locator(".jp-StatusBar-Item:has-text('| Idle')")
    dialog = page.locator(".jp-Dialog button:has-text('Select')")
    deadline = time.monotonic() + 90
    while not idle.count():
        if dialog.count():
            dialog.first.click()
        assert time.monotonic() < deadline, f"the kernel of {name} did not start"
        time.sleep(0.2)


def _run_all(page: Any, timeout: float = 240) -> None:
    """Edit → Clear Outputs of All Cells, Run → Run All Cells, then wait until every code
    cell has its number and the kernel is idle."""
    page.click(".lm-MenuBar-itemLabel:text-is('Edit')")
    page.click(".lm-Menu-itemLabel:text-is('Clear Outputs of All Cells')")
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    page.wait_for_function(
        """() => {
            const ps = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            const busy = document.querySelector(".jp-Notebook-ExecutionIndicator");
            return ps.length > 0 && ps.every(p => /^\\[\\d+\\]:$/.test(p.textContent.trim()))
                && busy && busy.dataset.status === 'idle';
        }""",
        timeout=timeout * 1000,
    )


def _save(page: Any, path: Path) -> None:
    """Ctrl+S, and wait until the file on disk is the one just saved."""
    before = path.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    _until(f"{path.name} saved", lambda: path.stat().st_mtime_ns != before)
    time.sleep(0.5)  # (written whole before the next read)


def _store(state: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(state / "state.db", timeout=10) as db:
        return list(db.execute(sql, args))


def _options(select: Any) -> list[str]:
    """The texts of a drop-down's choices, as a person reads them."""
    return [" ".join(o.split()) for o in select.locator("option").all_inner_texts()]


def _until(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_all_with_every_widget_drawn(
    lab: tuple[str, Path], page: Any, screenshots: Path, name: str
) -> None:
    url, root = lab
    _open(page, url, f"{name}.ipynb")
    _run_all(page)
    time.sleep(2)  # widget updates from a background thread arrive after the cell ends
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
    _save(page, root / f"{name}.ipynb")

    saved = nbformat.read(root / f"{name}.ipynb", as_version=4)
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "Run All stopped before the last cell"
    for cell in code:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        planned = "raises-exception" in cell.metadata.get("tags", [])
        assert not errors or planned, f"unplanned error in {name}: {cell.source[:80]!r}"

    text = "\n".join(page.locator(".jp-OutputArea").all_inner_texts())  # the outputs only
    for bad in NOT_DRAWN:
        assert bad not in text, f"{name}: {bad!r} on the page"
    views = sum(1 for c in code for o in c.outputs if WIDGET_MIME in o.get("data", {}))
    drawn = page.locator(".jp-OutputArea-output > .jupyter-widgets").count()
    assert drawn >= views, f"{name}: {views} widget outputs, {drawn} drawn"


def _write_live_notebook(root: Path, state: Path, script: Path) -> str:
    """A notebook that starts a scheduler on 2 simulated GPUs and shows the form and the
    dashboard, left running for the test to use."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    setup = f"""
        from nbsched import GPUJobScheduler, SchedulerConfig
        from nbsched.jupyter import Dashboard, SubmitForm
        s = GPUJobScheduler(config=SchedulerConfig(
            state_dir={str(state)!r}, gpu_provider="simulated", num_gpus=2))
        s.start()
    """
    nb.cells = [
        nbformat.v4.new_code_cell(textwrap.dedent(setup).strip()),
        nbformat.v4.new_code_cell("form = SubmitForm(s)\nform"),
        nbformat.v4.new_code_cell("board = Dashboard(s, interval=0.5)\nboard"),
    ]
    nbformat.write(nb, root / "live.ipynb")
    script.write_text("import time\ntime.sleep(120)\n")
    return "live.ipynb"


def test_form_dashboard_pause_and_cancel(
    lab: tuple[str, Path], page: Any, screenshots: Path, tmp_path: Path
) -> None:
    url, root = lab
    state, script = tmp_path / "state", tmp_path / "sleeper.py"
    _open(page, url, _write_live_notebook(root, state, script))
    _run_all(page)
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")

    # the form: a script and one GPU, Submit
    panel.locator("input[placeholder='train.py']").fill(str(script))
    panel.locator("input[placeholder^='fraction in (0, 1]']").fill("1")
    panel.locator("button:has-text('Submit')").click()
    rows = _until("the job in the store", lambda: _store(state, "SELECT seq, status FROM jobs"))
    job = str(rows[0][0])
    # ... and on the dashboard: in its job list, running
    select = panel.locator(".widget-dropdown select").last
    _until(
        "the job in the dashboard's list",
        lambda: any(o.startswith(f"{job} · running") for o in _options(select)),
    )
    page.screenshot(path=str(screenshots / "dashboard-submitted.png"), full_page=True)
    board = panel.locator(".jp-OutputArea-output > .jupyter-widgets").last
    board.screenshot(path=str(screenshots / "dashboard.png"))  # the dashboard alone (docs)

    # pause GPU 1, then resume it: the store says so each time
    toggles = panel.locator("button:has-text('pause')")
    toggles.nth(1).click()
    _until("GPU 1 paused", lambda: _store(state, "SELECT gpu FROM gpu_pauses") == [(1,)])
    page.screenshot(path=str(screenshots / "dashboard-paused.png"), full_page=True)
    toggles.nth(1).click()
    _until("GPU 1 resumed", lambda: _store(state, "SELECT gpu FROM gpu_pauses") == [])

    # Cancel acts on the job the list shows, or is disabled until one is chosen
    cancel = panel.locator("button:has-text('Cancel job')")
    if cancel.is_enabled():
        assert select.input_value() == job, "Cancel is enabled with no job shown as chosen"
    else:
        choice = [o.startswith(f"{job} ·") for o in _options(select)].index(True)
        select.select_option(index=choice)
        _until("Cancel enabled once a job is chosen", cancel.is_enabled)
    cancel.click()
    _until(
        "the job cancelled in the store",
        lambda: (
            _store(state, "SELECT status FROM jobs WHERE seq = ?", int(job)) == [("cancelled",)]
        ),
    )
    page.screenshot(path=str(screenshots / "dashboard-cancelled.png"), full_page=True)

    # stop the scheduler the notebook started
    page.click(".lm-MenuBar-itemLabel:text-is('Kernel')")
    page.click(".lm-Menu-itemLabel:text-is('Shut Down Kernel')")
    assert json.loads((root / "live.ipynb").read_text())["cells"]
