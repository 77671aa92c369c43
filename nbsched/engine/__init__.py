"""The engine's life, apart from the public API that drives it.

* :mod:`~nbsched.engine.core`: :class:`~nbsched.engine.core.Engine`, this process's
  parts wired together (GPU provider and monitor, executors, role, record), and the
  one place the dispatcher is made;
* :mod:`~nbsched.engine.lease`: who dispatches for a state directory (an OS file lock),
  and the FIFO through which any process wakes the dispatcher;
* :mod:`~nbsched.engine.role`: one process's part, the dispatcher while it holds the
  lease, a standby that takes it over otherwise;
* :mod:`~nbsched.engine.record`: what the dispatching engine publishes of itself in the
  store, so other processes validate and explain jobs as it would;
* :mod:`~nbsched.engine.registry`: which GPU provider and executors a config names;
* :mod:`~nbsched.engine.control`: cancelling a job and queueing it again, from any process.
* :mod:`~nbsched.engine.events`: the jobs' starts and ends since a reader's last look
  (``GPUJobScheduler.job_events()``, ``nbsched serve``'s lines), from the change feed.
"""
