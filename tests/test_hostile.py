"""Garbage from clients, sent over real sockets to a real server: each gets a 4xx problem in time, nothing is written."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from tests.github_standin import GitHubStandIn
from tests.support import procfile_server

TOKEN = "hostile-admin-token-0123456789"
REQUEST_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, GitHubStandIn]]:
    tmp = tmp_path_factory.mktemp("hostile")
    with GitHubStandIn() as github:
        env = {"DATABASE_URL": f"sqlite:///{tmp}/db.sqlite", "ADMIN_TOKEN": TOKEN, "MAX_BODY_BYTES": "10000",
               "REQUEST_TIMEOUT": str(REQUEST_TIMEOUT), "GITHUB_OWNER": github.owner, "GITHUB_API_URL": github.url}  # fmt: skip
        with procfile_server(env, cwd=tmp) as (url, _):
            yield url, github


def raw_exchange(
    url: str, head: bytes, chunks: Sequence[tuple[float, bytes]] = (), read_timeout: float = 10
) -> tuple[int, dict[str, str], bytes, float]:
    """Send bytes as given (with pauses), then read one response: (status, headers, body, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(head)
        for pause, data in chunks:
            time.sleep(pause)
            try:
                sock.sendall(data)
            except OSError:
                break  # the server answered and closed already
        received = b""
        while b"\r\n\r\n" not in received:
            part = sock.recv(65536)
            if not part:
                break
            received += part
        head_bytes, _, body = received.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            part = sock.recv(65536)
            if not part:
                break
            body += part
    return int(lines[0].split()[1]), headers, body, time.monotonic() - started


def count(url: str) -> int:
    response = httpx.get(f"{url}/announcements?status=all&limit=100", headers={"Authorization": f"Bearer {TOKEN}"})
    return len(response.json()["items"])


def post_head(length: int | None, *, chunked: bool = False) -> bytes:
    head = f"POST /announcements HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    elif length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, body[:300]
    assert headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = json.loads(body)
    return problem


Server = tuple[str, GitHubStandIn]


def test_declared_oversize_body_is_413_at_once(server: Server) -> None:
    url, _ = server
    status, headers, body, _ = raw_exchange(url, post_head(10**9))  # and not one byte of the body follows
    # 413 rather than 408: the answer did not wait for a body that never comes.
    assert_problem(status, headers, body, 413)
    assert count(url) == 0


def test_chunked_oversize_body_without_length_is_413(server: Server) -> None:
    url, _ = server
    chunk = b'{"title": "' + b"x" * 4000
    chunks = [(0.0, f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") for _ in range(10)]
    status, headers, body, _ = raw_exchange(url, post_head(None, chunked=True), chunks)
    assert_problem(status, headers, body, 413)
    assert count(url) == 0


def test_slowly_trickled_body_is_408_within_the_request_timeout(server: Server) -> None:
    url, _ = server
    payload = json.dumps({"title": "slow", "body": "loris"}).encode()
    chunks = [(0.5, payload[i : i + 1]) for i in range(len(payload))]  # one byte every half second: 17 s in all
    status, headers, body, seconds = raw_exchange(url, post_head(len(payload)), chunks)
    assert_problem(status, headers, body, 408)
    # The promised deadline, with a generous margin: not before REQUEST_TIMEOUT, and long before the body ends.
    assert REQUEST_TIMEOUT <= seconds < REQUEST_TIMEOUT + 5
    assert count(url) == 0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"title": "\xff\xfe\xfd", "body": "x"}', 400),  # invalid UTF-8
        (b'{"title": "ok", "body": "\xed\xa0\x80"}', 400),  # a lone surrogate, encoded
        (b"[" * 4900 + b"]" * 4900, 422),  # deeply nested
        (b'{"title": ' + b"[" * 9000, 422),
        (b'{"title": "x", "body": "y", "pinned": 1' + b"0" * 5000 + b"}", 400),  # huge number
        (b'{"title": 1e99999, "body": "y"}', 400),
        (b'{"title": "x", "body": "y", "tags": ["a"], "tags": [1]}', 422),  # duplicate key, wrong type
        (b"\x00\x01\x02", 400),
    ],
    ids=["utf8", "surrogate", "nested", "nested-field", "huge-int", "huge-float", "dup-key", "binary"],
)
def test_malformed_json_is_a_4xx_problem_and_writes_nothing(server: Server, payload: bytes, expected: int) -> None:
    url, _ = server
    status, headers, body, _ = raw_exchange(url, post_head(len(payload)) + payload)
    assert_problem(status, headers, body, expected)
    assert count(url) == 0


PARSER_REFUSAL = (400, "text/plain; charset=utf-8")  # uvicorn's own answer: the request never reached the service


@pytest.mark.parametrize(
    ("value", "status", "request_id"),
    [
        # CRLF ends the header line: "abc" is the id (a valid one, echoed), "X-Injected: 1" a request header of its own.
        (b"abc\r\nX-Injected: 1", 200, "abc"),
        (b"abc%0d%0aSet-Cookie: a=b", 200, None),  # None: replaced by a generated id
        (b"<script>", 200, None),
        (b"a" * 500, 200, None),
        (b"ok;rm", 200, None),
        ("caf\u00e9".encode(), 200, None),
        (b"abc\x00def", 400, None),  # control characters in a header value: refused by the HTTP parser
        (b"abc\rdef", 400, None),
        (b"abc\ndef: 1", 400, None),
    ],
    ids=["crlf", "encoded-crlf", "script", "long", "semicolon", "utf8", "nul", "bare-cr", "bare-lf"],
)
def test_request_id_injection_is_replaced_not_echoed(server: Server, value: bytes, status: int, request_id: str | None) -> None:
    url, _ = server
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + value + b"\r\nConnection: close\r\n\r\n"
    answered, headers, body, _ = raw_exchange(url, head)
    assert answered == status, body[:300]
    assert "x-injected" not in headers and "set-cookie" not in headers and "def" not in headers
    if status == 400:
        assert (answered, headers["content-type"]) == PARSER_REFUSAL and "x-request-id" not in headers
    elif request_id is not None:
        assert headers["x-request-id"] == request_id
    else:
        generated = headers["x-request-id"]
        assert re.fullmatch("[0-9a-f]{16}", generated) and generated.encode() != value


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/github/repos/..%2F..%2Fusers%2Foctocat", 404),
        ("/github/repos/%2e%2e", 404),
        ("/github/repos/x%00y", 404),
        ("/github/repos/a.git", 404),
        ("/github/repos/%C0%AE%C0%AE", 404),
        ("/github/repos/..;/admin", 404),
        ("/github/repos/x\x00y", 400),  # a raw NUL in the request line: refused by the HTTP parser
        ("/github/repos/a b", 400),
    ],
)
def test_path_traversal_never_reaches_github(server: Server, path: str, status: int) -> None:
    url, github = server
    before = len(github.calls_to("/repos/"))
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    answered, headers, body, _ = raw_exchange(url, head)
    if status == 400:
        assert (answered, headers["content-type"]) == PARSER_REFUSAL, body[:300]
    else:
        assert_problem(answered, headers, body, status)
    assert len(github.calls_to("/repos/")) == before
