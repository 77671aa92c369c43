"""GPU memory amounts: ``"18G"``, ``"512M"``, ``"1.5GiB"``, or a number of MiB."""

from __future__ import annotations

import math
import re

from ..errors import InvalidTypeError, InvalidValueError
from .values import is_real, to_float

#: MiB per unit (G is GiB, as nvidia-smi and PyTorch count).
_UNITS = {"": 1.0, "m": 1.0, "mb": 1.0, "mib": 1.0, "g": 1024.0, "gb": 1024.0, "gib": 1024.0}
_UNITS |= {"t": 1024.0**2, "tb": 1024.0**2, "tib": 1024.0**2}
_AMOUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")
#: More than any GPU will have for a long while (1 PiB): a typo, not a request.
_MAX_MB = 1024.0**3
ACCEPTED = 'a size such as "18G", "512M", "1.5GiB" (G = GiB), or a number of MiB'


def check_gpu_memory(name: str, value: object) -> float | None:
    """A GPU memory amount in MiB (``None`` stays ``None``), or the error naming the
    value and what is accepted."""
    if value is None:
        return None
    if isinstance(value, str):
        found = _AMOUNT.fullmatch(value)
        unit = found.group(2).lower() if found else ""
        if found is None or unit not in _UNITS:
            raise InvalidValueError(f"{name}={value!r}: expected {ACCEPTED}")
        mb = float(found.group(1)) * _UNITS[unit]
    elif is_real(value):
        mb = to_float(value)
    else:
        raise InvalidTypeError(f"{name}={value!r}: expected {ACCEPTED}")
    if not math.isfinite(mb) or mb <= 0:
        raise InvalidValueError(f"{name}={value!r}: must be more than 0 ({ACCEPTED})")
    if mb > _MAX_MB:
        raise InvalidValueError(f"{name}={value!r}: more than 1 PiB; {ACCEPTED}")
    return mb


def memory_text(mb: float) -> str:
    """MiB as people read it: ``18G``, ``1.5G``, ``512M``."""
    if mb >= 1024:
        return f"{mb / 1024:.4g}G"
    return f"{mb:.4g}M"
