"""Dependencies as a job keeps them: ``after`` text, and what it means.

A job's ``after`` (:attr:`nbsched.jobs.JobSpec.after`) is one canonical text,
``KIND:TARGET,TARGET;KIND:TARGET``: the kinds in :data:`KINDS` order, each target a
job id (``12``) or a sweep id (``sw3``), each once.  ``ok:12,13;started:sw3`` waits
for jobs 12 and 13 to succeed and for every job of sweep ``sw3`` to start.

:func:`judge` says what a job's state means for one dependency on it, the one rule the
store applies at submission and at each start and end.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The kinds of dependency: on success, on failure, on any end, on the start.
KINDS = ("ok", "notok", "any", "started")

#: What each kind waits for, in words (``why()``: "waits for job 12 to succeed").
MEANING = {"ok": "succeed", "notok": "fail", "any": "end", "started": "start"}

#: A sweep id's prefix (as :data:`nbsched.store.SWEEP_PREFIX`).
SWEEP = "sw"

#: One dependency: ``(kind, target)``, the target a job id or a sweep id, as text.
Dependency = tuple[str, str]


def is_sweep(target: str) -> bool:
    return target.startswith(SWEEP)


def format_after(deps: Sequence[Dependency]) -> str | None:
    """The canonical text of ``deps`` (None: none)."""
    by_kind: dict[str, list[str]] = {}
    for kind, target in deps:
        targets = by_kind.setdefault(kind, [])
        if target not in targets:
            targets.append(target)
    parts = [f"{kind}:{','.join(by_kind[kind])}" for kind in KINDS if by_kind.get(kind)]
    return ";".join(parts) or None


def parse_after(text: str | None) -> list[Dependency]:
    """The dependencies of a canonical text (as :func:`format_after` writes it)."""
    if not text:
        return []
    out = []
    for part in text.split(";"):
        kind, _, targets = part.partition(":")
        out += [(kind, target) for target in targets.split(",") if target]
    return out


def targets_text(text: str | None) -> str:
    """The targets of a canonical text, for a reason: ``12, 13, sw3``."""
    targets = list(dict.fromkeys(t for _, t in parse_after(text)))
    shown = ", ".join(targets[:4])
    return shown + (f" and {len(targets) - 4} more" if len(targets) > 4 else "")


def describe_unmet(unmet: Sequence[tuple[str, int]]) -> str:
    """``waits for job 12 to succeed and jobs 13, 14 to start`` (a few ids of each kind)."""
    by_kind: dict[str, list[int]] = {}
    for kind, seq in unmet:
        by_kind.setdefault(kind, []).append(seq)
    parts = []
    for kind in KINDS:
        seqs = by_kind.get(kind)
        if not seqs:
            continue
        ids = ", ".join(map(str, seqs[:5])) + (
            f" and {len(seqs) - 5} more" if len(seqs) > 5 else ""
        )
        parts.append(f"job{'s' if len(seqs) > 1 else ''} {ids} to {MEANING[kind]}")
    return "waits for " + " and ".join(parts) if parts else "waits for its dependencies"


def judge(kind: str, status: str, started: bool) -> bool | None:
    """What a job in ``status`` (that ``started`` or not) means for a dependency of
    ``kind`` on it: True met, False never met now, None not yet known.

    Only a final end decides ``ok``, ``notok`` and ``any`` (a failed attempt that is
    retried goes back to ``queued``).  ``notok`` is met by any end but success
    (``failed`` or ``cancelled``); ``started`` fails only if the job ended without ever
    starting (cancelled while queued)."""
    if status == "queued":
        return None
    if status == "running":
        return True if kind == "started" else None
    if kind == "ok":
        return status == "succeeded"
    if kind == "notok":
        return status != "succeeded"
    if kind == "any":
        return True
    return started


def failure(kind: str, target: int, status: str) -> str:
    """The reason a job is cancelled when its dependency on job ``target`` cannot be met."""
    if kind == "ok":
        return f"dependency {target} {'was cancelled' if status == 'cancelled' else 'failed'}"
    if kind == "notok":
        return f"dependency {target} succeeded (it was to fail)"
    return f"dependency {target} was cancelled before it started"


__all__ = [
    "KINDS",
    "MEANING",
    "Dependency",
    "describe_unmet",
    "failure",
    "format_after",
    "is_sweep",
    "judge",
    "parse_after",
    "targets_text",
]
