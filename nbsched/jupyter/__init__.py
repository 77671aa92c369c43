"""The notebook front end: ``%gpusched`` magics, the submission form, the dashboard.

Only this package (and the CLI) imports IPython, ipywidgets and matplotlib; it
reaches the engine through the public :class:`nbsched.GPUJobScheduler` API.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Dashboard", "StatusReport", "SubmitForm", "status_report"]


def __getattr__(name: str) -> Any:  # import widgets and matplotlib only when used
    if name == "SubmitForm":
        from .form import SubmitForm

        return SubmitForm
    if name == "Dashboard":
        from .dashboard import Dashboard

        return Dashboard
    if name in ("StatusReport", "status_report"):
        from . import status

        return getattr(status, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
