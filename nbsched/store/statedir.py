"""The state directory: created private, or refused when another user could write to it.

The engine trusts what it finds there (the database, the logs, the exit-code files
of ``run/``), so a folder another user may write to, or a symbolic link that could
point anywhere, is refused rather than used.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import StateDirError


def prepare_state_dir(path: Path) -> Path:
    """Create ``path`` (0700) or check that an existing one is safe to use.

    A symlink, or a folder other users may write to, is refused: another user
    could then plant files the engine would trust.
    """
    try:
        if path.is_symlink():
            raise StateDirError(
                f"state directory {path} is a symbolic link; point state_dir at the real "
                f"folder ({os.path.realpath(path)})"
            )
        if not path.exists():
            old = os.umask(0o077)
            try:
                path.mkdir(parents=True, mode=0o700, exist_ok=True)
            finally:
                os.umask(old)
        st = path.stat()
    except StateDirError:
        raise
    except OSError as exc:
        raise StateDirError(f"state directory {path} cannot be used: {exc}") from exc
    _check_owner_and_mode(path, st)
    for sub in ("logs", "run"):
        p = path / sub
        if p.is_symlink():
            raise StateDirError(f"{p} is a symbolic link; nbsched refuses to use it")
        p.mkdir(mode=0o700, exist_ok=True)
        os.chmod(p, 0o700)
    return path


def _check_owner_and_mode(path: Path, st: os.stat_result) -> None:
    """Refuse a folder that is not one, not the user's, or writable by others; a
    folder only readable by others is made private."""
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {path} is not a folder")
    if st.st_uid != os.getuid():
        raise StateDirError(f"state directory {path} belongs to uid {st.st_uid}, not to you")
    if st.st_mode & 0o022:
        raise StateDirError(
            f"state directory {path} is writable by other users (mode {st.st_mode & 0o777:o}); "
            f"run: chmod 700 {path}"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def create_private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 whatever the umask (no-op if it exists)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
