"""Helpers shared by the validation tests: a rejected call names the bad value and
stores nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nbsched import GPUJobScheduler
from nbsched.errors import NbschedError

N_GPUS = 4


def snapshot(s: GPUJobScheduler) -> tuple[dict[str, int], int]:
    return s.store.counts(), s.store.revision()


def rejects(
    s: GPUJobScheduler,
    call: Callable[[], object],
    excs: tuple[type[BaseException], ...],
    field: str,
) -> str:
    """``call`` raises one of ``excs`` whose message names ``field``; nothing is stored."""
    before = snapshot(s)
    with pytest.raises(excs) as info:
        call()
    assert isinstance(info.value, NbschedError), repr(info.value)
    msg = str(info.value)
    assert field in msg, msg
    assert snapshot(s) == before, "something was stored for a rejected submission"
    return msg
