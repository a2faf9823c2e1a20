"""/announcements endpoints: parse, ask `Announcements`, answer."""

from __future__ import annotations

import msgspec
from starlette.convertors import Convertor, register_url_convertor
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.announcements.access import Announcements
from service.announcements.feeds import Kind
from service.announcements.models import AnnouncementPatch, FeedQuery, ListQuery, NewAnnouncement
from service.announcements.slugs import SLUG_MAX
from service.announcements.store import MAX_ID
from service.conditional import expected_etags, not_modified
from service.json_body import QueryParser, read_json

_encoder = msgspec.json.Encoder()
_new_decoder = msgspec.json.Decoder(NewAnnouncement)
_patch_decoder = msgspec.json.Decoder(AnnouncementPatch)
_NO_CACHE = "no-cache"
_PRIVATE = "private, no-store"
# Browsers and CDNs may keep public answers but ask each time (a 304 from memory when unchanged), so
# a write is seen on the next read.
_PUBLIC_CACHING = [(b"cache-control", _NO_CACHE.encode())]
_MAX_ID_DIGITS = len(str(MAX_ID))
_parsed_query = QueryParser(ListQuery)
_feed_query = QueryParser(FeedQuery)


def _json(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status_code=status, headers=headers, media_type="application/json")


class AnnouncementId(Convertor[int]):
    """An id in a path: 1 to 19 ASCII digits (an id is at most 2**63 - 1). Anything else matches no route, so it
    is a 404 however long: Starlette's `int` convertor would turn 4,301 digits into a ValueError (a 500)."""

    regex = f"[0-9]{{1,{_MAX_ID_DIGITS}}}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("announcement_id", AnnouncementId())


class AnnouncementSlug(Convertor[str]):
    """A slug in a path: 1 to 80 characters of `[a-z0-9]` words joined by single `-`. Anything else matches no
    route, so it is a 404."""

    regex = f"(?=[a-z0-9-]{{1,{SLUG_MAX}}}(?:/|$))[a-z0-9]+(?:-[a-z0-9]+)*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("announcement_slug", AnnouncementSlug())


def _id(request: Request) -> int:
    id: int = request.path_params["id"]
    return id


class AnnouncementCollection(HTTPEndpoint):
    """GET /announcements (public, or every one with status=all for the admin) and POST (admin)."""

    async def get(self, request: Request) -> Response:
        announcements: Announcements = request.app.state.announcements
        query = _parsed_query(request)
        if query.status == "all":
            announcements.require_admin_reader(request.headers.get("authorization"))
            page = await announcements.page(query, include_all=True)
            return _json(page, headers={"Cache-Control": _PRIVATE})
        view = await announcements.public_page(query)
        return view.respond(request.headers, _PUBLIC_CACHING)

    async def post(self, request: Request) -> Response:
        announcements: Announcements = request.app.state.announcements
        announcements.require_writer(request.headers.get("authorization"))
        created = await announcements.create(await read_json(request, _new_decoder))
        headers = {"Location": f"/announcements/{created.id}", "ETag": created.etag, "Cache-Control": _NO_CACHE}
        return _json(created, status=201, headers=headers)


async def _one(request: Request, key: int | str) -> Response:
    """GET of one announcement, by id or by slug: the public view from the read cache, the admin's from the database."""
    announcements: Announcements = request.app.state.announcements
    if announcements.is_admin(request.headers.get("authorization")):
        found = await announcements.get(key, admin=True)
        headers = {"ETag": found.etag, "Cache-Control": _PRIVATE}
        if not_modified(request.headers, found.etag):
            return Response(status_code=304, headers=headers)
        return _json(found, headers=headers)
    view = await announcements.public_item(key)
    return view.respond(request.headers, _PUBLIC_CACHING)


class AnnouncementItem(HTTPEndpoint):
    """GET, PATCH and DELETE /announcements/{id}; writes honour If-Match."""

    async def get(self, request: Request) -> Response:
        return await _one(request, _id(request))

    async def patch(self, request: Request) -> Response:
        announcements: Announcements = request.app.state.announcements
        announcements.require_writer(request.headers.get("authorization"))
        id = _id(request)
        patch = await read_json(request, _patch_decoder)
        updated = await announcements.update(id, patch, if_match=expected_etags(request.headers))
        return _json(updated, headers={"ETag": updated.etag, "Cache-Control": _NO_CACHE})

    async def delete(self, request: Request) -> Response:
        announcements: Announcements = request.app.state.announcements
        announcements.require_writer(request.headers.get("authorization"))
        await announcements.delete(_id(request), if_match=expected_etags(request.headers))
        return Response(status_code=204)


class AnnouncementBySlug(HTTPEndpoint):
    """GET /announcements/slug/{slug}: the same answer as by id."""

    async def get(self, request: Request) -> Response:
        return await _one(request, request.path_params["slug"])


class AtomFeed(HTTPEndpoint):
    """GET /announcements/feed.atom: the 20 newest public announcements (optionally of one tag), Atom 1.0."""

    async def get(self, request: Request) -> Response:
        return await _feed(request, "atom")


class JsonFeed(HTTPEndpoint):
    """GET /announcements/feed.json: the same as JSON Feed 1.1."""

    async def get(self, request: Request) -> Response:
        return await _feed(request, "json")


async def _feed(request: Request, kind: Kind) -> Response:
    announcements: Announcements = request.app.state.announcements
    view = await announcements.feed(kind, _feed_query(request).tag)
    return view.respond(request.headers, _PUBLIC_CACHING)


routes = [
    Route("/announcements", AnnouncementCollection),
    Route("/announcements/{id:announcement_id}", AnnouncementItem),
    Route("/announcements/slug/{slug:announcement_slug}", AnnouncementBySlug),
    Route("/announcements/feed.atom", AtomFeed),
    Route("/announcements/feed.json", JsonFeed),
]
