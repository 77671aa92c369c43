"""A replay of a workload on a virtual clock, through the dispatcher's own
:func:`nbsched.allocation.plan` (the function itself, not a copy of it).

:func:`replay` runs :class:`SimJob` s (arrival, GPUs, duration, estimate) on N GPUs and
returns when each started and ended; :mod:`.workload` reads them from a trace (the
Tiresias CSV, or a table such as ``jobs()`` writes) or generates a mix; :mod:`.report`
turns a replay into the figures ``nbsched simulate`` prints.
"""

from __future__ import annotations

from .clock import Outcome, Replay, SimJob, replay
from .queue import queue_replay
from .report import Figures, figures
from .workload import generated_mix, read_trace

__all__ = [
    "Figures",
    "Outcome",
    "Replay",
    "SimJob",
    "figures",
    "generated_mix",
    "queue_replay",
    "read_trace",
    "replay",
]
