"""The notebooks in ``notebooks/`` run top to bottom, clean up, and read well unrun.

nbval (``pytest notebooks/``) compares each cell's output with the committed one, but it
runs a cell that raises whatever its tags say.  Run All in JupyterLab and
``jupyter nbconvert --execute`` stop at the first error in a cell without the
``raises-exception`` tag, so the closing ``%gpusched stop`` never ran there.  nbclient
executes a notebook the way those do; each notebook must then have removed the state
folder it made (``tempfile.mkdtemp`` in the kernel, under the ``TMPDIR`` set here).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_there_are_notebooks() -> None:
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "sweeps", "api", "dashboard"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom_and_removes_its_state(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile.mkdtemp lands here
    monkeypatch.delenv("NBSCHED_HOME", raising=False)
    nb = nbformat.read(path, as_version=4)
    # allow_errors=False, as Run All: only a cell tagged raises-exception may raise
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False).execute(
        cwd=str(path.parent)
    )
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("nbsched-"))
    assert left == [], f"{path.name} left its state folder behind: {left}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_planned_errors_are_tagged(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "NBVAL_RAISES_EXCEPTION" in cell.source:
            assert "raises-exception" in cell.metadata.get("tags", []), cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_widgets_show_as_widgets(path: Path) -> None:
    """Opened before running, a widget output is the widget (its state is stored with
    the notebook), and its text fallback is a sentence, not a repr or a frozen bar."""
    nb = nbformat.read(path, as_version=4)
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            assert "(children=(" not in text, f"{path.name}: a widget repr: {text[:60]}"
            assert " 0%|" not in text, f"{path.name}: a progress bar frozen at 0: {text[:60]}"
            if WIDGET_VIEW in data:
                assert data[WIDGET_VIEW]["model_id"] in state, f"{path.name}: no widget state"


def test_dashboard_notebook_leaves_its_widgets_open() -> None:
    nb = nbformat.read(NOTEBOOKS[0].parent / "dashboard.ipynb", as_version=4)
    assert not any(".close()" in c.source for c in nb.cells if c.cell_type == "code")
