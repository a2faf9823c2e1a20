"""GET /github/repos, /github/repos/{name} and /github/owner: answered from cached, pre-encoded bytes."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.errors import NotFound
from service.github.cache import Lookup
from service.github.client import GitHubClient
from service.github.models import RepositoryQuery, is_valid_repository_name, select
from service.json_body import convert_query

_encoder = msgspec.json.Encoder()
_WHOLE = "whole"  # the view key of an entry encoded as it is


_QUERY_CACHE_SIZE = 256
_queries: dict[bytes, RepositoryQuery] = {}


async def list_repositories(request: Request) -> CachedBodyResponse:
    query = _parsed_query(request)
    github = _github(request)
    lookup = await github.repositories()
    return _cached_response(request, github, lookup, query, lambda: _encoder.encode(select(lookup.entry.value, query)))


def _parsed_query(request: Request) -> RepositoryQuery:
    """The query, parsed once per distinct query string: a cache hit should cost next to nothing."""
    raw = request.scope["query_string"]
    query = _queries.get(raw)
    if query is None:
        query = convert_query(request.query_params, RepositoryQuery)  # raises on invalid input: not cached
        if len(_queries) >= _QUERY_CACHE_SIZE:
            _queries.clear()
        _queries[raw] = query
    return query


async def get_repository(request: Request) -> CachedBodyResponse:
    name = request.path_params["name"]
    if not is_valid_repository_name(name):
        raise NotFound("Not a valid repository name.")
    github = _github(request)
    lookup = await github.repository(name)
    return _cached_response(request, github, lookup, _WHOLE, lambda: _encoder.encode(lookup.entry.value))


async def get_owner(request: Request) -> CachedBodyResponse:
    github = _github(request)
    lookup = await github.profile()
    return _cached_response(request, github, lookup, _WHOLE, lambda: _encoder.encode(lookup.entry.value))


def _github(request: Request) -> GitHubClient:
    return request.app.state.github


class CachedBodyResponse:
    """Cached bytes with their headers, sent as they are (no per-request header building)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})


def _cached_response(
    request: Request, github: GitHubClient, lookup: Lookup, view_key: object, render: Callable[[], bytes]
) -> CachedBodyResponse:
    view = lookup.entry.view(view_key, render)
    headers = [
        (b"etag", view.etag.encode()),
        (b"cache-control", _cache_control(github.cache.ttl, github.cache.stale_ttl)),
        (b"x-cache", lookup.state.encode()),
        (b"age", str(int(github.cache.age(lookup.entry))).encode()),
    ]
    if _matches(_if_none_match(request.scope), view.etag):
        return CachedBodyResponse(304, b"", headers)
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(view.body)).encode())]
    return CachedBodyResponse(200, view.body, headers)


def _if_none_match(scope: Scope) -> str | None:
    for name, value in scope["headers"]:  # a scan, not a Headers object: this is every cache hit's path
        if name == b"if-none-match":
            return value.decode("latin-1")
    return None


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@functools.cache
def _cache_control(ttl: float, stale_ttl: float) -> bytes:
    """Browsers and CDNs may keep an answer a minute, and use it while we refresh or while GitHub fails."""
    return f"public, max-age={min(60, int(ttl))}, stale-while-revalidate={int(ttl)}, stale-if-error={int(stale_ttl)}".encode()


class _Endpoint:
    """A handler as the route's bare ASGI app, without Starlette's per-request exception wrapper (about a
    fifth of a cache hit's time). What the handler raises still reaches the app's exception handlers."""

    __slots__ = ("handler",)

    def __init__(self, handler: Callable[[Request], Awaitable[CachedBodyResponse]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


routes = [
    Route("/github/repos", _Endpoint(list_repositories), methods=["GET"]),
    Route("/github/repos/{name}", _Endpoint(get_repository), methods=["GET"]),
    Route("/github/owner", _Endpoint(get_owner), methods=["GET"]),
]
