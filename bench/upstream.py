"""A stand-in for GitHub's REST API for load tests and local runs: raw ASGI (so it is never the
bottleneck), a fixed delay per answer, payloads from the tests' make_repos fixture, ETags and 304s
like GitHub's.

From the repository root: `.venv/bin/python -m bench.upstream --port 8001` serves the owner octo-dev
(BENCH_OWNER, BENCH_UPSTREAM_REPOS and BENCH_UPSTREAM_DELAY change what it serves).

Besides the listed repositories it answers `/repos/<owner>/unlisted-<anything>` with a repository of
that name, made on the spot: bench scenario 3 asks for a new name every request, so no answer can come
from a copy. `/_calls` counts the API calls answered, so the bench can show how many requests really
reached GitHub.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os

from starlette.types import Receive, Scope, Send

from tests.fixtures.make_repos import make

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
UNLISTED = "unlisted-"


def _unlisted(name: str) -> bytes:
    """A repository that is not on the list, named as asked."""
    return json.dumps(
        {**REPOS[0], "name": name, "full_name": f"{OWNER}/{name}", "html_url": f"https://github.com/{OWNER}/{name}"}
    ).encode()


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
    elif len(parts) == 3 and parts[0] == "repos" and parts[1] == OWNER and parts[2].lower().startswith(UNLISTED):
        body = _unlisted(parts[2])
    elif len(parts) == 3 and parts[0] == "repos":
        body = _BY_NAME.get(parts[2].lower())
    if body is None:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    etag = _ETAGS.get(id(body)) or _etag(body)
    if dict(scope["headers"]).get(b"if-none-match") == etag:
        await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag)]})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json"), (b"etag", etag), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description="Serve a GitHub stand-in for one owner.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="default 8001, beside the service's 8000")
    args = parser.parse_args(argv)
    url = f"http://{args.host}:{args.port}"
    print(f"GitHub stand-in serving owner {OWNER} ({COUNT} repositories) on {url}; "
          f"run the service with GITHUB_API_URL={url} GITHUB_OWNER={OWNER}", flush=True)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
