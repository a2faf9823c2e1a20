"""A loopback build-hook receiver standing in for Netlify, Vercel or Cloudflare Pages: keeps every POST it is
sent (path, headers, body, when) and answers from a script of statuses, then 204 for ever."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support import LoopbackServer, QuietHandler


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # wall clock, to compare with announcement times

    @property
    def payload(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded

    def signed_with(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-hub-signature-256", ""), expected)


class HookReceiver(LoopbackServer):
    """`answers`: statuses (with optional headers) for the first POSTs, in order; 204 after them."""

    def __init__(self, *answers: int | tuple[int, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.hits: list[Hit] = []
        self.delay = 0.0  # seconds each answer waits (a build host that does not answer)
        super().__init__()

    @property
    def url(self) -> str:
        """As a build host hands it out: the path and query are the secret that starts builds."""
        return f"{super().url}/build_hooks/5c23354f454e1350f8543e78?trigger_title=secret-title"

    def received(self) -> list[Hit]:
        with self.lock:
            return list(self.hits)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.body()
                with receiver.lock:
                    receiver.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    answer = receiver.answers.pop(0) if receiver.answers else 204
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                time.sleep(receiver.delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
