"""Code snapshots: what a job will run, recorded at submission, and (``snapshot=True``)
a copy of it that the job runs from, so that editing the code afterwards does not
change queued jobs.

**The record** (:func:`with_code`, a job's ``code`` field): what
:func:`~nbsched.pipeline.record.code_record` says the job runs, and the id of the copy
it runs from.

**The copy** (:func:`take`): the script's git work tree (its tracked files as they are
on disk, uncommitted changes included, and the script itself if untracked), or else
the script's folder (without ``.git`` and ``__pycache__``); for a command job (only
when it asks, not by the config's default), its folder's work tree or folder; copied into
``STATE_DIR/snapshots/ID``.  ``ID`` is a hash of the copied content (paths, modes,
bytes): jobs with the same code share one copy (a sweep costs one).  At most
``snapshot_max_mb`` (SchedulerConfig, default 100 MB) is copied: a bigger tree is
refused before anything is copied.  The job runs from the copy: its script and (when
inside the tree) its folder are mapped into it at launch (:func:`from_copy`).

**Removal** (:func:`collect`): a copy no queued or running job uses is removed when a
job that used one ends.  A submission holds the copy it made (a file in
``snapshots/.holds``, named with its pid) until its jobs are stored; a file lock
(``snapshots/.lock``) keeps the two apart.  A job run again by ``retry()`` after its
copy was removed fails to start, saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..checks import check_flag
from ..config import SchedulerConfig
from ..errors import ClosedError, InvalidValueError, MissingFileError
from ..jobs import Job, JobSpec
from .record import code_record, racy, record_of, store_record, tracked, work_tree

logger = logging.getLogger(__name__)

FOLDER = "snapshots"
#: A half-made copy (or one half removed) older than this is a crashed process's: removed.
LEFTOVER_S = 3600.0
_SKIP_DIRS = frozenset({".git", "__pycache__"})
_CHUNK = 1 << 20

#: This process's holds: copy id -> hold files (see the module).
_HELD: dict[str, list[Path]] = {}
_HELD_LOCK = threading.Lock()
_COUNTER = itertools.count()
#: (root, files' stat signature) -> copy id: the same files as last time are not copied again.
_BY_SIGNATURE: dict[str, str] = {}


def snapshots_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir, FOLDER)


# -- the record ---------------------------------------------------------------------------


def with_code(store: Any, spec: JobSpec, snapshot: object, config: SchedulerConfig) -> JobSpec:
    """``spec`` with its ``code`` record and, with ``snapshot`` (None: the config's
    ``snapshot``), the copy it runs from (held until :func:`release`)."""
    default, state_dir, max_mb = config.snapshot, config.state_dir, config.snapshot_max_mb
    if snapshot is not None:
        check_flag("snapshot", snapshot)
    copy = root = None
    if (default if snapshot is None else snapshot) and spec.kind == "script" and spec.script:
        copy, root = take(os.path.dirname(spec.script), spec.script, state_dir, max_mb)
    elif snapshot and spec.cwd:  # (a command: its folder's, asked for by the job alone)
        copy, root = take(spec.cwd, None, state_dir, max_mb)
    return spec.evolve(code=store_record(store, code_record(spec, copy, root)), snapshot=copy)


# -- the copy -----------------------------------------------------------------------------


def take(
    folder: str, script: str | None, state_dir: str | os.PathLike[str], max_mb: float
) -> tuple[str, str]:
    """Copy the code of ``folder`` (its git work tree, or itself; with ``script``, in it,
    whether tracked or not: see the module), or find the same copy made before, and hold
    it for this process; ``(copy id, the folder copied)``."""
    repo = work_tree(folder)
    root = repo[0] if repo is not None else folder
    stats = _files(root, script, repo)
    _check_size(sum(st.st_size for _rel, st in stats), max_mb, root)
    base = snapshots_dir(state_dir)
    signature = _signature(root, stats)
    known = _BY_SIGNATURE.get(signature)
    if known is not None and not racy(st.st_mtime_ns for _rel, st in stats):
        with _locked(base):
            if (base / known).is_dir():
                _hold(base, known)
                return known, root
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{uuid.uuid4().hex}"
    try:
        copy_id = _copy(root, [rel for rel, _st in stats], tmp, max_mb)
        with _locked(base):
            if (base / copy_id).is_dir():
                shutil.rmtree(tmp)
            else:
                os.rename(tmp, base / copy_id)
            _hold(base, copy_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _BY_SIGNATURE[signature] = copy_id
    return copy_id, root


def _files(
    root: str, script: str | None, repo: tuple[str, str] | None
) -> list[tuple[str, os.stat_result]]:
    """The files to copy, relative to ``root``, sorted, with their ``lstat``: git's
    tracked files (and the script), or every file under the folder but in ``.git`` and
    ``__pycache__``."""
    found: set[str] = set()
    if repo is not None:
        found.update(tracked(*repo))
        if script is not None:
            found.add(os.path.relpath(script, root))
    else:
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
            found.update(os.path.relpath(os.path.join(folder, n), root) for n in names)
    out = []
    for rel in sorted(found):
        try:
            st = os.lstat(os.path.join(root, rel))
        except OSError:  # (a tracked file deleted, not committed)
            continue
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):  # (not a submodule)
            out.append((rel, st))
    return out


def _check_size(size: int, max_mb: float, root: str) -> None:
    if size > max_mb * 1e6:
        raise InvalidValueError(
            f"snapshot=True: {root} holds {size / 1e6:.1f} MB to copy, above "
            f"snapshot_max_mb={max_mb:g} (SchedulerConfig); raise it, or keep data out of "
            "the code's folder (in a git work tree only tracked files are copied)"
        )


def _signature(root: str, stats: list[tuple[str, os.stat_result]]) -> str:
    digest = hashlib.sha256(root.encode("utf-8", "surrogateescape"))
    for rel, st in stats:
        digest.update(
            f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}".encode(
                errors="surrogateescape"
            )
        )
    return digest.hexdigest()


def _copy(root: str, files: list[str], target: Path, max_mb: float) -> str:
    """Copy ``files`` of ``root`` under ``target``; the id of what was copied."""
    digest = hashlib.sha256()
    copied = 0
    for rel in files:
        src, dst = os.path.join(root, rel), target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(src):
            link = os.readlink(src)
            os.symlink(link, dst)
            digest.update(f"{rel}\0link\0{link}\n".encode(errors="surrogateescape"))
            continue
        mode = stat.S_IMODE(os.stat(src).st_mode)
        content = hashlib.sha256()
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            for chunk in iter(lambda: fin.read(_CHUNK), b""):
                content.update(chunk)
                fout.write(chunk)
                copied += len(chunk)
                _check_size(copied, max_mb, root)
        os.chmod(dst, mode | stat.S_IRUSR)
        digest.update(
            f"{rel}\0{mode & 0o111:o}\0{content.hexdigest()}\n".encode(errors="surrogateescape")
        )
    return digest.hexdigest()[:32]


# -- holds, removal -----------------------------------------------------------------------


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    """The snapshots' file lock: taking or holding a copy excludes removing one."""
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _hold(base: Path, copy_id: str) -> None:
    """Keep ``copy_id`` until this process's jobs using it are stored (under the lock)."""
    holds = base / ".holds"
    holds.mkdir(exist_ok=True)
    path = holds / f"{copy_id}.{os.getpid()}.{next(_COUNTER)}"
    path.touch()
    with _HELD_LOCK:
        _HELD.setdefault(copy_id, []).append(path)


def holding() -> bool:
    """Whether this process holds a copy for jobs not stored yet."""
    return bool(_HELD)


def noting(specs: Iterable[JobSpec], seen: set[str]) -> Iterator[JobSpec]:
    """``specs``, each copy id among them added to ``seen`` as they pass (a sweep's specs
    are streamed to the store, not kept)."""
    for spec in specs:
        if spec.snapshot:
            seen.add(spec.snapshot)
        yield spec


def release(ids: Iterable[str], store: Any, state_dir: str | os.PathLike[str]) -> None:
    """Let go of the copies ``ids`` (their jobs now stored, or refused), and remove
    those no job needs (a cancelled queued job's, say), in a thread."""
    ids = set(ids)
    with _HELD_LOCK:
        paths = [p for i in ids for p in _HELD.pop(i, ())]
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
    _Collector.of(str(state_dir)).request(store.snapshots_in_use)


def after_ends(store: Any, state_dir: str | os.PathLike[str], jobs: Iterable[Job]) -> None:
    """Once ends are recorded: if one of ``jobs`` ran from a copy, remove the copies no
    job needs any more, in a thread of its own (the dispatcher goes on)."""
    if any(job.spec.snapshot for job in jobs):
        _Collector.of(str(state_dir)).request(store.snapshots_in_use)


class _Collector:
    """One thread at a time removing a state directory's unused copies; a request
    while it runs makes it look again once done."""

    _all: dict[str, _Collector] = {}
    _lock = threading.Lock()

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.again = False
        self.thread: threading.Thread | None = None

    @classmethod
    def of(cls, state_dir: str) -> _Collector:
        with cls._lock:
            return cls._all.setdefault(state_dir, cls(state_dir))

    def request(self, in_use: Callable[[], Collection[str]]) -> None:
        with self._lock:
            self.again = True
            if self.thread is None:
                # (not a daemon: a process that exits at once, such as ``nbsched add``,
                # waits for it rather than ending it inside SQLite)
                self.thread = threading.Thread(
                    target=self._run, args=(in_use,), name="nbsched-snapshots", daemon=False
                )
                self.thread.start()

    def _run(self, in_use: Callable[[], Collection[str]]) -> None:
        while True:
            with self._lock:
                if not self.again:
                    self.thread = None
                    return
                self.again = False
            try:
                collect(self.state_dir, in_use)
            except ClosedError:  # (its scheduler closed meanwhile: the next one will)
                logger.debug("code snapshots of %s: the store closed", self.state_dir)
            except Exception:  # (a thread's boundary: removal is tried again next time)
                logger.exception("removing unused code snapshots in %s failed", self.state_dir)


def settle(state_dir: str | os.PathLike[str], timeout: float = 30.0) -> None:
    """Wait for the state directory's removal of unused copies to end: it reads the
    store, which must not be closed under it (``nbsched add --snapshot`` exits at once,
    and a connection closed while another thread uses it can crash the process)."""
    with _Collector._lock:
        collector = _Collector._all.get(str(state_dir))
        thread = collector.thread if collector is not None else None
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def collect(state_dir: str | os.PathLike[str], in_use: Callable[[], Collection[str]]) -> list[str]:
    """Remove the copies that neither a queued or running job uses (``in_use()``, read
    under the lock) nor a live submission holds; their ids."""
    base = snapshots_dir(state_dir)
    if not base.is_dir():
        return []
    doomed: list[tuple[str, Path]] = []
    with _locked(base):
        held = _live_holds(base / ".holds")
        used = in_use()
        for entry in base.iterdir():
            name = entry.name
            if name.startswith((".tmp-", ".trash-")) and _older(entry, LEFTOVER_S):
                doomed.append((name, entry))  # (a crashed submitter's or remover's)
            if name.startswith(".") or name in held or name in used:
                continue
            trash = base / f".trash-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(entry, trash)
            doomed.append((name, trash))
    for _name, trash in doomed:
        shutil.rmtree(trash, ignore_errors=True)
    return [name for name, _trash in doomed if not name.startswith(".")]


def _older(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except OSError:
        return False


def _live_holds(holds: Path) -> set[str]:
    """The copies held by a live process; the holds of dead ones removed."""
    live: set[str] = set()
    if not holds.is_dir():
        return live
    for path in holds.iterdir():
        copy_id, _, rest = path.name.partition(".")
        pid = int(rest.split(".")[0]) if rest.split(".")[0].isdigit() else 0
        if pid > 0 and _alive(pid):
            live.add(copy_id)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return live


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- running from the copy ----------------------------------------------------------------


def from_copy(job: Job, state_dir: str | os.PathLike[str], store: Any) -> Job:
    """``job`` as it runs: with a snapshot, its script (and its folder, when inside the
    copied tree) in the copy.  Raises :class:`MissingFileError` if the copy is gone."""
    spec = job.spec
    if not spec.snapshot:
        return job
    code: Mapping[str, Any] = record_of(store, spec.code) or {}
    root = str(code.get("copied_from") or os.path.dirname(spec.script or spec.cwd or "/"))
    copy = snapshots_dir(state_dir) / spec.snapshot
    if not copy.is_dir():
        raise MissingFileError(
            f"its code snapshot {spec.snapshot} is gone (removed once no queued or running "
            "job used it); submit the job again"
        )
    script = str(copy / os.path.relpath(spec.script, root)) if spec.script else None
    cwd = spec.cwd
    if cwd is not None and _inside(cwd, root):
        cwd = str(copy / os.path.relpath(cwd, root))
    return job.evolve(spec=spec.evolve(script=script, cwd=cwd))


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(
        root
    )


__all__ = [
    "FOLDER",
    "after_ends",
    "collect",
    "from_copy",
    "holding",
    "noting",
    "release",
    "snapshots_dir",
    "take",
    "with_code",
]
