"""The fixtures the test modules share: schedulers on simulated GPUs in ``tmp_path``, a
store, a machine without an NVIDIA GPU; and the skip of the Ray tests where Ray is missing.

A module changes what ``make_sched``, ``sched`` and ``running`` build by overriding the
``scheduler_config`` fixture (pytest takes the module's fixture of that name over this one).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.store import Store, prepare_state_dir

if TYPE_CHECKING:  # (IPython is imported by the tests that use it, not by every run)
    from IPython.core.interactiveshell import InteractiveShell

MakeSched = Callable[..., GPUJobScheduler]

#: Why a Ray test is skipped, and what to install so that it runs.
RAY_MISSING = "Ray is not installed: pip install -e '.[ray]'"
#: Set (to 1) where Ray must be installed (.ci/run): a Ray test that would be skipped
#: fails instead, so a skip never hides a missing install.
REQUIRE_RAY = "NBSCHED_REQUIRE_RAY"


def _ray_required() -> bool:
    return os.environ.get(REQUIRE_RAY, "") not in ("", "0")


def _ray_installed() -> bool:
    # find_spec, not import: importing Ray takes seconds, and most runs need none of it.
    return importlib.util.find_spec("ray") is not None


# ------------------------------------------------------------------ schedulers


@pytest.fixture
def scheduler_config() -> dict[str, Any]:
    """What ``make_sched`` builds unless told otherwise: ``SchedulerConfig`` fields,
    ``"start": True`` for a started scheduler, or ``"config"``: a whole config.
    Override it in a module."""
    return {"num_gpus": 2}


@pytest.fixture
def make_sched(tmp_path: Path, scheduler_config: dict[str, Any]) -> Iterator[MakeSched]:
    """``make_sched(start=None, config=None, **fields)``: a GPUJobScheduler on simulated
    GPUs, its state in ``tmp_path/"state"`` (the same folder each call, so a second one
    is a restart) unless ``state_dir`` says otherwise; ``fields`` go over the module's
    ``scheduler_config``.  Given ``config``, that config (with ``fields`` replaced) is
    used as it is.  Each one made is stopped, its jobs killed, and closed at the end."""
    defaults = dict(scheduler_config)
    start_default = bool(defaults.pop("start", False))
    config_default: SchedulerConfig | None = defaults.pop("config", None)
    made: list[GPUJobScheduler] = []

    def make(
        *, start: bool | None = None, config: SchedulerConfig | None = None, **fields: Any
    ) -> GPUJobScheduler:
        config = config or config_default
        if config is None:
            base = {"state_dir": tmp_path / "state", "gpu_provider": "simulated"}
            config = SchedulerConfig(**{**base, **defaults, **fields})
        elif fields:
            config = config.replace(**fields)
        s = GPUJobScheduler(config=config)
        made.append(s)
        return s.start() if (start_default if start is None else start) else s

    yield make
    for s in made:  # (after close(), both do nothing)
        s.stop(kill=True)
        s.close()


@pytest.fixture
def sched(make_sched: MakeSched) -> GPUJobScheduler:
    """The module's scheduler (see ``scheduler_config``): not started unless it says so."""
    return make_sched()


@pytest.fixture
def running(make_sched: MakeSched) -> GPUJobScheduler:
    """The module's scheduler, started (on the same state directory as ``sched``)."""
    return make_sched(start=True)


@pytest.fixture
def script(tmp_path: Path) -> str:
    """A script that exists (it prints ``hi``)."""
    p = tmp_path / "train.py"
    p.write_text("print('hi')\n")
    return str(p)


# ------------------------------------------------------------------ the store


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A prepared state directory (mode 0700, its ``logs/``)."""
    return prepare_state_dir(tmp_path / "state")


@pytest.fixture
def store(state: Path) -> Iterator[Store]:
    s = Store(state / "state.db")
    yield s
    s.close()


# ------------------------------------------------------------------ the notebook


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    """IPython's shell with ``%load_ext nbsched``; its scheduler stopped, the extension
    unloaded at the end."""
    from IPython.core.interactiveshell import InteractiveShell

    from nbsched.jupyter.extension import magics_of

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbsched")
    yield shell
    magics = magics_of(shell)
    if magics is not None and magics.scheduler is not None:
        magics.scheduler.stop(kill=True)
    shell.run_line_magic("unload_ext", "nbsched")


# ------------------------------------------------------------------ the machine


@pytest.fixture
def no_nvidia_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without an NVIDIA driver: NVML's library is missing, nvidia-smi too."""
    import pynvml

    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    monkeypatch.setattr("nbsched.gpus.gputil.shutil.which", lambda name: None)


# ------------------------------------------------------------------ Ray: skip, or fail in CI


def _needs_ray(item: pytest.Item) -> bool:
    """Marked ``ray`` (a module's ``pytestmark`` marks each test), and not ``without_ray``."""
    return item.get_closest_marker("ray") is not None and not item.get_closest_marker("without_ray")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need Ray are skipped, with the reason, where Ray is not installed;
    where ``NBSCHED_REQUIRE_RAY`` is set that is an error instead."""
    ray_tests = [item for item in items if _needs_ray(item)]
    if not ray_tests or _ray_installed():
        return
    if _ray_required():
        raise pytest.UsageError(
            f"{REQUIRE_RAY} is set, but {RAY_MISSING} ({len(ray_tests)} Ray tests would be skipped)"
        )
    for item in ray_tests:
        item.add_marker(pytest.mark.skip(reason=RAY_MISSING))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Where Ray is required, a Ray test skipped for any reason is a failure."""
    report = yield
    if report.skipped and _ray_required() and _needs_ray(item):
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_RAY} is set, and this Ray test was skipped: {report.longrepr}"
    return report
