"""What the notification tests share: an HTTP server on 127.0.0.1 that records the
webhooks posted to it, and waiting for something to happen (or not)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from nbsched import GPUJobScheduler

MakeSched = Callable[..., GPUJobScheduler]


class Hook:
    """An HTTP server on 127.0.0.1 that records each POST; it answers with the codes
    in ``codes`` first (one each), then with ``then``; while ``answering`` is clear, a POST
    is recorded and left unanswered until it is set."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.codes: list[int] = []
        self.then = 200
        self.answering = threading.Event()
        self.answering.set()
        self.lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.lock:
                    hook.posts.append((self.path, body))
                    code = hook.codes.pop(0) if hook.codes else hook.then
                hook.answering.wait(60)
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, body in self.posts]


def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """``check()``'s first true value, within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {check}")


def settle(seconds: float = 0.6) -> None:
    """Time for anything that should not happen (a second notification) to happen."""
    time.sleep(seconds)
