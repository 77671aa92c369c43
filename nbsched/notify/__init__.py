"""Notifications of ended jobs: ``on_end=`` callables in the submitting process, and
notifiers (:class:`Webhook`, :class:`Email`) the engine sends to, per job, per sweep,
or by default (``SchedulerConfig(notify=...)``).

- :mod:`.targets`: the notifiers and the ``notify=`` argument;
- :mod:`.message`: what a notification says (:class:`JobEnd`, a sweep's summary);
- :mod:`.send`: one webhook POST or one mail;
- :mod:`.deliver`: the engine's outbox reader and sender (retries, notices);
- :mod:`.callbacks`: the ``on_end`` callables of this process's jobs;
- :mod:`.api`: the scheduler's side (a mixin of ``GPUJobScheduler``).
"""

from .message import JobEnd
from .targets import Email, Webhook

__all__ = ["Email", "JobEnd", "Webhook"]
