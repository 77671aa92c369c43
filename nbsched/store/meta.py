"""What the store keeps besides jobs: GPU pauses, notices, key-values and sweeps."""

from __future__ import annotations

import json
import time
from typing import Any

from .connection import StorePart, bump_rev
from .rows import dumps

#: Sweep ids look like ``sw3``; job ids are the decimal row number.
SWEEP_PREFIX = "sw"

#: How many notices are kept (the oldest go).
MAX_NOTICES = 1000


class MetaPart(StorePart):
    """GPU pauses, notices (jobs-file errors and the like, shown in status),
    key-values, and the sweeps' specs."""

    def set_paused(self, gpu: int, paused: bool) -> None:
        with self._db.write() as conn:
            bump_rev(conn)  # (a pause wakes an incremental reader)
            if paused:
                conn.execute(
                    "INSERT OR IGNORE INTO gpu_pauses (gpu, at) VALUES (?, ?)", (gpu, time.time())
                )
            else:
                conn.execute("DELETE FROM gpu_pauses WHERE gpu = ?", (gpu,))

    def paused(self) -> frozenset[int]:
        return frozenset(r[0] for r in self._db.read("SELECT gpu FROM gpu_pauses"))

    def snapshots_in_use(self) -> frozenset[str]:
        """The code copies (:mod:`nbsched.pipeline.snapshots`) queued and running jobs use."""
        found = self._db.read(
            "SELECT DISTINCT snapshot FROM jobs WHERE status IN ('queued', 'running') "
            "AND snapshot IS NOT NULL"
        )
        return frozenset(r[0] for r in found)

    def add_notice(self, source: str, message: str, level: str = "warning") -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO notices (at, level, source, message) VALUES (?,?,?,?)",
                (time.time(), level, source, message),
            )
            conn.execute(
                "DELETE FROM notices WHERE id <= (SELECT MAX(id) FROM notices) - ?",
                (MAX_NOTICES,),
            )

    def notices(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest ``limit`` notices, oldest first."""
        found = self._db.read(
            "SELECT at, level, source, message FROM notices ORDER BY id DESC LIMIT ?", (limit,)
        )
        keys = ("at", "level", "source", "message")
        return [dict(zip(keys, r, strict=True)) for r in reversed(found)]

    def kv_get(self, key: str) -> str | None:
        found = self._db.read("SELECT value FROM meta WHERE key = ?", (f"kv:{key}",))
        return str(found[0][0]) if found else None

    def kv_set(self, key: str, value: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"kv:{key}", value),
            )

    def new_sweep(self, spec: dict[str, Any], now: float | None = None) -> str:
        with self._db.write() as conn:
            cur = conn.execute(
                "INSERT INTO sweeps (created, spec) VALUES (?, ?)",
                (time.time() if now is None else now, dumps(spec)),
            )
        return f"{SWEEP_PREFIX}{cur.lastrowid}"

    def sweep_spec(self, sweep_id: str) -> dict[str, Any] | None:
        number = sweep_id[len(SWEEP_PREFIX) :]
        if not sweep_id.startswith(SWEEP_PREFIX) or not number.isdigit():
            return None
        found = self._db.read("SELECT spec FROM sweeps WHERE seq = ?", (int(number),))
        return json.loads(found[0][0]) if found else None

    def sweeps(self) -> list[tuple[str, float, dict[str, Any]]]:
        """Every sweep as ``(id, created, spec)``, oldest first."""
        found = self._db.read("SELECT seq, created, spec FROM sweeps ORDER BY seq")
        return [(f"{SWEEP_PREFIX}{seq}", created, json.loads(spec)) for seq, created, spec in found]
