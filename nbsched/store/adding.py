"""Adding jobs: a submission's rows, inserted :data:`ROWS` at a time in one transaction,
and what the caller keeps of each job stored.

What is kept of a job is the caller's ``make(rev, seq, spec)``: a whole
:class:`~nbsched.jobs.Job` (:meth:`~.jobs.JobsPart.add_jobs_at`), or only the light
entry a dispatcher's queue holds (:meth:`~.jobs.JobsPart.add_made_at`, a big
submission's).  It is made as its chunk is inserted, so a sweep's 100,000 specs need
not all be alive at once: nothing but ``make``'s result keeps one after its chunk.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..jobs import JobSpec, JobStatus
from . import deps, rows

T = TypeVar("T")

#: ``make(rev, seq, spec)``: what is kept of job ``seq`` of ``spec``, stored at ``rev``.
Make = Callable[[int, int, JobSpec], T]

#: Bound parameters per statement, under SQLite's limit (999 in old builds).
CHUNK = 500
#: Jobs inserted a batch at a time (one ``executemany``), so that a sweep's rows are
#: not all encoded at once.
ROWS = 1000

_INSERT_JOB = (
    f"INSERT INTO jobs (rev, status, {', '.join(rows.SPEC_COLUMNS)}, submitted, owner_uid, "
    f"executor, environment) VALUES ({', '.join('?' * (len(rows.SPEC_COLUMNS) + 6))})"
)


@dataclass
class Added(Generic[T]):
    """What :func:`add_rows` stored: ``made`` (None for a spec skipped), in the order
    of the specs, each job's ``after`` (one shared object per distinct text), and each
    distinct ``after`` -> (its dependency group, whether its jobs wait)."""

    made: list[T | None] = field(default_factory=list)
    afters: list[str | None] = field(default_factory=list)
    groups: dict[str, tuple[int, bool]] = field(default_factory=dict)

    def waiting(self) -> list[bool]:
        """Whether each job of ``made`` waits for a dependency (False for a skipped one)."""
        if not self.groups:
            return [False] * len(self.made)
        groups = self.groups
        return [a is not None and groups[a][1] for a in self.afters]


def marks(n: int) -> str:
    return ",".join("?" * n)


def batches(items: Iterable[JobSpec], n: int) -> Iterator[list[JobSpec]]:
    """``items`` as lists of ``n`` (the last may be shorter)."""
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch
        del batch  # (not kept while the next one is made)


def add_rows(
    conn: sqlite3.Connection,
    rev: int,
    specs: Iterable[JobSpec],
    make: Make[T],
    skip: set[JobStatus] | None,
    shared: tuple[float, int, str, int | None],
) -> Added[T]:
    """Insert ``specs`` as queued jobs at ``rev`` (in the caller's transaction), their
    dependencies attached (raises, the transaction to be rolled back, as
    :func:`.deps.attach` does).  ``shared``: the time, the owner's uid, the executor
    and the environment's number.  See :meth:`~.jobs.JobsPart.add_jobs_at`."""
    seen: set[str] = set()
    out: Added[T] = Added()
    by_after: dict[str, tuple[str, set[str | None]]] = {}
    first_of_all = 0
    for chunk in batches(specs, ROWS):
        keep = kept(conn, chunk, skip, seen)
        added = [s for s, k in zip(chunk, keep, strict=True) if k]
        first = insert(conn, rev, added, shared)
        first_of_all = first_of_all or first
        new = iter(range(first, first + len(added)))
        out.made += [
            make(rev, next(new), spec) if k else None for spec, k in zip(chunk, keep, strict=True)
        ]
        out.afters += [
            _after(spec, by_after) if k else None for spec, k in zip(chunk, keep, strict=True)
        ]
        del chunk, added  # (not kept while the next chunk is made)
    if by_after:
        out.groups = deps.attach(conn, first_of_all, {a: s for a, (_, s) in by_after.items()})
    return out


def _after(spec: JobSpec, by_after: dict[str, tuple[str, set[str | None]]]) -> str | None:
    """The spec's ``after``, one object per distinct text (its sweep noted)."""
    after = spec.after
    if not after:
        return None
    found = by_after.get(after)
    if found is None:
        found = by_after[after] = (after, set())
    found[1].add(spec.sweep)
    return found[0]


def kept(
    conn: sqlite3.Connection,
    specs: Sequence[JobSpec],
    skip: set[JobStatus] | None,
    seen: set[str],
) -> list[bool]:
    """Which of ``specs`` to insert: those whose hash no job in a ``skip`` status has
    (all the hashes looked up together, a chunk of them per statement), nor one in
    ``seen`` (the hashes found, and kept, by the chunks before, which it grows)."""
    if skip is None:
        return [True] * len(specs)
    hashes = list({s.hash for s in specs if s.hash is not None} - seen)
    statuses = [s.value for s in skip]
    for start in range(0, len(hashes), CHUNK):
        chunk = hashes[start : start + CHUNK]
        seen.update(
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT hash FROM jobs WHERE hash IN ({marks(len(chunk))}) "
                f"AND +status IN ({marks(len(statuses)) or 'NULL'})",
                (*chunk, *statuses),
            )
        )
    keep = []
    queued = JobStatus.QUEUED in skip
    for spec in specs:
        hit = spec.hash is not None and spec.hash in seen
        keep.append(not hit)
        if not hit and spec.hash is not None and queued:
            seen.add(spec.hash)  # (a later spec of this call sees it, as a row)
    return keep


def insert(
    conn: sqlite3.Connection,
    rev: int,
    specs: Sequence[JobSpec],
    shared: tuple[float, int, str, int | None],
) -> int:
    """Insert the rows of ``specs`` and their first transitions; the first job's
    number (AUTOINCREMENT numbers the rows of one transaction one after the other),
    0 for none."""
    if not specs:
        return 0
    queued = JobStatus.QUEUED.value
    conn.executemany(_INSERT_JOB, ((rev, queued, *rows.encode_spec(s), *shared) for s in specs))
    last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
    first = last - len(specs) + 1
    conn.execute(
        "INSERT INTO transitions (job_seq, old, new, at, reason) "
        "SELECT seq, NULL, ?, ?, 'submitted' FROM jobs WHERE seq BETWEEN ? AND ? ORDER BY seq",
        (queued, shared[0], first, last),
    )
    return first
