"""The spawner's protocol, defined once for both sides: the spawner
(:mod:`nbsched.executors.spawner`) and an engine's client
(:mod:`nbsched.executors.spawner_client`).

A Unix stream socket ``run/spawner.sock`` (the ``run`` folder is 0700), one JSON
request per line, one JSON reply line each (``ack`` has none), descriptors attached
(``SCM_RIGHTS``) to the request they belong to:

* :class:`Hello` -> ``{"ok": true, "pid": P, "version": V}``: the environment the
  connection's jobs start from; a version other than :data:`VERSION` is refused;
* :class:`Start` plus one end descriptor -> ``{"ok": true, "pid": P, "born": NS}`` or
  ``{"ok": false, "error": "..."}``; ``born`` is ``CLOCK_BOOTTIME`` in ns just before
  the spawn (where the clock exists): the start time ``/proc/P/stat`` gives, to its
  10 ms tick, so an engine need not read it.  ``env`` and ``unset`` are the job's
  differences from the hello environment.  A job that cannot start (a missing program
  or folder) ends at once: exit code :data:`START_FAILED`, the reason in its log and
  its end descriptors, like any other end.  An engine may send several starts before
  it reads their replies;
* :class:`Watch` plus one end descriptor -> ``{"ok": true, "pid": P}`` for a job still
  running, ``{"ok": true, "pid": null}`` for one that has ended (its exit file is then
  written) or that it does not know;
* :class:`Ack` (no reply): those jobs' ends are recorded; their codes are dropped, and
  their exit files removed if they were written.

A job's end goes to each of its end descriptors as one line, ``CODE TIME[ REASON]``
(:func:`encode_end`), and the descriptor is closed; ``TIME`` is when the spawner reaped
the job (wall clock, seconds since the epoch): its true end, also when the engine that
records it learns of it long after (one that started after the job ended).  Its exit
file, where one is written, holds ``CODE TIME`` (:func:`encode_exit`).

Version 3: the end's time (version 2's ends were ``CODE[ REASON]``).

The spawner imports this module at its start: the standard library only, and little
of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

VERSION = 3
SOCKET_NAME = "spawner.sock"
LOCK_NAME = "spawner.lock"
LOG_NAME = "spawner.log"

#: How long the spawner stays with no engine connected and no job running, unless
#: the environment it is started with says otherwise (in :data:`IDLE_EXIT_ENV`).
IDLE_EXIT_S = 2.0
IDLE_EXIT_ENV = "NBSCHED_SPAWNER_IDLE_EXIT_S"

#: The exit code of a job that could not be started (as a shell's "command not found").
START_FAILED = 127
#: The longest request the spawner reads (a job's environment included).
MAX_REQUEST = 16 << 20

HELLO = "hello"
START = "start"
WATCH = "watch"
ACK = "ack"
#: The requests that come with one end descriptor each.
WITH_FD = (START, WATCH)


class Hello(TypedDict):
    op: str
    version: int
    env: dict[str, str]


class Start(TypedDict):
    op: str
    token: str
    argv: list[str]
    env: dict[str, str]
    unset: list[str]
    cwd: str
    log: str
    exit: str


class Watch(TypedDict):
    op: str
    token: str


class Ack(TypedDict):
    op: str
    tokens: list[str]


def hello(env: Mapping[str, str]) -> Hello:
    return {"op": HELLO, "version": VERSION, "env": dict(env)}


def watch(token: str) -> Watch:
    return {"op": WATCH, "token": token}


def ack(tokens: list[str]) -> Ack:
    return {"op": ACK, "tokens": tokens}


def idle_exit_s(environ: Mapping[str, str]) -> float:
    """The spawner's idle time: :data:`IDLE_EXIT_ENV` if set to a number >= 0."""
    try:
        value = float(environ.get(IDLE_EXIT_ENV, IDLE_EXIT_S))
    except ValueError:
        return IDLE_EXIT_S
    return value if value >= 0 else IDLE_EXIT_S


def encode(message: Mapping[str, Any]) -> bytes:
    """One request or reply, framed: a line of JSON."""
    return json.dumps(message).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """A request or reply from its line (without the newline); ValueError if it is none."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def encode_end(code: int, at: float, reason: str = "") -> bytes:
    """How a job ended, and when, as written to an end descriptor: ``CODE TIME[ REASON]``."""
    return f"{code} {at:.6f} {reason}".strip().encode("utf-8", "replace") + b"\n"


def decode_end(data: bytes) -> tuple[int, str | None, float]:
    """(code, reason, time) from what an end descriptor gave; ValueError if it gave none."""
    code, at, reason = (data.decode("utf-8", "replace").strip().split(" ", 2) + [""])[:3]
    return int(code), reason or None, float(at)


def encode_exit(code: int, at: float) -> bytes:
    """A job's exit file: ``CODE TIME`` (a file of ``CODE`` alone is read too: its time is
    the file's, as the screen executor's wrapper writes it at the job's end)."""
    return b"%d %.6f\n" % (code, at)
