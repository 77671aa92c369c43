"""The original program's public surface, on nbsched's engine.

``from nbsched.compat import GPUJobScheduler`` in place of the original's import, and
code written for it runs; ``python -m nbsched.compat start|add|status|pause|resume|
screens`` is its command.  See :mod:`nbsched.compat.scheduler` and
:mod:`nbsched.compat.cli`; the README's "Coming from the original scheduler" maps
every call, flag and file.
"""

from __future__ import annotations

from .scheduler import GPUJobScheduler

__all__ = ["GPUJobScheduler"]
