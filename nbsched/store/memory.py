"""GPU memory in the store: the running jobs' GPUs for the simulated provider, the
memory seen of each running job, and the peaks learned from ended runs.

A job's peak (``gpu_memory_peak``) is a column of the job; learned peaks (what a
job without a memory request is charged, see :mod:`nbsched.gpus.peaks`) are
key-values ``peak:<key>`` in ``meta``, written when a job ends.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..allocation import booked_share
from ..gpus.attribution import JobProcess
from ..gpus.peaks import KIND, SWEEP
from ..gpus.simulated import SimulatedJob
from .connection import StorePart

_PEAK = "peak:"


class MemoryPart(StorePart):
    """Reads and writes of GPU memory figures."""

    def simulated_jobs(self, results_dir: Path | str) -> list[SimulatedJob]:
        """The running jobs, as the simulated provider shows them."""
        base = os.fspath(results_dir)
        return [
            SimulatedJob(
                str(seq),
                tuple(gpus),
                pid,
                booked_share(required, len(gpus)),
                os.path.join(base, f"{seq}.json"),
            )
            for seq, gpus_json, pid, required in self._db.read(
                "SELECT seq, gpus, pid, required_gpus FROM jobs WHERE status = 'running'"
            )
            for gpus in (json.loads(gpus_json or "[]"),)
        ]

    def running_processes(self) -> list[JobProcess]:
        """The running jobs as :mod:`nbsched.gpus.attribution` needs them."""
        return [
            JobProcess(str(seq), pid, token)
            for seq, pid, token in self._db.read(
                "SELECT seq, pid, token FROM jobs WHERE status = 'running'"
            )
        ]

    def running_memory(self) -> list[tuple[int, tuple[int, ...], float | None, float | None]]:
        """``(seq, gpus, gpu_memory request, charge)`` of each running job; the charge is
        the larger of its learned charge and its own peak so far."""
        return [
            (seq, tuple(json.loads(gpus_json or "[]")), request, _larger(learned, peak))
            for seq, gpus_json, request, learned, peak in self._db.read(
                "SELECT seq, gpus, gpu_memory_request, gpu_memory_learned, gpu_memory_peak "
                "FROM jobs WHERE status = 'running'"
            )
        ]

    def memory_needs_since(
        self, rev: int
    ) -> tuple[int, list[tuple[int, str, float | None, float | None]]]:
        """The store's revision now, and ``(seq, status, request, learned)`` of the jobs
        with a memory request or a learned charge written after ``rev`` (all of them
        for ``rev`` < 0)."""
        (now,) = self._db.read("SELECT value FROM meta WHERE key = 'rev'")[0]
        if int(now) <= rev:  # (nothing written since: the common turn of a busy engine)
            return int(now), []
        found = self._db.read(
            "SELECT seq, status, gpu_memory_request, gpu_memory_learned FROM jobs "
            "WHERE rev > ? AND rev <= ? "
            "AND (gpu_memory_request IS NOT NULL OR gpu_memory_learned IS NOT NULL)",
            (rev, int(now)),
        )
        return int(now), [(s, st, r, lr) for s, st, r, lr in found]

    def record_memory(self, seen: Mapping[int, float]) -> None:
        """Raise each running job's ``gpu_memory_peak`` to what was just seen of it (MiB);
        a write only where a peak grew."""
        if not seen:
            return
        marks = ",".join("?" * len(seen))
        rows = self._db.read(
            f"SELECT seq, gpu_memory_peak FROM jobs WHERE seq IN ({marks})", list(seen)
        )
        grown = [(seen[s], s) for s, peak in rows if peak is None or seen[s] > peak + 0.5]
        if not grown:
            return
        with self._db.write() as conn:  # (no new revision: no dispatcher need read it)
            conn.executemany("UPDATE jobs SET gpu_memory_peak = ? WHERE seq = ?", grown)

    def learn_from_ended(self, seqs: Iterable[int]) -> dict[str, float]:
        """Learn the peaks of the jobs ``seqs`` (ended), under their keys; returns what
        was learned.  A sweep's peak is the most any of its jobs used; its kind is
        charged that (the sweep run again is charged its largest job); a job of no
        sweep teaches its kind its own peak (the last run wins)."""
        wanted = list(seqs)
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        ended = self._db.read(
            f"SELECT sweep, estimate_key, gpu_memory_peak FROM jobs WHERE seq IN ({marks}) "
            "AND gpu_memory_peak IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled')",
            wanted,
        )
        peaks = self.learned_peaks(SWEEP + s for s, _, _ in ended if s)  # (their keys)
        for sweep, key, peak in ended:
            mb = float(peak)
            if sweep:
                mb = peaks[SWEEP + sweep] = max(peaks.get(SWEEP + sweep, 0.0), mb)
            if key:
                peaks[KIND + key] = mb
        self.learn_peaks(peaks)
        return peaks

    def learned_peaks(self, keys: Iterable[str]) -> dict[str, float]:
        """The learned peak (MiB) of each of ``keys`` that has one."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        return {
            key[len(_PEAK) :]: float(value)
            for key, value in self._db.read(
                f"SELECT key, value FROM meta WHERE key IN ({marks})",
                [_PEAK + k for k in wanted],
            )
        }

    def learn_peaks(self, peaks: Mapping[str, float]) -> None:
        """Store ``key -> MiB`` as the latest runs' peaks (the last run's wins: a
        script that now uses less is charged less)."""
        if not peaks:
            return
        with self._db.write() as conn:
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(_PEAK + k, repr(float(v))) for k, v in peaks.items()],
            )


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def learn_charges(conn: sqlite3.Connection, rev: int) -> None:
    """Charge the jobs just written at ``rev`` that ask for no memory what earlier runs
    peaked at (their sweep's, else their kind's: :mod:`nbsched.gpus.peaks`); inside the
    insert's transaction, so a dispatcher never reads them without it.  Nothing to do
    (one lookup) while no peak was ever learned."""
    if conn.execute("SELECT 1 FROM meta WHERE key >= 'peak:' AND key < 'peak;'").fetchone() is None:
        return
    conn.execute(
        "UPDATE jobs SET gpu_memory_learned = COALESCE("
        f"(SELECT CAST(value AS REAL) FROM meta WHERE key = '{_PEAK}{SWEEP}' || jobs.sweep), "
        f"(SELECT CAST(value AS REAL) FROM meta WHERE key = '{_PEAK}{KIND}' || jobs.estimate_key)) "
        "WHERE rev = ? AND gpu_memory_request IS NULL",
        (rev,),
    )
