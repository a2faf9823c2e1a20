"""A stand-in for GitHub's REST API for load tests: raw ASGI (so it is never the bottleneck), a fixed
delay per answer, payloads from the shared make_repos fixture, ETags and 304s like GitHub's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

from starlette.types import Receive, Scope, Send

_ROOT = Path(__file__).resolve().parent.parent
_SHARED = _ROOT.parent / "shared" / "fixtures" / "github"
sys.path.insert(0, str(_SHARED if (_SHARED / "make_repos.py").exists() else _ROOT / "tests" / "fixtures"))
from make_repos import make  # noqa: E402

OWNER = os.environ.get("BENCH_OWNER", "octo-dev")
DELAY = float(os.environ.get("BENCH_UPSTREAM_DELAY", "0"))
COUNT = int(os.environ.get("BENCH_UPSTREAM_REPOS", "30"))

REPOS = make(OWNER, COUNT)
_LIST = json.dumps(REPOS).encode()
_PROFILE = json.dumps({"login": OWNER, "type": "User", "html_url": f"https://github.com/{OWNER}", "public_repos": COUNT}).encode()
_BY_NAME = {r["name"].lower(): json.dumps(r).encode() for r in REPOS}


def _etag(body: bytes) -> bytes:
    return b'"' + hashlib.sha1(body).hexdigest().encode() + b'"'


_ETAGS = {id(b): _etag(b) for b in (_LIST, _PROFILE, *_BY_NAME.values())}


calls = 0


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global calls
    if scope["type"] != "http":
        return
    if scope["path"] == "/_calls":  # how many API calls were answered, for the report
        body = str(calls).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    calls += 1
    if DELAY:
        await asyncio.sleep(DELAY)
    parts = scope["path"].strip("/").split("/")
    body = None
    if parts == ["users", OWNER]:
        body = _PROFILE
    elif parts == ["users", OWNER, "repos"]:
        body = _LIST
    elif len(parts) == 3 and parts[0] == "repos":
        body = _BY_NAME.get(parts[2].lower())
    if body is None:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    etag = _ETAGS[id(body)]
    if dict(scope["headers"]).get(b"if-none-match") == etag:
        await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag)]})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json"), (b"etag", etag), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
