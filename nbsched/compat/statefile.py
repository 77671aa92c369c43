"""The original program's two records: its state file, and its log of the jobs it ran.

The state file (``gpu_scheduler_state.json`` by default) is the JSON object the
original wrote after each change, in both the version its write-up describes and its
latest::

    {"gpu_status": [1.0, 0.5, 0.0, 0.0], "paused_gpus": [2]}

``gpu_status`` is each GPU's allocated fraction when it last wrote the file (jobs
that were running then); ``paused_gpus`` the GPUs paused by hand.  Its ``pause`` and
``resume`` commands edit ``paused_gpus``, and the running program re-read it every
``state_check_interval`` seconds; this module reads and writes it the same way.

The state file keeps no list of jobs: the original kept those in memory only.  What
it kept of the jobs it ran is its log (``gpu_scheduler.log`` in the folder it ran
in), where each job that ended says::

    ... finished due to direct execution completion (Success: True) in 9.61 seconds.
    Success: True. Releasing allocation (Req: 1.00). [Original Line: 0,train.py,env,--lr 1]

:func:`lines_run` finds the jobs-file lines of those that succeeded (a failed one the
original queued again, so it is not "run").
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_STATE_FILE = "gpu_scheduler_state.json"
DEFAULT_LOG_FILE = "gpu_scheduler.log"

_SUCCEEDED = re.compile(
    r"finished due to .* Success: True\. Releasing allocation \(Req: [0-9.]+\)\. "
    r"\[Original Line: (?P<line>.*)\]\s*$"
)


@dataclass(frozen=True)
class OriginalState:
    """What an original state file holds."""

    gpu_status: tuple[float, ...] = ()
    paused_gpus: tuple[int, ...] = ()

    def running_when_written(self) -> list[int]:
        """The GPUs that had jobs allocated when the file was last written."""
        return [gpu for gpu, share in enumerate(self.gpu_status) if share > 0.01]


def read_state(path: str | os.PathLike[str]) -> OriginalState | None:
    """The state file's content; ``None`` when there is none.  A file that is not the
    original's JSON is logged as an error and read as empty, as the original did."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        status = tuple(max(0.0, min(1.0, float(s))) for s in raw.get("gpu_status", []))
        paused = tuple(sorted({int(g) for g in raw.get("paused_gpus", []) if int(g) >= 0}))
    except (OSError, ValueError, TypeError) as exc:
        logger.error("Failed to load state from '%s': %s. Starting fresh.", p, exc)
        return OriginalState()
    return OriginalState(status, paused)


def write_state(path: str | os.PathLike[str], state: OriginalState) -> None:
    """Write the state file as the original did (indented JSON, replaced atomically)."""
    p = Path(path)
    data = {
        "gpu_status": [round(s, 4) for s in state.gpu_status],
        "paused_gpus": sorted(set(state.paused_gpus)),
    }
    temp = p.with_name(f"{p.name}.tmp_{os.getpid()}")
    try:
        temp.write_text(json.dumps(data, indent=4))
        os.replace(temp, p)
    finally:
        if temp.exists():
            temp.unlink()


def with_pause(state: OriginalState | None, num_gpus: int, gpu: int, pause: bool) -> OriginalState:
    """``state`` with ``gpu`` paused or resumed (and ``gpu_status`` as long as ``num_gpus``)."""
    state = state or OriginalState()
    status = list(state.gpu_status[:num_gpus])
    status += [0.0] * (num_gpus - len(status))
    paused = set(state.paused_gpus)
    if pause:
        paused.add(gpu)
    else:
        paused.discard(gpu)
    return OriginalState(tuple(status), tuple(sorted(paused)))


def lines_run(log_path: str | os.PathLike[str]) -> list[str]:
    """The jobs-file lines the original's log says ran to success, in order, once each."""
    p = Path(log_path)
    if not p.is_file():
        return []
    found: dict[str, None] = {}
    with p.open(encoding="utf-8", errors="replace") as fh:
        for text in fh:
            match = _SUCCEEDED.search(text)
            if match:
                found.setdefault(match.group("line").strip(), None)
    return list(found)


__all__ = [
    "DEFAULT_LOG_FILE",
    "DEFAULT_STATE_FILE",
    "OriginalState",
    "lines_run",
    "read_state",
    "with_pause",
    "write_state",
]
