"""Learned peaks: what a job without a memory request is charged.

A job that ends having been seen to hold GPU memory teaches its peak under two keys:
its sweep's (``sweep:<id>``) and its kind's (``key:`` + the job's ``estimate_key``, the
key learned estimates use, :func:`nbsched.store.durations.estimate_key`): for a script,
the script and the *names* of its options (``--lr 0.1 --seed 3`` and ``--lr 0.01
--seed 4`` are one kind: a sweep run again packs by what its jobs used); for a shell
command, the command itself.  A job submitted later without a request is charged the
sweep's peak, else its kind's (looked up once, as it is stored; nothing is scanned per
dispatcher turn).  A sweep's peak is the most any of its jobs used, and its kind is
charged that; a job of no sweep teaches its kind its own peak.  The latest run wins: a
script that now uses less is charged less.
"""

from __future__ import annotations

SWEEP = "sweep:"
KIND = "key:"
