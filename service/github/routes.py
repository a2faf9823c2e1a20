"""GET /github/repos, /github/repos/{name}, /github/owner, /github/pinned and /github/languages, answered
from cached, pre-encoded bytes; POST /github/webhook (service.github.webhook)."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from service.errors import NotFound
from service.github.cache import Lookup
from service.github.client import GitHubClient, View
from service.github.models import RepositoryQuery, is_valid_repository_name, select
from service.github.webhook import WEBHOOK_MAX_BODY_BYTES, receive_webhook
from service.json_body import QueryParser
from service.responses import BytesResponse

_encoder = msgspec.json.Encoder()
_WHOLE = "whole"  # the view key of an entry encoded as it is


_parsed_query = QueryParser(RepositoryQuery)


async def list_repositories(request: Request) -> BytesResponse:
    query = _parsed_query(request)
    github = _github(request)
    lookup = await github.repositories()
    return _cached_response(request, lookup, query, lambda: _encoder.encode(select(lookup.entry.value, query)))


async def get_repository(request: Request) -> BytesResponse:
    name = request.path_params["name"]
    if not is_valid_repository_name(name):
        raise NotFound("Not a valid repository name.")
    github = _github(request)
    lookup, repository = await github.repository(name)
    # Usually a view of the list entry (keyed by the name, beside the queries' views), kept with the list.
    return _cached_response(request, lookup, repository.name, lambda: _encoder.encode(repository))


async def get_owner(request: Request) -> BytesResponse:
    github = _github(request)
    lookup = await github.profile()
    return _cached_response(request, lookup, _WHOLE, lambda: _encoder.encode(lookup.entry.value))


async def get_pinned(request: Request) -> BytesResponse:
    return _view_response(request, await _github(request).pinned())


async def get_languages(request: Request) -> BytesResponse:
    return _view_response(request, await _github(request).languages())


def _github(request: Request) -> GitHubClient:
    github: GitHubClient = request.app.state.github
    return github


def _cached_response(request: Request, lookup: Lookup, view_key: Hashable, render: Callable[[], bytes]) -> BytesResponse:
    """The view's form in the coding the client accepts best (compressed once per view), or a 304."""
    view = lookup.entry.view(view_key, render)
    headers = [(b"cache-control", lookup.cache_control), (b"x-cache", lookup.state.encode()), (b"age", b"%d" % lookup.age)]
    return view.respond(request.headers, headers)


def _view_response(request: Request, view: View) -> BytesResponse:
    return _cached_response(request, view.lookup, view.key, lambda: _encoder.encode(view.render()))


routes = [
    Route("/github/repos", list_repositories, methods=["GET"]),
    Route("/github/repos/{name}", get_repository, methods=["GET"]),
    Route("/github/owner", get_owner, methods=["GET"]),
    Route("/github/pinned", get_pinned, methods=["GET"]),
    Route("/github/languages", get_languages, methods=["GET"]),
    # GitHub sends pushes of up to 25 MiB; every other route keeps the app's max_body_size.
    Route("/github/webhook", receive_webhook, methods=["POST"], max_body_size=WEBHOOK_MAX_BODY_BYTES),
]
