"""The database's tables, and the version of their layout.

The ``jobs`` table is written out from :mod:`.rows` (the columns of :class:`Job` and
:class:`JobSpec`); the others are small enough to read here.  Every statement is
``IF NOT EXISTS``: opening a database made by this version, or by an older one with
the same layout, changes nothing in it.  A column added to :class:`Job` since a
database was made is added to it when it is opened (:func:`add_columns`: nullable,
or with its default), which older versions, naming their columns, do not see.  A
layout another version cannot read moves :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import sqlite3

from . import deps, rows

SCHEMA_VERSION = 1


def _column(name: str) -> str:
    text = f"{name} {rows.sql_type(name)}"
    if not rows.nullable(name):
        text += " NOT NULL"
    if name in rows.RUN_COLUMNS and (default := rows.run_default_sql(name)) is not None:
        text += f" DEFAULT {default}"
    return text


_JOBS = (
    "CREATE TABLE IF NOT EXISTS jobs (\n"
    "    seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "    rev INTEGER NOT NULL,\n"
    "    status TEXT NOT NULL,\n"
    + ",\n".join(f"    {_column(n)}" for n in (*rows.SPEC_COLUMNS, *rows.RUN_COLUMNS))
    + "\n)"
)

STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _JOBS,
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, priority, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_rev ON jobs(rev)",
    "CREATE INDEX IF NOT EXISTS jobs_hash ON jobs(hash)",
    "CREATE INDEX IF NOT EXISTS jobs_sweep ON jobs(sweep)",
    """CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    job_seq INTEGER NOT NULL,
    old TEXT,
    new TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT
)""",
    "CREATE INDEX IF NOT EXISTS transitions_job ON transitions(job_seq)",
    "CREATE TABLE IF NOT EXISTS gpu_pauses (gpu INTEGER PRIMARY KEY, at REAL NOT NULL)",
    """CREATE TABLE IF NOT EXISTS sweeps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    spec TEXT NOT NULL
)""",
    # The submitters' environments jobs start from, once each (jobs.environment: its id).
    "CREATE TABLE IF NOT EXISTS environments "
    "(id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, json TEXT NOT NULL)",
    # How long each job that succeeded ran, for learned estimates (see .durations).
    """CREATE TABLE IF NOT EXISTS durations (
    seq INTEGER PRIMARY KEY,
    sweep TEXT,
    estimate_key TEXT,
    seconds REAL NOT NULL,
    ended REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS durations_sweep ON durations(sweep, ended)",
    "CREATE INDEX IF NOT EXISTS durations_key ON durations(estimate_key, ended)",
    """CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    level TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
)""",
    # The notifications outbox (nbsched.notify): each written before it is sent.
    """CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL,
    tries INTEGER NOT NULL,
    next_at REAL NOT NULL,
    created REAL NOT NULL,
    error TEXT
)""",
    "CREATE INDEX IF NOT EXISTS notifications_due ON notifications(state, next_at)",
)


def create(conn: sqlite3.Connection) -> None:
    """Create what is missing (inside the caller's write transaction)."""
    for statement in STATEMENTS:
        conn.execute(statement)
    add_columns(conn)
    deps.create(conn)
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?), ('rev', '0')",
        (str(SCHEMA_VERSION),),
    )


def add_columns(conn: sqlite3.Connection) -> None:
    """Add the job columns a database made by an earlier version lacks."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for name in (*rows.SPEC_COLUMNS, *rows.RUN_COLUMNS):
        if name not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {_column(name)}")


def version(conn: sqlite3.Connection) -> int:
    """The layout version the database was written with."""
    return int(conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])
