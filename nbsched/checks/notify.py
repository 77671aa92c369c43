"""The checks of where a notification goes: a webhook URL and an email address (the
``notify=`` argument, the config's ``notify``, ``--notify`` and ``--notify-email``).

The notifiers themselves are :mod:`nbsched.notify`'s; the rules and their messages are
here, so that the API, the config and both front ends refuse a value in the same words.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..errors import InvalidTypeError, InvalidValueError

#: A mail address, as far as it can be checked without sending to it: one ``@``, a
#: local part and a domain, no spaces or angle brackets (a header could be forged).
_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")


def check_url(name: str, value: object) -> str:
    """An ``http://`` or ``https://`` URL with a host."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name}={value!r}: expected a URL string (https://...)")
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises for a bad port)
    except ValueError as exc:
        raise InvalidValueError(f"{name}={value!r}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValueError(
            f"{name}={value!r}: expected an http:// or https:// URL with a host "
            "(for a mail, 'mailto:ADDRESS')"
        )
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise InvalidValueError(f"{name}={value!r}: a URL has no spaces or control characters")
    return text


def check_address(name: str, value: object) -> str:
    """One mail address (``me@example.org``)."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name}={value!r}: expected a mail address string")
    text = value.strip()
    if text.lower().startswith("mailto:"):
        text = text[len("mailto:") :]
    if not _ADDRESS.fullmatch(text):
        raise InvalidValueError(f"{name}={value!r}: expected one mail address, like me@example.org")
    return text


def check_notify_word(name: str, value: object) -> str:
    """One notification target as a word: a webhook URL, or a mail address
    (``mailto:ADDRESS``, or the bare address), as ``mailto:ADDRESS``."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower().startswith("mailto:") or ("@" in text and "://" not in text):
            return "mailto:" + check_address(name, value)
    return check_url(name, value)


__all__ = ["check_address", "check_notify_word", "check_url"]
