"""Mail notifications through a real SMTP server on 127.0.0.1 (aiosmtpd), and the verbs
``--notify`` / ``--notify-email`` of the command and the magics."""

from __future__ import annotations

import email
import email.policy
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from notify_support import Hook, MakeSched, settle, until

from nbsched import Email

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell


class Inbox:
    """What an SMTP server received: the messages, and the logins it was given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(parsed)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = (data.login.decode(), data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == ("nb", "s3cret"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = _free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=inbox.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    yield inbox, port
    controller.stop()


def test_a_mail_tells_the_jobs_end(make_sched: MakeSched, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    s = make_sched(start=True)
    target = Email("me@example.org", host="127.0.0.1", port=port, sender="gpu@example.org")
    job = s.add_command("echo epoch 9 loss 0.1; exit 2", required_gpus=0.5, notify=target)
    s.wait([job])
    (msg,) = until(lambda: list(inbox.messages))
    assert msg["Subject"] == f"nbsched: job {job} failed"
    assert msg["From"] == "gpu@example.org" and msg["To"] == "me@example.org"
    body = msg.get_content()
    assert f"job {job} failed, exit code 2" in body and "epoch 9 loss 0.1" in body
    assert inbox.envelopes == [("gpu@example.org", ["me@example.org"])]
    settle()
    assert len(inbox.messages) == 1


def test_mailto_takes_the_server_from_the_environment_and_logs_in(
    make_sched: MakeSched,
    smtp: tuple[Inbox, int],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    inbox, port = smtp
    for name, value in {
        "NBSCHED_SMTP_HOST": "127.0.0.1",
        "NBSCHED_SMTP_PORT": str(port),
        "NBSCHED_SMTP_FROM": "lab@example.org",
        "NBSCHED_SMTP_USER": "nb",
        "NBSCHED_SMTP_PASSWORD": "s3cret",
    }.items():
        monkeypatch.setenv(name, value)
    s = make_sched(start=True)
    job = s.add_command("true", required_gpus=0.5, notify=["mailto:a@example.org", "b@x.org"])
    s.wait([job])
    until(lambda: len(inbox.messages) == 2)
    assert sorted(m["To"] for m in inbox.messages) == ["a@example.org", "b@x.org"]
    assert {m["From"] for m in inbox.messages} == {"lab@example.org"}
    assert inbox.logins == [("nb", "s3cret")] * 2
    assert b"s3cret" not in (tmp_path / "state" / "state.db").read_bytes()  # (never stored)


def test_a_wrong_password_is_retried_then_given_up(
    make_sched: MakeSched, smtp: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, port = smtp
    monkeypatch.setenv("MY_SMTP_PW", "wrong")
    s = make_sched(start=True)
    # (aiosmtpd does not answer a refused login: each try times out)
    login = {"username": "nb", "password_env": "MY_SMTP_PW", "timeout_s": 1.0}
    target = Email("me@example.org", host="127.0.0.1", port=port, tries=2, backoff_s=0.05, **login)
    job = s.add_command("true", required_gpus=0.5, notify=target)
    s.wait([job])
    until(lambda: s.notifications() and s.notifications()[0]["state"] == "failed")
    assert len(inbox.logins) == 2 and not inbox.messages
    assert s.job(job)["status"] == "succeeded"
    (notice,) = [n for n in s.notices() if n["source"] == "notifications"]
    assert "mail to me@example.org was not sent after 2 tries" in notice["message"]


# -- the verbs ------------------------------------------------------------------------------


def test_the_command_takes_notify_email_and_notify(
    make_sched: MakeSched, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    inbox, port = smtp
    hook = Hook()
    s = make_sched(start=True)  # (the engine: it sends what the command's jobs ask)
    env = {
        **__import__("os").environ,
        "NBSCHED_SMTP_HOST": "127.0.0.1",
        "NBSCHED_SMTP_PORT": str(port),
    }
    done = subprocess.run(
        [sys.executable, "-m", "nbsched.cli", "run", "--state-dir", str(tmp_path / "state"),
         "--gpus", "0.5", "--notify-email", "me@example.org", "--notify", hook.url,
         "--", "echo", "from the command"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    job = done.stdout.strip().split()[-1]
    s.wait([job])
    (msg,) = until(lambda: list(inbox.messages))
    assert msg["To"] == "me@example.org" and "from the command" in msg.get_content()
    (body,) = until(hook.bodies)
    assert body["job"]["id"] == job
    hook.server.shutdown()
    bad = subprocess.run(
        [sys.executable, "-m", "nbsched.cli", "run", "--state-dir", str(tmp_path / "state"),
         "--notify-email", "not-an-address", "--", "true"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--notify-email='not-an-address': expected one mail address" in bad.stderr


def test_the_magic_takes_notify(ip: InteractiveShell, tmp_path: Path) -> None:
    hook = Hook()
    try:
        ip.run_line_magic("gpusched", f"start --simulate 2 --state-dir {tmp_path / 'state'}")
        job = ip.run_line_magic("gpusched", f"run --gpus 0.5 --notify {hook.url} -- echo magic")
        ip.run_line_magic("gpusched", f"wait {job}")
        (body,) = until(hook.bodies)
        assert body["job"]["id"] == job and body["job"]["log_tail"] == "magic"
    finally:
        hook.server.shutdown()
