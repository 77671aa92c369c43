from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Engines


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    e = Engines(tmp_path)
    try:
        yield e
    finally:
        e.cleanup()
