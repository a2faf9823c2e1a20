"""A real HTTP server on 127.0.0.1 standing in for GitHub's REST API, with switchable failure scenarios.

It speaks over real sockets (so timeouts, refused and reset connections are real) and counts every
call, so tests can prove how often the service went upstream. Also the small helpers tests against it
share: signing a webhook delivery as GitHub does, and waiting on a condition instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from tests.fixtures.make_repos import make

T = TypeVar("T")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset_connection: bool = False


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when it arrived


Scenario = Callable[[str, dict[str, str]], Reply | None]


class GitHubStandIn:
    def __init__(self, owner: str = "octo-dev", count: int = 30, owner_type: str = "User") -> None:
        self.owner = owner
        self.owner_type = owner_type
        self.repos = make(owner, count)
        self.calls: list[Call] = []
        self.scenario: Scenario | None = None  # returns a Reply to override normal behaviour, or None
        self.delay = 0.0
        self.hold: threading.Event | None = None  # when set to an Event, every answer waits for it (at most 30 s)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> GitHubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls_to(self, prefix: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path.startswith(prefix)]

    # -- normal GitHub behaviour -------------------------------------------------------------

    def answer(self, path: str, headers: dict[str, str]) -> Reply:
        url = urlsplit(path)
        query = parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        if parts == ["users", self.owner] or parts == ["orgs", self.owner]:
            return self._json(self.profile(), headers)
        if len(parts) == 3 and parts[0] in ("users", "orgs") and parts[1] == self.owner and parts[2] == "repos":
            per_page = int(query.get("per_page", ["30"])[0])
            page = int(query.get("page", ["1"])[0])
            chunk = self.repos[(page - 1) * per_page : page * per_page]
            extra = {}
            if page * per_page < len(self.repos):
                base = f"{self.url}{url.path}?{'&'.join(f'{k}={v[0]}' for k, v in query.items() if k != 'page')}"
                extra["Link"] = f'<{base}&page={page + 1}>; rel="next", <{base}&page=1>; rel="first"'
            return self._json(chunk, headers, extra)
        if len(parts) == 3 and parts[0] == "repos" and parts[1] == self.owner:
            for repo in self.repos:
                if repo["name"].lower() == parts[2].lower():
                    return self._json(repo, headers)
        return Reply(404, json.dumps({"message": "Not Found"}).encode(), {"Content-Type": "application/json"})

    def profile(self) -> dict[str, object]:
        return {
            "login": self.owner,
            "id": 583231,
            "type": self.owner_type,
            "name": "Octo Developer",
            "html_url": f"https://github.com/{self.owner}",
            "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
            "bio": "Writes small fast services.",
            "blog": "https://octo.example",
            "location": "Oslo",
            "public_repos": len(self.repos),
            "followers": 42,
            "site_admin": False,
        }

    @staticmethod
    def _json(payload: object, headers: dict[str, str], extra: dict[str, str] | None = None) -> Reply:
        body = json.dumps(payload).encode()
        etag = '"' + hashlib.sha1(body).hexdigest() + '"'
        out = {"Content-Type": "application/json; charset=utf-8", "ETag": etag, **(extra or {})}
        if headers.get("if-none-match") == etag:
            return Reply(304, b"", out)
        return Reply(200, body, out)

    # -- the server ------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with standin._lock:
                    standin.calls.append(Call(self.path, headers))
                reply = (standin.scenario and standin.scenario(self.path, headers)) or standin.answer(self.path, headers)
                if standin.hold is not None:
                    standin.hold.wait(timeout=30)
                if reply.delay or standin.delay:
                    time.sleep(reply.delay or standin.delay)  # the stand-in's own thread, not the service's loop
                if reply.reset_connection:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.status != 304:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.status != 304:
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


# -- helpers for tests against the stand-in ----------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    """X-Hub-Signature-256 as GitHub computes it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_headers(secret: str, body: bytes, *, event: str, delivery: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature(secret, body),
        "User-Agent": "GitHub-Hookshot/test",
    }


def push_payload(owner: str, repository: str) -> bytes:
    """A push delivery's body, with the fields a real one carries around the ones the service reads."""
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": "1" * 40,
            "repository": {"name": repository, "full_name": f"{owner}/{repository}", "owner": {"login": owner, "type": "User"}},
            "pusher": {"name": owner},
            "commits": [{"id": "1" * 40, "message": "A change"}],
        }
    ).encode()


async def poll(probe: Callable[[], Awaitable[T]], *, until: Callable[[T], bool], timeout: float = 10.0, every: float = 0.05) -> T:
    """`probe()` again and again until its result satisfies `until`, and that result; fails the test after
    `timeout` seconds (a bound against hanging, not a speed)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if until(result):
            return result
        assert time.monotonic() <= deadline, f"timed out after {timeout:g} s; last result: {result!r}"
        await asyncio.sleep(every)


async def gather(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*awaitables))
