"""/announcements endpoints: public reads, admin-token writes, every store call in the thread pool."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.announcements.models import (
    AnnouncementPage,
    AnnouncementPatch,
    ListQuery,
    NewAnnouncement,
    decode_cursor,
    encode_cursor,
)
from service.announcements.store import AnnouncementStore
from service.errors import Forbidden, NotFound, Unauthorized
from service.json_body import convert_query, read_json

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_new_decoder = msgspec.json.Decoder(NewAnnouncement)
_patch_decoder = msgspec.json.Decoder(AnnouncementPatch)
_NO_CACHE = "no-cache"


async def call_store(request: Request, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Every store call: blocking, so off the event loop, and at most the pool's size at once
    (callers beyond that wait here without holding one of anyio's 40 worker threads)."""
    async with request.app.state.store_limiter:
        return await run_in_threadpool(method, *args, **kwargs)


def _store(request: Request) -> AnnouncementStore:
    return request.app.state.store


def _now() -> datetime:
    return datetime.now(UTC)


def is_admin(request: Request) -> bool:
    """True for a valid admin bearer token, False for none; a wrong token is refused outright."""
    header = request.headers.get("authorization")
    if header is None:
        return False
    require_admin(request)
    return True


def require_admin(request: Request) -> None:
    token: str | None = request.app.state.settings.admin_token
    if token is None:
        raise Forbidden("Writes are disabled: ADMIN_TOKEN is not configured on the server.")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Compare digests so neither the content nor the length of the token leaks through timing.
    if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(given.strip()), _digest(token)):
        raise Unauthorized("A valid admin token is required: Authorization: Bearer <ADMIN_TOKEN>.")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _json(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status_code=status, headers=headers, media_type="application/json")


class AnnouncementCollection(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        query = convert_query(request.query_params, ListQuery)
        include_all = query.status == "all"
        if include_all:
            require_admin(request)
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        rows = await call_store(
            request, _store(request).list, now=_now(), limit=query.limit + 1, tag=query.tag, include_all=include_all, after=after
        )
        items = rows[: query.limit]
        next_cursor = encode_cursor(items[-1]) if len(rows) > query.limit else None
        cache = "private, no-store" if include_all else _NO_CACHE
        return _json(AnnouncementPage(items, next_cursor), headers={"Cache-Control": cache})

    async def post(self, request: Request) -> Response:
        require_admin(request)
        data = await read_json(request, _new_decoder)
        created = await call_store(request, _store(request).create, data, now=_now())
        headers = {"Location": f"/announcements/{created.id}", "ETag": created.etag, "Cache-Control": _NO_CACHE}
        return _json(created, status=201, headers=headers)


class AnnouncementItem(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        id: int = request.path_params["id"]
        admin = is_admin(request)
        found = await call_store(request, _store(request).get, id)
        if found is None or not (admin or found.is_public(_now())):
            raise NotFound(f"No announcement {id}.")
        headers = {"ETag": found.etag, "Cache-Control": "private, no-store" if admin else _NO_CACHE}
        if found.etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return _json(found, headers=headers)

    async def patch(self, request: Request) -> Response:
        require_admin(request)
        patch = await read_json(request, _patch_decoder)
        updated = await call_store(
            request, _store(request).update, request.path_params["id"], patch, now=_now(), if_match=request.headers.get("if-match")
        )
        return _json(updated, headers={"ETag": updated.etag, "Cache-Control": _NO_CACHE})

    async def delete(self, request: Request) -> Response:
        require_admin(request)
        await call_store(request, _store(request).delete, request.path_params["id"], if_match=request.headers.get("if-match"))
        return Response(status_code=204)


routes = [
    Route("/announcements", AnnouncementCollection),
    Route("/announcements/{id:int}", AnnouncementItem),
]
