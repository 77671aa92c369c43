"""The SQLite store: jobs, their state transitions, GPU pauses, notices and sweeps.

The database (``state_dir/state.db``, WAL mode) is the one source of truth.  The
package is one question per module:

- :mod:`.statedir`: the state directory, private or refused;
- :mod:`.connection`: the connections, the one retry loop, SQLite's errors in words;
- :mod:`.schema`: the tables and their version;
- :mod:`.rows`: the job columns (written once, from the dataclasses), encode/decode;
- :mod:`.jobs`: adding, reading and moving jobs (the columns a transition may set);
- :mod:`.adding`: a submission's rows, a chunk at a time, and what is kept of each;
- :mod:`.queue_read`: the queue in dispatch order, a page at a time;
- :mod:`.feed`: the change feed (what was written since a revision);
- :mod:`.attempts`: the dispatcher's writes of attempts starting and ending;
- :mod:`.meta`: GPU pauses, notices, key-values, sweeps;
- :mod:`.deps`: dependencies (which jobs wait for which).
- :mod:`.durations`: how long jobs that succeeded ran; :mod:`.estimates`: estimates;
- :mod:`.notifications`: the outbox of notifications to send.

:class:`Store` puts the parts together over one :class:`~.connection.Database`.
"""

from __future__ import annotations

from pathlib import Path

from .attempts import AttemptEnd, AttemptsPart, AttemptStart
from .connection import Database
from .deps import DepsPart
from .durations import DurationsPart
from .feed import Change, ChangeFeed, FeedPart
from .jobs import JobsPart
from .memory import MemoryPart
from .meta import SWEEP_PREFIX, MetaPart
from .notifications import NotificationsPart
from .queue_read import QueueReadPart
from .rows import SETTABLE, TABLE_COLUMNS, parse_job_id
from .schema import SCHEMA_VERSION
from .statedir import create_private_file, prepare_state_dir

__all__ = [
    "SCHEMA_VERSION",
    "SETTABLE",
    "SWEEP_PREFIX",
    "TABLE_COLUMNS",
    "AttemptEnd",
    "AttemptStart",
    "Change",
    "ChangeFeed",
    "Store",
    "create_private_file",
    "parse_job_id",
    "prepare_state_dir",
]


class Store(
    JobsPart,
    QueueReadPart,
    FeedPart,
    AttemptsPart,
    MetaPart,
    DepsPart,
    DurationsPart,
    NotificationsPart,
    MemoryPart,
):
    """One process's store on ``state.db``, shared by its threads."""

    def __init__(self, db_path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = db_path
        self._db = Database(db_path, busy_timeout_s)
        self._environments = {}

    def close(self) -> None:
        self._db.close()
