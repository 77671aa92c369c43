"""``%load_ext nbsched``: register the ``%gpusched`` magics; unloading stops the engine."""

from __future__ import annotations

from typing import Any

from .magics import GpuschedMagics

#: The magics instance of each shell that loaded the extension.
_LOADED: dict[int, GpuschedMagics] = {}


def load_ipython_extension(ipython: Any) -> None:
    if id(ipython) in _LOADED:
        return
    magics = GpuschedMagics(ipython)
    ipython.register_magics(magics)
    _LOADED[id(ipython)] = magics


def unload_ipython_extension(ipython: Any) -> None:
    """Close the widgets, stop the scheduler ``%gpusched start`` made, drop the magics."""
    magics = _LOADED.pop(id(ipython), None)
    if magics is None:
        return
    magics.shutdown()
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        if manager.magics[kind].get("gpusched") is not None:
            del manager.magics[kind]["gpusched"]
    manager.registry.pop(type(magics).__name__, None)


def magics_of(ipython: Any) -> GpuschedMagics | None:
    """The loaded ``%gpusched`` magics of a shell (``None`` if not loaded)."""
    return _LOADED.get(id(ipython))
