"""The tests' one way to wait for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(pred: Callable[[], Any], what: str = "condition", timeout: float = 60.0) -> Any:
    """Poll ``pred`` until it returns something truthy (returned); fail after ``timeout`` s.

    Test code only: the engine itself never polls on its dispatch path.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
