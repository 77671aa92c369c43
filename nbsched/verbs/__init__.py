"""The verb table shared by the ``nbsched`` command and the ``%gpusched`` magics
(front-end level: it imports the public API only)."""

from __future__ import annotations

from .options import BOTH, CLI, ENGINE_OPTIONS, MAGIC, RUN_OPTIONS, Arg
from .simulating import show_simulation
from .table import VERBS, Verb, glue_dash_values, verbs_of

__all__ = [
    "BOTH",
    "CLI",
    "ENGINE_OPTIONS",
    "MAGIC",
    "RUN_OPTIONS",
    "VERBS",
    "Arg",
    "Verb",
    "glue_dash_values",
    "show_simulation",
    "verbs_of",
]
