"""The transitions a job went through, as the state database records them.

The engine only writes the ``transitions`` table (an audit trail of each status
change with its time and reason); tests read it here, straight from the file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def history(db_path: Path, job_id: object) -> list[dict[str, Any]]:
    """Every transition of a job, oldest first: ``{old, new, at, reason}`` each."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        found = conn.execute(
            "SELECT old, new, at, reason FROM transitions WHERE job_seq = ? ORDER BY id",
            (int(str(job_id)),),
        ).fetchall()
    finally:
        conn.close()
    return [dict(zip(("old", "new", "at", "reason"), r, strict=True)) for r in found]
