"""Sending one message to one target, once: a webhook POST or a mail.  Each raises
:class:`SendError` (with words for the log and the notices) when the target refused
it or could not be reached; retrying is :mod:`.deliver`'s."""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from urllib.parse import urlsplit, urlunsplit

from .message import Message
from .targets import Email, Notifier, Webhook

#: ntfy's tags (shown as emoji) for a status.
_NTFY_TAGS = {"succeeded": "white_check_mark", "failed": "x", "cancelled": "no_entry_sign"}

#: Slack's and Mattermost's emoji codes for a status (at the head of ``text``).
_EMOJI = {"succeeded": ":white_check_mark:", "failed": ":x:", "cancelled": ":no_entry_sign:"}


class SendError(Exception):
    """A notification was not sent (this try)."""


def send(target: Notifier, message: Message) -> None:
    """Send ``message`` to ``target`` once; raises :class:`SendError`."""
    if isinstance(target, Webhook):
        post_webhook(target, message)
    else:
        send_mail(target, message)


def webhook_request(target: Webhook, message: Message) -> tuple[str, dict[str, object]]:
    """The URL to POST to and the JSON body: ``text`` for Slack and Mattermost, the
    fields for anything else; for ntfy, its JSON publishing (topic in the body, posted
    to the server's root)."""
    title, text = message["title"], message["text"]
    if target.format == "ntfy":
        parts = urlsplit(target.url)
        topic = parts.path.strip("/")
        root = urlunsplit((parts.scheme, parts.netloc, "/", "", ""))
        tag = _NTFY_TAGS.get(message["status"])
        body: dict[str, object] = {"topic": topic, "title": title, "message": text}
        if tag:
            body["tags"] = [tag]
        return root, body
    emoji = _EMOJI.get(message["status"], ":information_source:")
    body = {"text": f"{emoji} {text}", "title": title, "message": text}
    body["status"] = message["status"]
    for key in ("job", "sweep"):
        if key in message:
            body[key] = message[key]
    return target.url, body


def post_webhook(target: Webhook, message: Message) -> None:
    """POST the message's JSON; a status other than 2xx is a failure."""
    url, body = webhook_request(target, message)
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "nbsched"},
    )
    where = urlsplit(url).hostname
    try:
        with urllib.request.urlopen(request, timeout=target.timeout_s) as answer:
            answer.read(65536)
    except urllib.error.HTTPError as exc:
        raise SendError(f"webhook {where}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SendError(f"webhook {where}: {reason}") from None


def mail(target: Email, message: Message) -> EmailMessage:
    """The mail of a message."""
    msg = EmailMessage()
    msg["Subject"] = message["title"]
    msg["From"] = target.sender
    msg["To"] = ", ".join(target.to)
    msg.set_content(message["text"] + "\n")
    return msg


def send_mail(target: Email, message: Message) -> None:
    """Hand the mail to the SMTP server (STARTTLS and a login if configured)."""
    assert target.host is not None and target.port is not None
    where = f"SMTP server {target.host}:{target.port}"
    timeout = target.timeout_s
    try:
        if target.ssl:
            server: smtplib.SMTP = smtplib.SMTP_SSL(
                target.host, target.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            server = smtplib.SMTP(target.host, target.port, timeout=timeout)
        with server:
            if target.starttls:
                server.starttls(context=ssl.create_default_context())
            if target.username:
                password = os.environ.get(target.password_env)
                if password is None:
                    raise SendError(
                        f"{where}: login {target.username!r} needs a password in the "
                        f"environment variable {target.password_env} of the engine's process"
                    )
                server.login(target.username, password)
            server.send_message(mail(target, message))
    except SendError:
        raise
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise SendError(f"{where}: {exc}") from None


__all__ = ["SendError", "mail", "post_webhook", "send", "send_mail", "webhook_request"]
