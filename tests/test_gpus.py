"""Tests of nbsched.gpus: providers (one contract for all), simulated files, monitor."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbsched.gpus.simulated as simulated_module
from nbsched.errors import InvalidTypeError, InvalidValueError, MissingFileError
from nbsched.gpus import (
    GPUMonitor,
    GpuProcess,
    GPUProvider,
    GpuSnapshot,
    GputilProvider,
    NvmlProvider,
    SimulatedJob,
    SimulatedProvider,
    external_usage_changed,
    make_provider,
    parse_simulated_gpus,
    provider_choice_shown_by_caller,
    write_simulated_gpus,
)

MB = 1024 * 1024
A100 = {"name": "Simulated A100 80GB", "memory_total_mb": 81920}


# ---------------------------------------------------------------- fakes of missing hardware


class FakeNVMLError(Exception):
    pass


class FakeNvml(types.ModuleType):
    """A stand-in for the ``pynvml`` module: two GPUs, scriptable processes and failures."""

    NVMLError = FakeNVMLError

    def __init__(self, count: int = 2) -> None:
        super().__init__("pynvml")
        self.count = count
        self.calls: dict[str, int] = {}
        self.failing: set[tuple[str, int]] = set()  # (function name, device index)
        self.procs: dict[int, list[types.SimpleNamespace]] = {}
        self.graphics: dict[int, list[types.SimpleNamespace]] = {}
        self.used_mb = {i: 1000.0 * (i + 1) for i in range(count)}
        self.util = {i: 10 * (i + 1) for i in range(count)}

    def _call(self, fn: str, index: int = -1) -> None:
        self.calls[fn] = self.calls.get(fn, 0) + 1
        if (fn, index) in self.failing:
            raise FakeNVMLError(f"{fn} failed on {index}")

    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call("nvmlDeviceGetHandleByIndex", index)
        if index >= self.count:
            raise FakeNVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        self._call("nvmlDeviceGetUUID", handle)
        return f"GPU-FAKE-{handle}"

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        self._call("nvmlDeviceGetName", handle)
        return b"Fake H100"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:
        self._call("nvmlDeviceGetMemoryInfo", handle)
        return types.SimpleNamespace(used=self.used_mb[handle] * MB, total=80000 * MB)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> types.SimpleNamespace:
        self._call("nvmlDeviceGetUtilizationRates", handle)
        return types.SimpleNamespace(gpu=self.util[handle], memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        self._call("nvmlDeviceGetComputeRunningProcesses", handle)
        return self.procs.get(handle, [])

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: int) -> list[Any]:
        self._call("nvmlDeviceGetComputeRunningProcesses_v2", handle)
        return self.procs.get(handle, [])

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
        self._call("nvmlDeviceGetGraphicsRunningProcesses", handle)
        return self.graphics.get(handle, [])


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def _fake_gputil_gpu(index: int, load: float = 0.25, used: float = 2000.0) -> Any:
    return types.SimpleNamespace(
        id=index, uuid=f"GPU-SMI-{index}", name="Fake A40", load=load,
        memoryUsed=used, memoryTotal=46068.0,
    )  # fmt: skip


@pytest.fixture
def fake_gputil(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("GPUtil")
    module.gpus = [_fake_gputil_gpu(0), _fake_gputil_gpu(1, load=math.nan)]  # type: ignore[attr-defined]
    module.getGPUs = lambda: list(module.gpus)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "GPUtil", module)
    monkeypatch.setattr("nbsched.gpus.gputil.shutil.which", lambda name: f"/usr/bin/{name}")
    return module


#: Real hardware providers join the contract where they work (on a GPU machine).
REAL_PROVIDERS = [
    name for name, cls in (("nvml", NvmlProvider), ("gputil", GputilProvider))
    if cls().is_available()
]  # fmt: skip


# ---------------------------------------------------------------- contract


@pytest.fixture(params=["simulated", "simulated-file", "nvml-fake", "gputil-fake", *REAL_PROVIDERS])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GPUProvider]:
    kind = request.param
    p: GPUProvider
    if kind == "simulated":
        job = SimulatedJob("7", (0,), 4242, 0.5, str(tmp_path / "7.json"))
        p = SimulatedProvider(usage=lambda: {0: 0.5, 3: 1.0}, jobs=lambda: [job])
    elif kind == "simulated-file":
        path = tmp_path / "gpus.json"
        theirs = {"pid": 4242, "user": "alice", "command": "vllm serve", "memory_mb": 1000}
        write_simulated_gpus(
            path,
            [
                {**A100, "processes": [theirs]},
                {"external_memory_used_mb": 80000, "external_load": 0.9},
            ],
        )
        p = SimulatedProvider(gpus_file=str(path), usage=lambda: {1: 0.5}, node="n1")
    elif kind == "nvml":
        p = NvmlProvider()
    elif kind == "gputil":
        p = GputilProvider()
    elif kind == "nvml-fake":
        fake = request.getfixturevalue("fake_nvml")
        fake.procs = {0: [types.SimpleNamespace(pid=4242, usedGpuMemory=500 * MB)]}
        fake.graphics = {0: [types.SimpleNamespace(pid=4242, usedGpuMemory=10 * MB)]}
        p = NvmlProvider(own_pids=lambda: {123})
    else:
        request.getfixturevalue("fake_gputil")
        p = GputilProvider()
    yield p
    p.close()


class TestProviderContract:
    """What every GPU provider promises; run against each one that works here."""

    def test_conforms_to_protocol(self, provider: GPUProvider) -> None:
        assert isinstance(provider, GPUProvider)
        assert isinstance(provider.name, str) and provider.name
        assert isinstance(getattr(provider, "selection_note", None), str)

    def test_is_available(self, provider: GPUProvider) -> None:
        assert provider.is_available() is True
        assert provider.is_available() is True

    def test_snapshot_ordered_by_index(self, provider: GPUProvider) -> None:
        gpus = list(provider.snapshot())
        assert gpus and all(isinstance(g, GpuSnapshot) for g in gpus)
        indices = [g.index for g in gpus]
        assert indices == sorted(set(indices))
        assert [g.index for g in provider.snapshot()] == indices

    def test_values_in_range(self, provider: GPUProvider) -> None:
        for g in provider.snapshot():
            if g.memory_total_mb is not None:
                assert g.memory_total_mb > 0
                for used in (g.memory_used_mb, g.external_memory_used_mb):
                    assert used is None or 0 <= used <= g.memory_total_mb
            for load in (g.load, g.external_load):
                assert load is None or 0.0 <= load <= 1.0
            if g.memory_used_mb is not None and g.external_memory_used_mb is not None:
                assert g.external_memory_used_mb <= g.memory_used_mb
            if g.load is not None and g.external_load is not None:
                assert g.external_load <= g.load

    def test_processes_are_on_their_gpu_within_its_memory(self, provider: GPUProvider) -> None:
        for g in provider.snapshot():
            if g.processes is None:  # (a provider that cannot list them: GPUtil)
                continue
            assert isinstance(g.processes, tuple)
            pids = [p.pid for p in g.processes if p.pid is not None]
            assert len(pids) == len(set(pids)), "a process is listed once per GPU"
            for p in g.processes:
                assert isinstance(p, GpuProcess) and p.gpu == g.index
                assert p.pid is None or p.pid >= 1
                assert p.used_mb is None or p.used_mb >= 0
                if p.used_mb is not None and g.memory_total_mb is not None:
                    assert p.used_mb <= g.memory_total_mb
            known = sum(p.used_mb or 0.0 for p in g.processes)
            if g.memory_used_mb is not None:
                assert known <= g.memory_used_mb + 1.0

    def test_lists_a_process_in_the_same_pass(
        self, provider: GPUProvider, request: pytest.FixtureRequest
    ) -> None:
        kind = request.node.callspec.params["provider"]
        first = provider.snapshot()[0]
        if kind in REAL_PROVIDERS:
            pytest.skip("which processes a real GPU has is not known in advance")
        if kind == "gputil-fake":
            assert first.processes is None  # per-job memory unknown, said once
            return
        assert first.processes is not None
        assert 4242 in [p.pid for p in first.processes]

    def test_close_is_idempotent(self, provider: GPUProvider) -> None:
        provider.snapshot()
        provider.close()
        provider.close()


# ---------------------------------------------------------------- simulated provider


def test_simulated_defaults() -> None:
    gpus = SimulatedProvider().snapshot()
    assert len(gpus) == 4
    g = gpus[2]
    assert (g.index, g.uuid, g.name, g.node) == (2, "GPU-SIM-local-2", "Simulated GPU", None)
    assert (g.memory_used_mb, g.memory_total_mb, g.load) == (0.0, 81920.0, 0.0)
    assert (g.external_memory_used_mb, g.external_load) == (0.0, 0.0)


def test_simulated_num_gpus_and_node() -> None:
    gpus = SimulatedProvider(num_gpus=2, node="box").snapshot()
    assert [(g.uuid, g.node) for g in gpus] == [("GPU-SIM-box-0", "box"), ("GPU-SIM-box-1", "box")]


@pytest.mark.parametrize("bad", [0, -1])
def test_simulated_bad_num_gpus_value(bad: int) -> None:
    with pytest.raises(InvalidValueError, match="num_gpus"):
        SimulatedProvider(num_gpus=bad)


@pytest.mark.parametrize("bad", [True, 2.0, "2"])
def test_simulated_bad_num_gpus_type(bad: Any) -> None:
    with pytest.raises(InvalidTypeError, match="num_gpus"):
        SimulatedProvider(num_gpus=bad)


def test_simulated_file_defines_gpus(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [A100, {"external_memory_used_mb": 1024, "external_load": 0.5}, {}])
    gpus = SimulatedProvider(gpus_file=path).snapshot()
    assert [g.name for g in gpus] == ["Simulated A100 80GB", "Simulated GPU", "Simulated GPU"]
    assert gpus[1].external_memory_used_mb == gpus[1].memory_used_mb == 1024
    assert gpus[1].external_load == gpus[1].load == 0.5


@pytest.mark.parametrize("num_gpus, names", [(1, ["A"]), (3, ["A", "B", "Simulated GPU"])])
def test_simulated_num_gpus_wins_over_file(tmp_path: Path, num_gpus: int, names: list) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [{"name": "A"}, {"name": "B"}])
    gpus = SimulatedProvider(num_gpus=num_gpus, gpus_file=path).snapshot()
    assert [g.name for g in gpus] == names


BAD_FILES = {
    "not json": ("{gpus: [", "not valid JSON"),
    "top-level list": ("[]", "expected an object"),
    "no gpus key": ("{}", "expected an object"),
    "gpus not a list": ('{"gpus": {}}', "expected an object"),
    "empty list": ('{"gpus": []}', "lists no GPU"),
    "entry not an object": ('{"gpus": [1]}', r"gpus\[0\]: expected an object"),
    "unknown key": ('{"gpus": [{"memory_mb": 1}]}', "unknown key.*memory_mb.*accepted"),
    "name not a string": ('{"gpus": [{"name": 3}]}', "name=3"),
    "empty name": ('{"gpus": [{"name": ""}]}', "name=''"),
    "total a string": ('{"gpus": [{"memory_total_mb": "80GB"}]}', "memory_total_mb='80GB'"),
    "bool": ('{"gpus": [{"external_load": true}]}', "external_load=True"),
    "null": ('{"gpus": [{"external_load": null}]}', "external_load=None"),
    "negative used": ('{"gpus": [{"external_memory_used_mb": -1}]}', ">= 0"),
    "zero total": ('{"gpus": [{"memory_total_mb": 0}]}', "must be > 0"),
    "NaN": ('{"gpus": [{"external_load": NaN}]}', "finite"),
    "Infinity": ('{"gpus": [{"memory_total_mb": Infinity}]}', "finite"),
    "huge int": ('{"gpus": [{"memory_total_mb": 1' + "0" * 400 + "}]}", "finite"),
    "load above 1": ('{"gpus": [{"external_load": 1.5}]}', r"in \[0, 1\]"),
    "load below 0": ('{"gpus": [{"external_load": -0.1}]}', ">= 0"),
    "used above total": (
        '{"gpus": [{"memory_total_mb": 100, "external_memory_used_mb": 101}]}',
        "more than memory_total_mb=100",
    ),
    "second entry bad": ('{"gpus": [{}, {"external_load": 2}]}', r"gpus\[1\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_simulated_bad_file(tmp_path: Path, case: str) -> None:
    text, problem = BAD_FILES[case]
    path = tmp_path / "gpus.json"
    path.write_text(text)
    with pytest.raises(InvalidValueError, match=problem) as info:
        SimulatedProvider(gpus_file=path)
    assert str(path) in str(info.value)


def test_simulated_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    path.write_bytes(b'{"gpus": [{"name": "\xff"}]}')
    with pytest.raises(InvalidValueError, match="UTF-8"):
        SimulatedProvider(gpus_file=path)


def test_simulated_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(MissingFileError, match="nope.json") as info:
        SimulatedProvider(gpus_file=path)
    assert isinstance(info.value, FileNotFoundError)


def test_simulated_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="cannot be read"):
        SimulatedProvider(gpus_file=tmp_path)


def test_usage_adds_load_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    gpus = [{"memory_total_mb": 1000, "external_memory_used_mb": 100, "external_load": 0.1}] * 3
    write_simulated_gpus(path, gpus)
    usage = {0: 0.5, 2: 1.0}
    g0, g1, g2 = SimulatedProvider(gpus_file=path, usage=lambda: usage).snapshot()
    assert (g0.memory_used_mb, g0.load) == (600.0, pytest.approx(0.6))
    assert (g1.memory_used_mb, g1.load) == (100.0, pytest.approx(0.1))
    assert (g2.memory_used_mb, g2.load) == (1000.0, 1.0)  # capped
    assert (g0.external_memory_used_mb, g0.external_load) == (100.0, 0.1)


# ---------------------------------------------------------------- re-reading the file


def _external(provider: SimulatedProvider) -> list[float | None]:
    return [g.external_load for g in provider.snapshot()]


def test_rewrite_is_seen_even_within_one_mtime_tick(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [{"external_load": 0.1}, {"external_load": 0.2}])
    provider = SimulatedProvider(gpus_file=path)
    assert _external(provider) == [0.1, 0.2]
    write_simulated_gpus(path, [{"external_load": 0.1}, {"external_load": 0.9}])  # same size
    assert _external(provider) == [0.1, 0.9]
    for load in (0.3, 0.4, 0.5):  # several writes between two readings
        write_simulated_gpus(path, [{"external_load": load}, {"external_load": 0.9}])
    assert _external(provider) == [0.5, 0.9]


def test_each_write_gets_a_later_mtime(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    mtimes = []
    for _ in range(5):
        write_simulated_gpus(path, [{}])
        mtimes.append(path.stat().st_mtime_ns)
    assert mtimes == sorted(set(mtimes))


def test_unchanged_file_is_not_reparsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [{}])
    provider = SimulatedProvider(gpus_file=path)
    parses: list[str] = []
    real = simulated_module.parse_simulated_gpus

    def counting(text: str, source: str = "") -> list[simulated_module.SimulatedGpu]:
        parses.append(source)
        return real(text, source)

    monkeypatch.setattr(simulated_module, "parse_simulated_gpus", counting)
    for _ in range(5):
        provider.snapshot()
    assert parses == []
    write_simulated_gpus(path, [{"external_load": 0.5}])
    provider.snapshot()
    provider.snapshot()
    assert parses == [str(path)]


def test_invalid_rewrite_keeps_previous_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [{"external_load": 0.2}])
    provider = SimulatedProvider(gpus_file=path)
    write_simulated_gpus(path, [{"external_load": 7}])
    with caplog.at_level(logging.WARNING, logger="nbsched.gpus.simulated"):
        assert _external(provider) == [0.2]
        assert _external(provider) == [0.2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "external_load=7" in warnings[0].getMessage()
    write_simulated_gpus(path, [{"external_load": 0.7}])
    assert _external(provider) == [0.7]


def test_deleted_file_keeps_previous_until_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [{"external_load": 0.2}])
    provider = SimulatedProvider(gpus_file=path)
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="nbsched.gpus.simulated"):
        assert _external(provider) == [0.2]
        assert _external(provider) == [0.2]
    assert len([r for r in caplog.records if "no such file" in r.getMessage()]) == 1
    write_simulated_gpus(path, [{"external_load": 0.4}])
    assert _external(provider) == [0.4]


def test_gpu_count_is_fixed_at_construction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [{}, {}])
    provider = SimulatedProvider(gpus_file=path)
    write_simulated_gpus(path, [{"external_load": 0.5}] * 3)
    with caplog.at_level(logging.WARNING, logger="nbsched.gpus.simulated"):
        assert _external(provider) == [0.5, 0.5]
    assert "count stays 2" in caplog.text


def test_write_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    for _ in range(3):
        write_simulated_gpus(path, [{}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpus.json"]
    assert json.loads(path.read_text()) == {"gpus": [{}]}


# ---------------------------------------------------------------- property tests

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_keys = st.sampled_from(simulated_module._KEYS) | st.text(max_size=5)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_gpu_entries = st.dictionaries(_keys, _scalars, max_size=4) | _json
_documents = st.fixed_dictionaries({"gpus": st.lists(_gpu_entries, max_size=4)}) | _json


@given(_documents)
def test_parse_raises_only_invalid_value_error(document: object) -> None:
    try:
        gpus = parse_simulated_gpus(json.dumps(document), "prop.json")
    except InvalidValueError as exc:
        assert "prop.json" in str(exc)
        return
    for gpu in gpus:
        assert 0 <= gpu.external_memory_used_mb <= gpu.memory_total_mb
        assert 0 <= gpu.external_load <= 1


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=50)
@given(st.binary(max_size=64) | _documents.map(lambda d: json.dumps(d).encode()))
def test_file_raises_only_documented_errors(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.mktemp("prop") / "gpus.json"
    path.write_bytes(content)
    try:
        provider = SimulatedProvider(gpus_file=path)
    except (InvalidValueError, MissingFileError):
        return
    assert len(provider.snapshot()) >= 1


_valid_gpu = st.builds(
    lambda total, used_frac, load: {
        "memory_total_mb": total,
        "external_memory_used_mb": total * used_frac,
        "external_load": load,
    },
    st.floats(1, 1e6),
    st.floats(0, 1),
    st.floats(0, 1),
)


@given(st.lists(_valid_gpu, min_size=1, max_size=8))
def test_valid_descriptions_round_trip(gpus: list[dict[str, float]]) -> None:
    parsed = parse_simulated_gpus(json.dumps({"gpus": gpus}))
    assert [g.external_load for g in parsed] == [g["external_load"] for g in gpus]


# ---------------------------------------------------------------- make_provider


@pytest.mark.usefixtures("no_nvidia_gpu")
def test_auto_picks_simulated_here_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="nbsched.gpus"):
        provider = make_provider("auto", num_gpus=None, simulated_gpus_file=None)
    assert provider.name == "simulated"
    note = provider.selection_note  # type: ignore[attr-defined]
    assert note.startswith("no NVIDIA GPU found") and "using 4 simulated GPUs" in note
    assert note in caplog.text


@pytest.mark.usefixtures("no_nvidia_gpu")
def test_auto_falling_back_to_simulated_gpus_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A notebook and a terminal show WARNING records, not INFO ones.
    with caplog.at_level(logging.INFO, logger="nbsched.gpus"):
        make_provider("auto", num_gpus=3, simulated_gpus_file=None)
        make_provider("simulated", num_gpus=3, simulated_gpus_file=None)  # chosen: no warning
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].name == "nbsched.gpus"
    text = warnings[0].getMessage()
    assert "no NVIDIA GPU found (nvml: " in text and "; gputil: " in text
    assert "using 3 simulated GPUs" in text


@pytest.mark.usefixtures("no_nvidia_gpu")
def test_a_front_end_that_shows_the_choice_gets_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="nbsched.gpus"):
        with provider_choice_shown_by_caller():
            provider = make_provider("auto", num_gpus=None, simulated_gpus_file=None)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert provider.selection_note in caplog.text  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_nvidia_gpu")
def test_demo_says_which_provider_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from nbsched import SchedulerConfig
    from nbsched.demo import run_demo

    with caplog.at_level(logging.WARNING, logger="nbsched"):
        assert run_demo(SchedulerConfig(state_dir=tmp_path / "s", num_gpus=2)) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("nbsched demo: no NVIDIA GPU found (nvml: ")
    assert first.endswith("using 2 simulated GPUs")
    assert [r.getMessage() for r in caplog.records if r.name == "nbsched.gpus"] == []


@pytest.mark.usefixtures("no_nvidia_gpu")
def test_auto_passes_num_gpus_file_and_usage_to_simulated(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [A100])
    provider = make_provider("auto", num_gpus=2, simulated_gpus_file=path, usage=lambda: {1: 1.0})
    assert [g.load for g in provider.snapshot()] == [0.0, 1.0]
    assert str(path) in provider.selection_note  # type: ignore[attr-defined]


def test_explicit_simulated() -> None:
    provider = make_provider("simulated", num_gpus=3, simulated_gpus_file=None)
    assert len(provider.snapshot()) == 3
    assert provider.selection_note == "using 3 simulated GPUs"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind, why", [("nvml", "NVML library"), ("gputil", "nvidia-smi")])
@pytest.mark.usefixtures("no_nvidia_gpu")
def test_explicit_unavailable_hardware_raises(kind: str, why: str) -> None:
    with pytest.raises(InvalidValueError, match=f"gpu_provider='{kind}'.*{why}.*'simulated'"):
        make_provider(kind, num_gpus=None, simulated_gpus_file=None)


def test_unknown_kind() -> None:
    with pytest.raises(InvalidValueError, match="gpu_provider='cuda'.*auto, nvml"):
        make_provider("cuda", num_gpus=None, simulated_gpus_file=None)


@pytest.mark.usefixtures("no_nvidia_gpu")
def test_nvml_unavailable_here_does_not_raise() -> None:
    provider = NvmlProvider()
    assert provider.is_available() is False
    assert provider.is_available() is False
    assert provider.unavailable_reason
    provider.close()


def test_auto_prefers_nvml_and_checks_the_count(fake_nvml: FakeNvml) -> None:
    provider = make_provider("auto", num_gpus=1, simulated_gpus_file=None, own_pids=set)
    assert provider.name == "nvml"
    assert provider.selection_note == "nvml sees 2 GPU(s): using 1"  # type: ignore[attr-defined]
    assert [g.index for g in provider.snapshot()] == [0]
    with pytest.raises(InvalidValueError, match="num_gpus=3: nvml sees only 2"):
        make_provider("nvml", num_gpus=3, simulated_gpus_file=None)
    assert fake_nvml.calls["nvmlShutdown"] == 1  # the refused provider was closed


def test_auto_falls_back_to_gputil(
    fake_gputil: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(NvmlProvider, "is_available", lambda self: False)
    provider = make_provider("auto", num_gpus=None, simulated_gpus_file=None)
    assert provider.name == "gputil"


# ---------------------------------------------------------------- NVML logic (fake library)


def test_nvml_inits_once_and_caches_handles(fake_nvml: FakeNvml) -> None:
    provider = NvmlProvider()
    assert provider.is_available()
    for _ in range(3):
        gpus = provider.snapshot()
    assert fake_nvml.calls["nvmlInit"] == 1
    assert fake_nvml.calls["nvmlDeviceGetHandleByIndex"] == 2
    assert [(g.uuid, g.name, g.memory_used_mb, g.load) for g in gpus] == [
        ("GPU-FAKE-0", "Fake H100", 1000.0, 0.1),
        ("GPU-FAKE-1", "Fake H100", 2000.0, 0.2),
    ]
    provider.close()
    provider.close()
    assert fake_nvml.calls["nvmlShutdown"] == 1


def test_nvml_failing_metric_is_none(fake_nvml: FakeNvml) -> None:
    fake_nvml.failing |= {("nvmlDeviceGetUtilizationRates", 1), ("nvmlDeviceGetUUID", 0)}
    g0, g1 = NvmlProvider().snapshot()
    assert g0.uuid is None and g0.load == 0.1
    assert g1.load is None and g1.external_load is None and g1.memory_used_mb == 2000.0


def test_nvml_device_without_handle(fake_nvml: FakeNvml) -> None:
    (g,) = NvmlProvider(indices=[5]).snapshot()
    assert g == GpuSnapshot(5, None, None, None, None, None)


def test_nvml_subtracts_own_processes(fake_nvml: FakeNvml) -> None:
    proc = types.SimpleNamespace
    fake_nvml.procs = {0: [proc(pid=10, usedGpuMemory=300 * MB), proc(pid=99, usedGpuMemory=MB)]}
    g0, g1 = NvmlProvider(own_pids=lambda: {10}).snapshot()
    assert (g0.memory_used_mb, g0.external_memory_used_mb, g0.external_load) == (1000, 700, None)
    assert (g1.external_memory_used_mb, g1.external_load) == (2000.0, 0.2)


def test_nvml_unknown_process_memory(fake_nvml: FakeNvml) -> None:
    fake_nvml.procs = {0: [types.SimpleNamespace(pid=10, usedGpuMemory=None)]}
    fake_nvml.failing.add(("nvmlDeviceGetComputeRunningProcesses", 1))
    fake_nvml.failing.add(("nvmlDeviceGetComputeRunningProcesses_v2", 1))
    g0, g1 = NvmlProvider(own_pids=lambda: {10}).snapshot()
    assert g0.external_memory_used_mb is None
    assert (g1.external_memory_used_mb, g1.external_load) == (None, None)


def test_nvml_reads_compute_and_graphics_processes_in_one_pass(fake_nvml: FakeNvml) -> None:
    proc = types.SimpleNamespace
    fake_nvml.procs = {0: [proc(pid=10, usedGpuMemory=300 * MB), proc(pid=11, usedGpuMemory=None)]}
    fake_nvml.graphics = {0: [proc(pid=12, usedGpuMemory=5 * MB), proc(pid=10, usedGpuMemory=MB)]}
    provider = NvmlProvider(own_pids=set)
    g0, g1 = provider.snapshot()
    provider.snapshot()
    assert [g.external_memory_used_mb for g in (g0, g1)] == [1000.0, 2000.0]
    assert [(p.pid, p.used_mb) for p in g0.processes or ()] == [(10, 300), (11, None), (12, 5)]
    assert g1.processes == ()
    assert fake_nvml.calls["nvmlInit"] == 1  # initialised once, however many passes


def test_gputil_says_once_that_per_job_memory_is_unknown(
    fake_gputil: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    provider = GputilProvider()
    with caplog.at_level(logging.WARNING, logger="nbsched.gpus.gputil"):
        provider.snapshot()
        provider.snapshot()
    said = [r.getMessage() for r in caplog.records if "process" in r.getMessage()]
    assert len(said) == 1 and "nvidia-ml-py" in said[0]
    assert all(g.processes is None for g in provider.snapshot())


# ---------------------------------------------------------------- GPUtil logic (fake module)


def test_gputil_reports_totals_as_external(fake_gputil: types.ModuleType) -> None:
    g0, g1, g2 = GputilProvider(indices=[0, 1, 2]).snapshot()
    assert (g0.memory_used_mb, g0.external_memory_used_mb, g0.load) == (2000.0, 2000.0, 0.25)
    assert g1.load is None and g1.external_load is None  # nvidia-smi said [N/A]
    assert g2 == GpuSnapshot(2, None, None, None, None, None)


def test_gputil_unavailable_without_nvidia_smi(
    fake_gputil: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nbsched.gpus.gputil.shutil.which", lambda name: None)
    provider = GputilProvider()
    assert provider.is_available() is False
    assert "nvidia-smi not found" in provider.unavailable_reason


def test_gputil_broken_nvidia_smi(fake_gputil: types.ModuleType) -> None:
    def broken() -> list[Any]:
        raise ValueError("invalid literal for int(): 'NVIDIA-SMI has failed'")

    fake_gputil.getGPUs = broken  # type: ignore[attr-defined]
    provider = GputilProvider()
    assert provider.is_available() is False
    with pytest.raises(RuntimeError, match="NVIDIA-SMI has failed"):
        provider.snapshot()


# ---------------------------------------------------------------- monitor


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingProvider:
    """Wraps a provider; counts snapshot calls; can be told to fail."""

    name = "counting"

    def __init__(self, inner: GPUProvider) -> None:
        self.inner = inner
        self.calls = 0
        self.error: Exception | None = None

    def is_available(self) -> bool:
        return True

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return tuple(self.inner.snapshot())

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def usage() -> dict[int, float]:
    return {}


@pytest.fixture
def counting(usage: Mapping[int, float]) -> CountingProvider:
    return CountingProvider(SimulatedProvider(num_gpus=2, usage=lambda: usage))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def monitor(counting: CountingProvider, clock: FakeClock) -> GPUMonitor:
    return GPUMonitor(counting, interval_s=1.0, clock=clock, wall_clock=lambda: 1e9 + clock.now)


def test_monitor_caches_for_one_interval(
    monitor: GPUMonitor, counting: CountingProvider, clock: FakeClock
) -> None:
    first = monitor.snapshot()
    clock.now += 0.99
    assert monitor.snapshot() is first and counting.calls == 1
    clock.now += 0.01
    assert monitor.snapshot() == first and counting.calls == 2
    assert monitor.snapshot(max_age_s=0) == first and counting.calls == 3
    monitor.invalidate()
    monitor.snapshot()
    assert counting.calls == 4
    assert [t for t, _ in monitor.history] == [1e9 + 100.0, 1e9 + 101.0, 1e9 + 101.0, 1e9 + 101.0]


def test_monitor_history_is_bounded(counting: CountingProvider, clock: FakeClock) -> None:
    monitor = GPUMonitor(counting, interval_s=1.0, clock=clock, history_len=3)
    for _ in range(5):
        monitor.snapshot()
        clock.now += 1
    assert len(monitor.history) == 3 and len(monitor.history_items()) == 3


def test_monitor_keeps_previous_reading_on_error(
    monitor: GPUMonitor,
    counting: CountingProvider,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = monitor.snapshot()
    counting.error = RuntimeError("driver went away")
    with caplog.at_level(logging.ERROR, logger="nbsched.gpus.monitor"):
        for _ in range(3):
            clock.now += 1
            assert monitor.snapshot() is first
    assert counting.calls == 4
    assert caplog.text.count("driver went away") == 1
    assert isinstance(monitor.last_error, RuntimeError)
    assert len(monitor.history) == 1
    counting.error = None
    clock.now += 1
    assert monitor.snapshot() is not first and monitor.last_error is None


def test_monitor_error_before_any_reading_propagates(
    monitor: GPUMonitor, counting: CountingProvider
) -> None:
    counting.error = RuntimeError("no GPUs")
    with pytest.raises(RuntimeError, match="no GPUs"):
        monitor.snapshot()
    counting.error = None
    assert len(monitor.snapshot()) == 2  # retried at once, no interval to wait
    assert counting.calls == 2


def test_monitor_subscribers(monitor: GPUMonitor, clock: FakeClock) -> None:
    seen: list[tuple[GpuSnapshot, ...]] = []

    def broken(reading: tuple[GpuSnapshot, ...]) -> None:
        raise ValueError("subscriber bug")

    monitor.subscribe(broken)
    unsubscribe = monitor.subscribe(seen.append)
    first = monitor.snapshot()
    monitor.snapshot()  # cached: nobody told
    clock.now += 5
    second = monitor.snapshot()
    assert seen == [first, second]
    unsubscribe()
    unsubscribe()
    monitor.invalidate()
    monitor.snapshot()
    assert len(seen) == 2


def test_monitor_changed_since(
    monitor: GPUMonitor, clock: FakeClock, tmp_path: Path, usage: dict[int, float]
) -> None:
    path = tmp_path / "gpus.json"
    write_simulated_gpus(path, [{}, {}])
    file_monitor = GPUMonitor(SimulatedProvider(gpus_file=path), 1.0, clock=clock)
    before = file_monitor.snapshot()
    assert not file_monitor.changed_since(before)
    write_simulated_gpus(path, [{}, {"external_load": 0.95}])
    clock.now += 1
    file_monitor.snapshot()
    assert file_monitor.changed_since(before)
    # our own jobs' usage is not external: no change
    first = monitor.snapshot()
    usage[0] = 1.0
    monitor.invalidate()
    assert monitor.snapshot()[0].load == 1.0 and not monitor.changed_since(first)


def test_external_usage_changed_tolerances() -> None:
    a = GpuSnapshot(0, None, None, 10.0, 100.0, 0.5, 10.0, 0.5)
    assert not external_usage_changed([a], [a])
    assert external_usage_changed([a], [])
    b = GpuSnapshot(0, None, None, 10.5, 100.0, 0.505, 10.5, 0.505)
    assert not external_usage_changed([a], [b])
    c = GpuSnapshot(0, None, None, 10.0, 100.0, None, 10.0, None)
    assert external_usage_changed([a], [c])


def test_monitor_reads_once_for_concurrent_callers(
    monitor: GPUMonitor, counting: CountingProvider
) -> None:
    results: list[tuple[GpuSnapshot, ...]] = []
    start = threading.Barrier(8)

    def read() -> None:
        start.wait()
        results.append(monitor.snapshot())

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counting.calls == 1 and len(results) == 8


def test_monitor_rejects_negative_interval(counting: CountingProvider) -> None:
    with pytest.raises(InvalidValueError, match="interval_s"):
        GPUMonitor(counting, interval_s=-1)
