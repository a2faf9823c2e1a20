"""Garbage from clients, sent over real sockets to a real server: each gets a 4xx problem in time, nothing is written."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

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


def raw_exchange(url: str, head: bytes, chunks: list[tuple[float, bytes]] = (), read_timeout: float = 10) -> tuple[int, dict, bytes, float]:  # type: ignore[assignment]
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


def assert_problem(status: int, headers: dict, body: bytes, expected: int) -> dict:
    assert status == expected, body[:300]
    assert headers["content-type"] == "application/problem+json"
    return json.loads(body)


def test_declared_oversize_body_is_413_at_once(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    status, headers, body, seconds = raw_exchange(url, post_head(10**9))
    assert_problem(status, headers, body, 413)
    assert seconds < 1 and count(url) == 0


def test_chunked_oversize_body_without_length_is_413(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    chunk = b'{"title": "' + b"x" * 4000
    chunks = [(0.0, f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") for _ in range(10)]
    status, headers, body, _ = raw_exchange(url, post_head(None, chunked=True), chunks)
    assert_problem(status, headers, body, 413)
    assert count(url) == 0


def test_slowly_trickled_body_is_408_within_the_request_timeout(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    payload = json.dumps({"title": "slow", "body": "loris"}).encode()
    chunks = [(0.5, payload[i : i + 1]) for i in range(len(payload))]  # one byte every half second
    status, headers, body, seconds = raw_exchange(url, post_head(len(payload)), chunks)
    assert_problem(status, headers, body, 408)
    assert REQUEST_TIMEOUT <= seconds < REQUEST_TIMEOUT + 1.5
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
def test_malformed_json_is_a_4xx_problem_and_writes_nothing(server, payload: bytes, expected: int) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    status, headers, body, seconds = raw_exchange(url, post_head(len(payload)) + payload)
    assert_problem(status, headers, body, expected)
    assert seconds < REQUEST_TIMEOUT and count(url) == 0


@pytest.mark.parametrize("value", ["abc\r\nX-Injected: 1", "abc%0d%0aSet-Cookie: a=b", "<script>", "a" * 500, "ok;rm"])
def test_request_id_injection_is_replaced_not_echoed(server, value: str) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    head = f"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: {value}\r\nConnection: close\r\n\r\n".encode()
    status, headers, body, _ = raw_exchange(url, head)
    if status == 400:  # the HTTP parser itself refused the header line: nothing reached the app
        return
    assert status == 200
    # Either a fresh id, or (CRLF splits the line into two request headers) the harmless part before it.
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,200}", headers["x-request-id"]) and headers["x-request-id"] != value
    assert "x-injected" not in headers and "set-cookie" not in headers


@pytest.mark.parametrize("path", ["/github/repos/..%2F..%2Fusers%2Foctocat", "/github/repos/%2e%2e", "/github/repos/x%00y",
                                  "/github/repos/a.git", "/github/repos/%C0%AE%C0%AE", "/github/repos/..;/admin"])  # fmt: skip
def test_path_traversal_never_reaches_github(server, path: str) -> None:  # type: ignore[no-untyped-def]
    url, github = server
    before = len(github.calls_to("/repos/"))
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    status, headers, body, _ = raw_exchange(url, head)
    assert 400 <= status < 500
    if status != 400:  # 400 from the HTTP parser carries no problem body
        assert headers["content-type"] == "application/problem+json"
    assert len(github.calls_to("/repos/")) == before
