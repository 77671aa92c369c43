"""What a job runs, recorded at submission (``job(id)["code"]``): the script's
SHA-256; for a script in a git work tree, the tree's folder, its commit and whether the
tracked files differ from it (``dirty``, with the SHA-256 of ``git diff HEAD
--binary``); the Python that submitted it; the conda environment (the job's, else the
submitter's ``$CONDA_DEFAULT_ENV``).  A record is stored once (a key-value of the
store, under its hash: :func:`store_record`), and a job keeps its key (its ``code``
field): the jobs of a sweep share one.

Asking git costs a few milliseconds a call, and a loop of ``add_job`` or a jobs file of
many lines submits the same script again and again: a work tree's state is kept and
used again while nothing git compares has changed (the index, ``HEAD`` and the ref it
names, and each tracked file's size and modification time), which a few ``stat`` calls
tell, unless a file changed in the last :data:`RACY_S` seconds (:func:`racy`).  Which
folder is in which work tree is asked again after :data:`REPO_TTL_S`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..jobs import JobSpec

#: How long a folder's work tree (or that it is in none) is taken as known.
REPO_TTL_S = 2.0
#: A file changed less than this long ago is read again, whatever its stat says.
RACY_S = 2.0
_GIT_TIMEOUT_S = 30.0
_CHUNK = 1 << 20

_KV = "code:"
_KEEP = 4096

_lock = threading.Lock()
#: (database, key) of the records stored from this process
_stored: set[tuple[str, str]] = set()
#: key -> record, as read back (a key is its record's hash: the same everywhere)
_records: dict[str, dict[str, Any]] = {}
#: folder -> (when asked, (work tree, git dir) or None)
_repos: dict[str, tuple[float, tuple[str, str] | None]] = {}
#: work tree -> (the index's stat, its tracked files)
_tracked: dict[str, tuple[object, list[str]]] = {}
#: work tree -> (what its state depends on, the state)
_states: dict[str, tuple[object, dict[str, Any]]] = {}


def code_record(
    spec: JobSpec, copy: str | None = None, copied_from: str | None = None
) -> dict[str, Any]:
    """What ``spec`` will run (see the module); ``copy``: the id of its snapshot, a
    copy of the folder ``copied_from``."""
    record: dict[str, Any] = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "conda_env": spec.conda_env or os.environ.get("CONDA_DEFAULT_ENV") or None,
    }
    folder = None
    if spec.kind == "script" and spec.script:
        record["script_sha256"] = file_sha256(spec.script)
        folder = os.path.dirname(spec.script)
    elif copy is not None:  # (a command run from a copy of its folder)
        folder = spec.cwd
    git = git_state(folder) if folder else None
    if git is not None:
        record["git"] = git
    if copy is not None:
        record["snapshot"] = copy
        record["copied_from"] = copied_from
    return record


def store_record(store: Any, record: Mapping[str, Any]) -> str:
    """Keep ``record`` in the store (once: jobs with the same record share it); its key."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    key = hashlib.sha256(text.encode()).hexdigest()[:32]
    where = (str(store.path), key)
    with _lock:
        known = where in _stored
    if not known:
        store.kv_set(f"{_KV}{key}", text)
        with _lock:
            if len(_stored) > _KEEP:
                _stored.clear()
            _stored.add(where)
    return key


def record_of(store: Any, key: str | None) -> dict[str, Any] | None:
    """The record stored under ``key`` (None: none, or not found)."""
    if not key:
        return None
    with _lock:
        known = _records.get(key)
    if known is None:
        text = store.kv_get(f"{_KV}{key}")
        if text is None:
            return None
        known = json.loads(text)
        with _lock:
            if len(_records) > _KEEP:
                _records.clear()
            _records[key] = known
    return dict(known)


def work_tree(folder: str) -> tuple[str, str] | None:
    """``(work tree, git dir)`` of the git work tree ``folder`` is in; None if none."""
    now = time.monotonic()
    with _lock:
        known = _repos.get(folder)
    if known is not None and now - known[0] < REPO_TTL_S:
        return known[1]
    out = git(folder, "rev-parse", "--show-toplevel", "--absolute-git-dir")
    lines = os.fsdecode(out).splitlines() if out else []
    found = (lines[0], lines[1]) if len(lines) >= 2 else None
    with _lock:
        _repos[folder] = (now, found)
    return found


def tracked(top: str, gitdir: str) -> list[str]:
    """The tracked files of a work tree, relative to it (as its index lists them)."""
    key = _stat(os.path.join(gitdir, "index"))
    with _lock:
        known = _tracked.get(top)
    if known is not None and key is not None and known[0] == key:
        return known[1]
    listed = git(top, "ls-files", "-z", "--cached") or b""
    files = [os.fsdecode(raw) for raw in listed.split(b"\0") if raw]
    with _lock:
        _tracked[top] = (key, files)
    return files


def git_state(folder: str) -> dict[str, Any] | None:
    """``{"root", "commit", "dirty", "diff_sha256"}`` of the git work tree ``folder`` is
    in (commit None before the first one); None outside one (or without git)."""
    repo = work_tree(folder)
    if repo is None:
        return None
    top, gitdir = repo
    files = tracked(top, gitdir)
    stats = tuple(_stat(os.path.join(top, rel), follow=False) for rel in files)
    key = (_stat(os.path.join(gitdir, "index")), _head(gitdir), stats)
    with _lock:
        known = _states.get(top)
    if known is not None and known[0] == key and not racy(s[0] for s in stats if s):
        return dict(known[1])
    head = git(top, "rev-parse", "--verify", "--quiet", "HEAD")
    commit = head.decode().strip() if head else None
    diff = git(top, "diff", "HEAD", "--binary", "--no-ext-diff") if commit else None
    state = {
        "root": top,
        "commit": commit,
        "dirty": bool(diff) if commit else True,
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
    }
    with _lock:
        _states[top] = (key, state)
    return dict(state)


def racy(mtimes_ns: Iterable[int]) -> bool:
    """Whether a file was changed so recently that a later change may keep its
    modification time (a clock tick is milliseconds): then its size and time do not
    tell that it is unchanged (git's "racy" files)."""
    recent = time.time_ns() - int(RACY_S * 1e9)
    return any(t >= recent for t in mtimes_ns)


def _stat(path: str, follow: bool = True) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _head(gitdir: str) -> tuple[object, ...]:
    """What the commit ``HEAD`` names depends on: HEAD, the ref it names, packed refs."""
    try:
        with open(os.path.join(gitdir, "HEAD"), encoding="utf-8", errors="replace") as fh:
            head = fh.read().strip()
    except OSError:
        return (None,)
    ref = head[5:].strip() if head.startswith("ref: ") else None
    loose = _stat(os.path.join(gitdir, ref)) if ref else None
    return (head, loose, _stat(os.path.join(gitdir, "packed-refs")))


def git(folder: str, *args: str) -> bytes | None:
    """git's output in ``folder``; None if it failed (or there is no git)."""
    try:
        done = subprocess.run(
            ["git", "-C", folder, *args],
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def file_sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


__all__ = [
    "code_record",
    "file_sha256",
    "git",
    "git_state",
    "racy",
    "record_of",
    "store_record",
    "tracked",
    "work_tree",
]
