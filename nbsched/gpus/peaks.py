"""Learned peaks: what a job without a memory request is charged.

A job that ends having been seen to hold GPU memory teaches its peak under two keys:
its sweep's (``sweep:<id>``) and its kind's (``key:<peak_key>``): for a script, the
script, its conda env and the *names* of its options (``--lr 0.1 --seed 3`` and
``--lr 0.01 --seed 4`` are one kind: a sweep run again packs by what its jobs used);
for a shell command, the command itself.  A job submitted later without a request is
charged the sweep's peak, else its kind's (looked up once, as it is stored; nothing is
scanned per dispatcher turn).  A sweep's peak is the most any of its jobs used, and its
kind is charged that; a job of no sweep teaches its kind its own peak.  The latest run
wins: a script that now uses less is charged less.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

SWEEP = "sweep:"
#: An option's name (``--lr``, ``-v``, ``--lr=0.1``), not a value such as ``-1``.
_OPTION = re.compile(r"--?[A-Za-z_]")
KIND = "key:"


def peak_key(
    kind: str,
    script: str | None,
    conda_env: str | None,
    args: Sequence[str],
    command: str | None,
) -> str:
    """The key of a job's kind (see the module): a short hash."""
    if kind == "command":
        payload = json.dumps(["command", command or ""])
    else:
        names = [a.split("=", 1)[0] for a in args if _OPTION.match(a)]
        payload = json.dumps(["script", script or "", conda_env or "", names])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]
