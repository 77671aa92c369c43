"""Simulated GPUs for laptops, CI and demos.

The GPUs can be described in a JSON file that is re-read when it changes, so a
test or a second process can script "GPU 2 is now 95% used by someone else"::

    {"gpus": [{"name": "Simulated A100 80GB", "memory_total_mb": 81920,
               "external_memory_used_mb": 0, "external_load": 0.0,
               "processes": [{"pid": 4242, "user": "alice", "command": "vllm serve",
                              "memory_mb": 20000}]}]}

A GPU's ``processes`` are other people's programs on it (a ``pid`` or a ``user`` or
both, a ``command``, ``memory_mb``); their memory is part of the GPU's
``external_memory_used_mb`` (which is their sum where the key is left out).

A running nbsched job is a process on each of its GPUs (its root pid), holding what
it wrote to the file ``$NBSCHED_RESULT_FILE.gpu_memory`` (MiB, a number; see
:func:`report_memory`); until it does, the process's memory is unknown (None) and the
GPU's use counts its booked share of the memory, as before processes were listed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbsched.errors import InvalidTypeError, InvalidValueError, MissingFileError

from .base import GpuProcess, GpuSnapshot

logger = logging.getLogger(__name__)

DEFAULT_NUM_GPUS = 4
_KEYS = ("name", "memory_total_mb", "external_memory_used_mb", "external_load", "processes")
_PROCESS_KEYS = ("pid", "user", "command", "memory_mb")
#: Appended to a job's ``NBSCHED_RESULT_FILE``: the file it writes its simulated use to.
MEMORY_FILE_SUFFIX = ".gpu_memory"

#: What identifies one version of a file without reading it: (mtime_ns, size, inode, device).
FileSignature = tuple[int, int, int, int]


@dataclass(frozen=True)
class SimulatedProcess:
    """Someone else's process on a simulated GPU, as the file describes it."""

    pid: int | None
    user: str | None
    command: str
    memory_mb: float


@dataclass(frozen=True)
class SimulatedGpu:
    """One simulated GPU as the file describes it."""

    name: str = "Simulated GPU"
    memory_total_mb: float = 81920.0
    external_memory_used_mb: float = 0.0
    external_load: float = 0.0
    processes: tuple[SimulatedProcess, ...] = ()


@dataclass(frozen=True)
class SimulatedJob:
    """A running nbsched job as the simulated provider sees it: its id, its GPUs,
    its root pid, the share of each GPU it books, and its result file."""

    id: str
    gpus: tuple[int, ...]
    pid: int | None
    share: float
    result_file: str | None = None


def report_memory(mib: float, environ: Mapping[str, str] | None = None) -> None:
    """From inside a job: make ``mib`` MiB its simulated GPU memory use (on each of
    its GPUs), by writing ``$NBSCHED_RESULT_FILE.gpu_memory``."""
    env = os.environ if environ is None else environ
    target = env["NBSCHED_RESULT_FILE"] + MEMORY_FILE_SUFFIX
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{target}.{os.getpid()}.tmp"
    Path(tmp).write_text(f"{float(mib):g}\n", encoding="ascii")
    os.replace(tmp, target)


def parse_simulated_gpus(text: str, source: str = "<string>") -> list[SimulatedGpu]:
    """Parse a simulated-GPUs JSON document; raise InvalidValueError naming the problem."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidValueError(f"simulated GPUs file {source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise InvalidValueError(
            f'simulated GPUs file {source}: expected an object like {{"gpus": [{{...}}, ...]}}'
        )
    if not data["gpus"]:
        raise InvalidValueError(f'simulated GPUs file {source}: "gpus" lists no GPU')
    return [_parse_gpu(entry, f"{source}: gpus[{i}]") for i, entry in enumerate(data["gpus"])]


def _parse_gpu(entry: object, where: str) -> SimulatedGpu:
    if not isinstance(entry, dict):
        raise InvalidValueError(f"simulated GPUs file {where}: expected an object, got {entry!r}")
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if unknown:
        raise InvalidValueError(
            f"simulated GPUs file {where}: unknown key(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(_KEYS)}"
        )
    default = SimulatedGpu()
    name = entry.get("name", default.name)
    if not isinstance(name, str) or not name:
        raise InvalidValueError(f"simulated GPUs file {where}: name={name!r}: expected a string")
    total = _number(entry, "memory_total_mb", default.memory_total_mb, where)
    used = _number(entry, "external_memory_used_mb", default.external_memory_used_mb, where)
    load = _number(entry, "external_load", default.external_load, where)
    if total <= 0:
        raise InvalidValueError(f"simulated GPUs file {where}: memory_total_mb must be > 0")
    if load > 1:
        raise InvalidValueError(
            f"simulated GPUs file {where}: external_load={load:g} must be in [0, 1]"
        )
    procs = entry.get("processes", [])
    if not isinstance(procs, list):
        raise InvalidValueError(f"simulated GPUs file {where}: processes must be a list")
    processes = tuple(_parse_process(p, f"{where}.processes[{i}]") for i, p in enumerate(procs))
    theirs = sum(p.memory_mb for p in processes)
    if "external_memory_used_mb" not in entry:
        used = theirs
    elif used + 0.5 < theirs:
        raise InvalidValueError(
            f"simulated GPUs file {where}: external_memory_used_mb={used:g} is less than "
            f"its processes' memory ({theirs:g})"
        )
    if used > total:
        raise InvalidValueError(
            f"simulated GPUs file {where}: external_memory_used_mb={used:g} is more than "
            f"memory_total_mb={total:g}"
        )
    return SimulatedGpu(name, total, used, load, processes)


def _parse_process(entry: object, where: str) -> SimulatedProcess:
    if not isinstance(entry, dict):
        raise InvalidValueError(f"simulated GPUs file {where}: expected an object, got {entry!r}")
    unknown = sorted(str(k) for k in entry if k not in _PROCESS_KEYS)
    if unknown:
        raise InvalidValueError(
            f"simulated GPUs file {where}: unknown key(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(_PROCESS_KEYS)}"
        )
    pid, user, command = entry.get("pid"), entry.get("user"), entry.get("command", "")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 1):
        raise InvalidValueError(f"simulated GPUs file {where}: pid={pid!r}: expected a number >= 1")
    if user is not None and (not isinstance(user, str) or not user):
        raise InvalidValueError(f"simulated GPUs file {where}: user={user!r}: expected a name")
    if pid is None and user is None:
        raise InvalidValueError(f"simulated GPUs file {where}: give a pid or a user (or both)")
    if not isinstance(command, str):
        raise InvalidValueError(f"simulated GPUs file {where}: command={command!r}: expected text")
    if "memory_mb" not in entry:
        raise InvalidValueError(f"simulated GPUs file {where}: memory_mb is missing")
    return SimulatedProcess(pid, user, command, _number(entry, "memory_mb", 0.0, where))


def _number(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValueError(f"simulated GPUs file {where}: {key}={value!r}: expected a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise InvalidValueError(
            f"simulated GPUs file {where}: {key}={value!r}: expected a finite number >= 0"
        )
    return number


def _signature(path: str) -> FileSignature:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _read(path: str) -> tuple[FileSignature, list[SimulatedGpu]]:
    """Stat, then read and parse (in that order, so a write in between is seen next time)."""
    try:
        signature = _signature(path)
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise MissingFileError(f"simulated GPUs file {path}: no such file") from None
    except OSError as exc:
        raise InvalidValueError(f"simulated GPUs file {path}: cannot be read ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValueError(f"simulated GPUs file {path}: not UTF-8 text ({exc})") from None
    return signature, parse_simulated_gpus(text, path)


def write_simulated_gpus(path: str | os.PathLike[str], gpus: list[dict[str, Any]]) -> None:
    """Write a simulated-GPUs file atomically (temp file + ``os.replace``).

    The content is not validated (tests use this to write bad files too).  The new
    file's mtime is made later than the old one's, so a reader comparing stat
    signatures sees every write, even two within one mtime tick.
    """
    target = Path(path)
    text = json.dumps({"gpus": gpus}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            old = os.stat(target).st_mtime_ns
        except FileNotFoundError:
            old = None
        if old is not None:
            for bump in (1, 1_000_000_000):  # 1 ns, then 1 s for coarse file systems
                if os.stat(tmp).st_mtime_ns > old:
                    break
                os.utime(tmp, ns=(old + bump, old + bump))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SimulatedProvider:
    """N simulated GPUs; load and memory are what the file says others use plus ``usage()``.

    ``usage()`` maps a GPU index to the fraction of it given to nbsched jobs.  The
    number of GPUs is fixed at construction: ``num_gpus`` if given (the file's list
    is cut or padded with default GPUs), else the file's count, else 4.
    """

    name = "simulated"

    def __init__(
        self,
        num_gpus: int | None = None,
        gpus_file: str | os.PathLike[str] | None = None,
        usage: Callable[[], Mapping[int, float]] | None = None,
        node: str | None = None,
        jobs: Callable[[], Iterable[SimulatedJob]] | None = None,
    ) -> None:
        if num_gpus is not None:
            if isinstance(num_gpus, bool) or not isinstance(num_gpus, int):
                raise InvalidTypeError(f"num_gpus={num_gpus!r}: expected a whole number >= 1")
            if num_gpus < 1:
                raise InvalidValueError(f"num_gpus={num_gpus!r}: must be >= 1")
        self.selection_note = ""
        self.node = node
        self._usage = usage
        self._jobs = jobs
        self._lock = threading.Lock()
        self._file = os.fspath(gpus_file) if gpus_file is not None else None
        self._signature: FileSignature | None = None
        gpus: list[SimulatedGpu] = []
        if self._file is not None:
            self._signature, gpus = _read(self._file)
        self._explicit_count = num_gpus is not None
        self._count = num_gpus or len(gpus) or DEFAULT_NUM_GPUS
        self._gpus = self._fit(gpus)

    @property
    def gpus_file(self) -> str | None:
        return self._file

    @property
    def num_gpus(self) -> int:
        return self._count

    def _fit(self, gpus: list[SimulatedGpu]) -> tuple[SimulatedGpu, ...]:
        gpus = gpus[: self._count]
        return tuple(gpus) + (SimulatedGpu(),) * (self._count - len(gpus))

    def is_available(self) -> bool:
        return True

    def describe(self) -> tuple[SimulatedGpu, ...]:
        """The GPUs as currently described (re-reading the file if it changed)."""
        with self._lock:
            self._refresh()
            return self._gpus

    def _refresh(self) -> None:
        if self._file is None:
            return
        try:
            signature: FileSignature | None = _signature(self._file)
        except OSError:
            signature = None  # missing or unreadable: reported once by _read below
        if signature == self._signature:
            return
        # Remember this version even if it is bad, so it is not re-parsed (and re-logged).
        self._signature = signature
        try:
            _, gpus = _read(self._file)
        except (OSError, InvalidValueError) as exc:
            logger.warning("%s; keeping the previous simulated GPUs", exc)
            return
        if not self._explicit_count and len(gpus) != self._count:
            logger.warning(
                "simulated GPUs file %s now lists %d GPU(s); the count stays %d",
                self._file,
                len(gpus),
                self._count,
            )
        self._gpus = self._fit(gpus)

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        gpus = self.describe()
        used = dict(self._usage()) if self._usage is not None and self._jobs is None else {}
        ours: dict[int, list[GpuProcess]] = {}
        held: dict[int, float] = {}  # (GPU -> MiB the jobs hold, reported or their share)
        if self._jobs is not None:
            for job in self._jobs():
                _job_processes(job, gpus, used, ours, held)
        node = self.node or "local"
        result = []
        for index, gpu in enumerate(gpus):
            fraction = min(1.0, max(0.0, float(used.get(index, 0.0))))
            mine = ours.get(index, [])
            jobs_mb = (
                held.get(index, 0.0) if self._jobs is not None else fraction * gpu.memory_total_mb
            )
            theirs = tuple(
                GpuProcess(index, p.pid, p.memory_mb, p.user, p.command) for p in gpu.processes
            )
            result.append(
                GpuSnapshot(
                    index=index,
                    uuid=f"GPU-SIM-{node}-{index}",
                    name=gpu.name,
                    memory_used_mb=min(gpu.memory_total_mb, gpu.external_memory_used_mb + jobs_mb),
                    memory_total_mb=gpu.memory_total_mb,
                    load=min(1.0, gpu.external_load + fraction),
                    external_memory_used_mb=gpu.external_memory_used_mb,
                    external_load=gpu.external_load,
                    node=self.node,
                    processes=theirs + tuple(mine),
                )
            )
        return tuple(result)

    def close(self) -> None:
        """Nothing to release."""


def _job_processes(
    job: SimulatedJob,
    gpus: tuple[SimulatedGpu, ...],
    used: dict[int, float],
    ours: dict[int, list[GpuProcess]],
    held: dict[int, float],
) -> None:
    """Add ``job``'s share to ``used``, what it holds to ``held`` (what it reported,
    :func:`report_memory`, else its share of the memory) and its process on each of
    its GPUs to ``ours``: with what it reported, else unknown memory (None)."""
    reported = _reported(job.result_file)
    for g in job.gpus:
        if not 0 <= g < len(gpus):
            continue
        total = gpus[g].memory_total_mb
        mb = min(reported, total) if reported is not None else None
        used[g] = used.get(g, 0.0) + job.share
        held[g] = held.get(g, 0.0) + (mb if mb is not None else job.share * total)
        if job.pid is not None:  # (its start not recorded yet: no pid to show)
            ours.setdefault(g, []).append(GpuProcess(g, job.pid, mb))


def _reported(result_file: str | None) -> float | None:
    if result_file is None:
        return None
    try:
        with open(result_file + MEMORY_FILE_SUFFIX, "rb") as fh:
            value = float(fh.read(64).decode("ascii", "replace").strip())
    except (OSError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None
