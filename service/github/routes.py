"""GET /github/repos, /github/repos/{name} and /github/owner: answered from cached, pre-encoded bytes."""

from __future__ import annotations

import functools
from collections.abc import Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.errors import NotFound
from service.github.cache import Lookup
from service.github.client import GitHubClient
from service.github.models import RepositoryQuery, is_valid_repository_name, select
from service.json_body import convert_query

_encoder = msgspec.json.Encoder()
_WHOLE = "whole"  # the view key of an entry encoded as it is


async def list_repositories(request: Request) -> Response:
    query = convert_query(request.query_params, RepositoryQuery)
    lookup = await _github(request).repositories()
    return _cached_response(request, lookup, query, lambda: _encoder.encode(select(lookup.entry.value, query)))


async def get_repository(request: Request) -> Response:
    name = request.path_params["name"]
    if not is_valid_repository_name(name):
        raise NotFound("Not a valid repository name.")
    lookup = await _github(request).repository(name)
    return _cached_response(request, lookup, _WHOLE, lambda: _encoder.encode(lookup.entry.value))


async def get_owner(request: Request) -> Response:
    lookup = await _github(request).profile()
    return _cached_response(request, lookup, _WHOLE, lambda: _encoder.encode(lookup.entry.value))


def _github(request: Request) -> GitHubClient:
    return request.app.state.github


def _cached_response(request: Request, lookup: Lookup, view_key: object, render: Callable[[], bytes]) -> Response:
    github = _github(request)
    view = lookup.entry.view(view_key, render)
    headers = {
        "ETag": view.etag,
        "Cache-Control": _cache_control(github.cache.ttl, github.cache.stale_ttl),
        "X-Cache": lookup.state,
        "Age": str(int(github.cache.age(lookup.entry))),
    }
    if _matches(request.headers.get("if-none-match"), view.etag):
        return Response(status_code=304, headers=headers)
    return Response(view.body, headers=headers, media_type="application/json")


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@functools.cache
def _cache_control(ttl: float, stale_ttl: float) -> str:
    """Browsers and CDNs may keep an answer a minute, and use it while we refresh or while GitHub fails."""
    return f"public, max-age={min(60, int(ttl))}, stale-while-revalidate={int(ttl)}, stale-if-error={int(stale_ttl)}"


routes = [
    Route("/github/repos", list_repositories, methods=["GET"]),
    Route("/github/repos/{name}", get_repository, methods=["GET"]),
    Route("/github/owner", get_owner, methods=["GET"]),
]
