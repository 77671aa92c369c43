from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RUN_TAG, Engines, kill_tagged


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    e = Engines(tmp_path)
    try:
        yield e
    finally:
        e.cleanup()


@pytest.fixture(autouse=True)
def _reap_jobs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Jobs of engines running in this process carry a tag too (they inherit the
    environment): whatever a failed test leaves running is ended afterwards."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(RUN_TAG, tag)
    yield
    kill_tagged(tag)
