"""Where a notification goes: a :class:`Webhook` or an :class:`Email`, and the
``notify=`` argument that names them.

Both are frozen dataclasses, stored with the job as JSON (:func:`dumps`,
:func:`loads`), so whichever process runs the job's end sends its notification.  A
string is short for one: ``"https://..."`` a webhook, ``"mailto:me@example.org"`` a
mail through the SMTP server the ``NBSCHED_SMTP_*`` environment variables name.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeAlias, Union
from urllib.parse import urlsplit

from ..checks import check_choice, check_number, check_whole
from ..checks.notify import check_address, check_notify_word, check_url
from ..errors import InvalidTypeError, InvalidValueError

#: How a webhook's body is shaped: ``auto`` is ``ntfy`` for an ntfy server (its host is
#: ``ntfy.sh`` or starts with ``ntfy.``), else ``json``.
WEBHOOK_FORMATS = ("auto", "json", "ntfy")

_TRUE = ("1", "true", "yes", "on")


def _common(target: Webhook | Email) -> None:
    """The fields both have: tries, back-off, time limit, log lines."""
    set_ = object.__setattr__
    set_(target, "tries", check_whole("tries", target.tries, 1, 20))
    set_(target, "backoff_s", check_number("backoff_s", target.backoff_s, 0.0, 3600.0, False))
    set_(target, "timeout_s", check_number("timeout_s", target.timeout_s, 0.0, 600.0))
    set_(target, "log_lines", check_whole("log_lines", target.log_lines, 0, 1000))


@dataclass(frozen=True)
class Webhook:
    """A POST of JSON to ``url`` when a job (or a sweep) ends.

    The body has ``text`` (what Slack and Mattermost show), ``title``, ``message`` and
    the job's fields under ``job`` (``id``, ``name``, ``status``, ``exit_code``,
    ``duration_s``, ``reason``, ``log_tail``...).  For ntfy (``format="ntfy"``, or
    ``"auto"`` with an ntfy host), ``https://ntfy.sh/TOPIC`` is posted to the server's
    root with ``topic`` in the body, as ntfy's JSON publishing wants.  A failed POST is
    tried ``tries`` times in all, waiting ``backoff_s`` (doubling) between tries.
    """

    url: str
    format: str = "auto"
    tries: int = 4
    backoff_s: float = 2.0
    timeout_s: float = 10.0
    #: The last lines of the job's log put in the message (0: none).
    log_lines: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", check_url("url", self.url))
        fmt = check_choice("format", self.format, WEBHOOK_FORMATS)
        if fmt == "auto":
            host = urlsplit(self.url).hostname or ""
            fmt = "ntfy" if host == "ntfy.sh" or host.startswith("ntfy.") else "json"
        object.__setattr__(self, "format", fmt)
        _common(self)

    def __repr__(self) -> str:  # (a Slack URL is a secret: show its host only)
        parts = urlsplit(self.url)
        return f"Webhook({parts.scheme}://{parts.hostname}/..., format={self.format!r})"

    def describe(self) -> str:
        return f"webhook {urlsplit(self.url).hostname}"


@dataclass(frozen=True)
class Email:
    """A mail to ``to`` (an address or several) through an SMTP server.

    Fields left None come from the environment of the process that submits:
    ``NBSCHED_SMTP_HOST`` (else ``localhost``), ``NBSCHED_SMTP_PORT`` (else 465 with
    ``ssl``, 587 with ``starttls``, else 25), ``NBSCHED_SMTP_FROM`` (else
    ``nbsched@`` this host), ``NBSCHED_SMTP_STARTTLS`` (``1``: STARTTLS) and
    ``NBSCHED_SMTP_USER`` (a login).  The password is never stored: it is read, when the
    mail is sent, from the environment variable named by ``password_env`` of the
    process that sends it (the engine's).
    """

    to: str | tuple[str, ...]
    host: str | None = None
    port: int | None = None
    sender: str | None = None
    starttls: bool | None = None
    ssl: bool = False
    username: str | None = None
    password_env: str = "NBSCHED_SMTP_PASSWORD"
    tries: int = 4
    backoff_s: float = 2.0
    timeout_s: float = 10.0
    log_lines: int = 20

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        to = (self.to,) if isinstance(self.to, str) else self.to
        if not isinstance(to, Iterable) or not to:
            raise InvalidTypeError(f"to={self.to!r}: expected a mail address or a list of them")
        set_(self, "to", tuple(check_address("to", a) for a in to))
        env = os.environ.get
        host = self.host if self.host is not None else env("NBSCHED_SMTP_HOST") or "localhost"
        if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
            raise InvalidValueError(f"host={host!r}: expected an SMTP server's host name")
        set_(self, "host", host.strip())
        if self.starttls is None:
            set_(self, "starttls", env("NBSCHED_SMTP_STARTTLS", "").lower() in _TRUE)
        if not isinstance(self.starttls, bool) or not isinstance(self.ssl, bool):
            raise InvalidTypeError(f"starttls={self.starttls!r}, ssl={self.ssl!r}: expected bools")
        if self.starttls and self.ssl:
            raise InvalidValueError("starttls=True and ssl=True: choose one (ssl: port 465)")
        port: object = self.port if self.port is not None else env("NBSCHED_SMTP_PORT")
        if isinstance(port, str) and port.strip().isdigit():
            port = int(port)
        if port is None:
            port = 465 if self.ssl else 587 if self.starttls else 25
        set_(self, "port", check_whole("port", port, 1, 65535))
        sender = self.sender if self.sender is not None else env("NBSCHED_SMTP_FROM")
        set_(self, "sender", check_address("sender", sender or f"nbsched@{socket.getfqdn()}"))
        user = self.username if self.username is not None else env("NBSCHED_SMTP_USER")
        if user is not None and not isinstance(user, str):
            raise InvalidTypeError(f"username={user!r}: expected a login name or None")
        set_(self, "username", user or None)
        if not isinstance(self.password_env, str) or not self.password_env:
            raise InvalidTypeError(f"password_env={self.password_env!r}: expected a variable name")
        _common(self)

    def describe(self) -> str:
        return f"mail to {', '.join(self.to)}"


Notifier: TypeAlias = Union[Webhook, Email]  # noqa: UP007 (a runtime alias on 3.10)
_KINDS: dict[str, type[Webhook] | type[Email]] = {"webhook": Webhook, "email": Email}


def parse_notify(value: object, name: str = "notify") -> tuple[Notifier, ...] | None:
    """The ``notify=`` argument as notifiers: None (not given: the default applies),
    ``False`` or ``[]`` (none), a :class:`Webhook`, an :class:`Email`, a URL, a
    ``mailto:`` address, or a list of those."""
    if value is None:
        return None
    if value is False:
        return ()
    items = [value] if isinstance(value, (str, Webhook, Email)) else value
    if not isinstance(items, Iterable) or isinstance(items, (bytes, dict)):
        raise InvalidTypeError(
            f"{name}={value!r}: expected a webhook URL, 'mailto:ADDRESS', a Webhook or "
            "Email, a list of those, or False for none"
        )
    out: list[Notifier] = []
    for item in items:
        if isinstance(item, (Webhook, Email)):
            out.append(item)
        elif isinstance(item, str):
            word = check_notify_word(name, item)
            out.append(
                Email(word[len("mailto:") :]) if word.startswith("mailto:") else Webhook(word)
            )
        else:
            raise InvalidTypeError(
                f"{name}: {item!r}: expected a webhook URL, 'mailto:ADDRESS', a Webhook or Email"
            )
    return tuple(out)


def check_default(value: object) -> tuple[Notifier, ...]:
    """The config's ``notify``: the engine's default targets (none: ``()``)."""
    return parse_notify(value, "notify") or ()


def dumps(notifiers: Iterable[Notifier]) -> str:
    """The notifiers as the store keeps them (JSON)."""
    out = []
    for n in notifiers:
        kind = "webhook" if isinstance(n, Webhook) else "email"
        out.append({"type": kind, **asdict(n)})
    return json.dumps(out, separators=(",", ":"))


def from_dict(data: dict[str, Any]) -> Notifier:
    """One stored notifier, as it was checked at submission (not resolved again from
    this process's environment; fields a newer version added are left out)."""
    cls = _KINDS[data["type"]]
    made: Notifier = object.__new__(cls)
    for f in fields(cls):
        value = data.get(f.name, f.default)
        made.__dict__[f.name] = tuple(value) if isinstance(value, list) else value
    return made


def loads(text: str | None) -> tuple[Notifier, ...]:
    """The notifiers stored as ``text`` (None: none)."""
    if not text:
        return ()
    return tuple(from_dict(d) for d in json.loads(text))


def check_on_end(on_end: object) -> None:
    """``on_end=``: a callable taking the ended job, or None."""
    if on_end is not None and not callable(on_end):
        raise InvalidTypeError(
            f"on_end={on_end!r}: expected a function called with the ended job, or None"
        )


__all__ = [
    "WEBHOOK_FORMATS",
    "Email",
    "Notifier",
    "Webhook",
    "check_default",
    "check_on_end",
    "dumps",
    "from_dict",
    "loads",
    "parse_notify",
]
