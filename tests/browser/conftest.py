"""A real JupyterLab server and a real headless Chromium, for the browser tests.

Debian's ``chromium`` (``.ci/run`` installs it with apt-get) driven by Playwright from
PyPI with ``executable_path`` (never ``playwright install``, which downloads a browser
build of its own).  JupyterLab runs on 127.0.0.1 with no token, from a temporary folder
holding copies of the notebooks, so nothing in the checkout changes.  Where Chromium or
Playwright is missing the tests are skipped with the reason; ``.ci/run`` sets
``NBSCHED_REQUIRE_BROWSER=1``, which makes that skip a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if CHROMIUM is None:
        return "Chromium is not installed (apt-get install chromium)"
    if shutil.which("jupyter-lab") is None:
        return "JupyterLab is not installed (pip install -e '.[jupyter]')"
    return None


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    reason = _missing()
    if reason is None:
        return
    for item in items:
        if "browser" not in item.keywords:
            continue
        if os.environ.get("NBSCHED_REQUIRE_BROWSER") == "1":
            item.add_marker(pytest.mark.usefixtures("_browser_required"))  # fails, saying why
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _browser_required() -> None:
    pytest.fail(f"NBSCHED_REQUIRE_BROWSER=1 but {_missing()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the screenshots go: a temporary folder, named on the test output."""
    folder = Path(
        os.environ.get("NBSCHED_SCREENSHOTS") or tempfile.mkdtemp(prefix="nbsched-shots-")
    )
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server: (its URL, its root folder)."""
    root = tmp_path_factory.mktemp("lab")
    for nb in (Path(__file__).parents[2] / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    # every cell in the page (no windowing: a cell scrolled away is still there to check),
    # and no news pop-up over the page
    settings = root.parent / "lab-settings"
    for name, value in (
        ("notebook-extension/tracker", '{"windowingMode": "none"}'),
        ("apputils-extension/notification", '{"fetchNews": "false"}'),
    ):
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    port = _free_port()
    log = open(root.parent / "jupyterlab.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            f"--port={port}", "--ip=127.0.0.1", f"--ServerApp.root_dir={root}",
            "--IdentityProvider.token=", "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={root.parent / 'lab-workspaces'}",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise RuntimeError(
                    "JupyterLab did not start:\n" + (root.parent / "jupyterlab.log").read_text()
                ) from None
            time.sleep(0.2)
    try:
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()
