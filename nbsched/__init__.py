"""nbsched: a GPU job scheduler that lives in a Jupyter kernel.

``from nbsched import GPUJobScheduler, SchedulerConfig`` is the public API;
``%load_ext nbsched`` registers the ``%gpusched`` magics.
"""

from __future__ import annotations

from typing import Any

from .config import SchedulerConfig
from .errors import NbschedError
from .gpus import provider_choice_shown_by_caller
from .jobs import JobStatus
from .notify import Email, JobEnd, Webhook
from .scheduler import GPUJobScheduler

__all__ = [
    "Email",
    "GPUJobScheduler",
    "JobEnd",
    "JobStatus",
    "NbschedError",
    "SchedulerConfig",
    "Webhook",
    "provider_choice_shown_by_caller",
]
__version__ = "0.1.0.dev0"


def load_ipython_extension(ipython: Any) -> None:
    from .jupyter.extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .jupyter.extension import unload_ipython_extension as unload

    unload(ipython)
