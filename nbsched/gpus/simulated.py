"""Simulated GPUs for laptops, CI and demos.

The GPUs can be described in a JSON file that is re-read when it changes, so a
test or a second process can script "GPU 2 is now 95% used by someone else"::

    {"gpus": [{"name": "Simulated A100 80GB", "memory_total_mb": 81920,
               "external_memory_used_mb": 0, "external_load": 0.0}]}
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbsched.errors import InvalidTypeError, InvalidValueError, MissingFileError

from .base import GpuSnapshot

logger = logging.getLogger(__name__)

DEFAULT_NUM_GPUS = 4
_KEYS = ("name", "memory_total_mb", "external_memory_used_mb", "external_load")

#: What identifies one version of a file without reading it: (mtime_ns, size, inode, device).
FileSignature = tuple[int, int, int, int]


@dataclass(frozen=True)
class SimulatedGpu:
    """One simulated GPU as the file describes it."""

    name: str = "Simulated GPU"
    memory_total_mb: float = 81920.0
    external_memory_used_mb: float = 0.0
    external_load: float = 0.0


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
    if used > total:
        raise InvalidValueError(
            f"simulated GPUs file {where}: external_memory_used_mb={used:g} is more than "
            f"memory_total_mb={total:g}"
        )
    if load > 1:
        raise InvalidValueError(
            f"simulated GPUs file {where}: external_load={load:g} must be in [0, 1]"
        )
    return SimulatedGpu(name, total, used, load)


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
    ) -> None:
        if num_gpus is not None:
            if isinstance(num_gpus, bool) or not isinstance(num_gpus, int):
                raise InvalidTypeError(f"num_gpus={num_gpus!r}: expected a whole number >= 1")
            if num_gpus < 1:
                raise InvalidValueError(f"num_gpus={num_gpus!r}: must be >= 1")
        self.selection_note = ""
        self.node = node
        self._usage = usage
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
        used = dict(self._usage()) if self._usage is not None else {}
        node = self.node or "local"
        result = []
        for index, gpu in enumerate(gpus):
            fraction = min(1.0, max(0.0, float(used.get(index, 0.0))))
            result.append(
                GpuSnapshot(
                    index=index,
                    uuid=f"GPU-SIM-{node}-{index}",
                    name=gpu.name,
                    memory_used_mb=min(
                        gpu.memory_total_mb,
                        gpu.external_memory_used_mb + fraction * gpu.memory_total_mb,
                    ),
                    memory_total_mb=gpu.memory_total_mb,
                    load=min(1.0, gpu.external_load + fraction),
                    external_memory_used_mb=gpu.external_memory_used_mb,
                    external_load=gpu.external_load,
                    node=self.node,
                )
            )
        return tuple(result)

    def close(self) -> None:
        """Nothing to release."""
