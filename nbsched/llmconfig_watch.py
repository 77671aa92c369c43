"""The LLM config of a file, re-read when the file changes (the format and its checks:
:mod:`nbsched.formats.llmconfig`), and the original program's default file."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from .config import SchedulerConfig
from .errors import InvalidValueError
from .formats.llmconfig import LLMConfig, load_llm_config

logger = logging.getLogger(__name__)

#: The file the original program read its LLM config from, in the current folder.
DEFAULT_LLM_CONFIG = "llm_config.json"


def default_llm_config(config: SchedulerConfig) -> str | None:
    """``./llm_config.json`` (absolute) where it exists and ``config`` names no LLM
    config: the original program read it by default, so its users' ``--llm`` models
    that need several GPUs keep getting them.  Said in the log when taken."""
    if config.llm_config_file is not None:
        return None
    try:
        path = os.path.abspath(DEFAULT_LLM_CONFIG)
    except FileNotFoundError:  # (the current folder was removed)
        return None
    if not os.path.isfile(path):
        return None
    logger.info(
        "reading the LLM config %s, as the original program did (it names none; "
        "llm_config_file=None reads none)",
        path,
    )
    return path


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class LLMConfigWatcher:
    """The current LLM config of a file, re-read when it changes.

    The first read happens here and raises on a missing or bad file.  Later, a
    change is noticed by a stat of (mtime_ns, size, inode); a bad or missing new
    version logs one WARNING (and is passed to ``on_error``, e.g. to keep it where
    ``nbsched status`` shows it) and the previous config stays; :attr:`last_error`
    says why (``None`` after a good read).  Safe to call from several threads.
    """

    def __init__(
        self, path: str | os.PathLike[str], on_error: Callable[[str], None] | None = None
    ) -> None:
        self.path = os.fspath(path)
        self._on_error = on_error
        self._lock = threading.Lock()
        self._sig = _signature(self.path)
        self._config = load_llm_config(self.path)
        self.last_error: str | None = None

    def current(self) -> LLMConfig:
        """The config as of the last good version of the file."""
        failed = None
        with self._lock:
            sig = _signature(self.path)
            if sig == self._sig:
                return self._config
            self._sig = sig
            try:
                self._config = load_llm_config(self.path)
            except (InvalidValueError, OSError) as exc:
                self.last_error = failed = str(exc)
                logger.warning(
                    "LLM config %s not reloaded, keeping the previous one: %s", self.path, exc
                )
            else:
                self.last_error = None
                logger.info("LLM config %s reloaded", self.path)
            config = self._config
        if failed is not None and self._on_error is not None:
            try:
                self._on_error(f"{self.path}: not reloaded, keeping the previous one: {failed}")
            except Exception:  # (a full disk must not cost the caller its config)
                logger.exception("could not record the LLM config's error")
        return config
