"""The dispatcher: the loop that starts queued jobs and records how they end.

- :mod:`.loop`: the :class:`Dispatcher` thread; one turn is ``cycle(now, mono)``.
- :mod:`.queue`: its cache of the queued and running jobs, and the back-off waits.
- :mod:`.starts`: the executors, spawning, and the pids written a turn later.
- :mod:`.ends`: the pure decision between a retry and a final status; the back-off.
- :mod:`.recovery`: adopting the jobs of a dispatcher that crashed.
"""

from .loop import SAFETY_NET_S, Dispatcher

__all__ = ["SAFETY_NET_S", "Dispatcher"]
