"""The progress bar of ``GPUJobScheduler.wait``.

``tqdm.auto`` picks tqdm's notebook bar (an ipywidgets one) inside a Jupyter kernel
and its plain text bar elsewhere; tqdm itself does the Jupyter detection, so this
engine module imports nothing from Jupyter.  By default the bar is on only when
someone watches: in a Jupyter kernel, or when stderr is a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any


def in_jupyter_kernel() -> bool:
    """Whether this process is a Jupyter kernel (looked up, never imported)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    config = getattr(shell, "config", None)
    return config is not None and "IPKernelApp" in config


def wanted(progress: bool | None) -> bool:
    """``progress`` if given, else whether a person is likely watching."""
    if progress is not None:
        return bool(progress)
    if in_jupyter_kernel():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class WaitProgress:
    """How many of the awaited jobs have ended, as a bar (or nothing when disabled)."""

    def __init__(self, total: int, enabled: bool, **tqdm_kwargs: Any) -> None:
        self._bar: Any = None
        self._shown: tuple[int, str] | None = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="jobs ended", unit="job", **tqdm_kwargs)

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def update(self, done: int, counts: Mapping[str, int]) -> None:
        if self._bar is None:
            return
        postfix = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        if self._shown == (done, postfix):
            return
        self._shown = (done, postfix)
        self._bar.n = done
        self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """Close the bar (tqdm's notebook bar turns red when not every job ended)."""
        if self._bar is None:
            return
        self._bar.close()
        self._bar = None
