"""/announcements endpoints: parse, ask `Announcements`, answer."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.announcements.access import Announcements
from service.announcements.models import AnnouncementPatch, ListQuery, NewAnnouncement
from service.http import BytesResponse, if_match, not_modified, route
from service.json_body import QueryParser, read_json

_encoder = msgspec.json.Encoder()
_new_decoder = msgspec.json.Decoder(NewAnnouncement)
_patch_decoder = msgspec.json.Decoder(AnnouncementPatch)
_NO_CACHE = "no-cache"
_PRIVATE = "private, no-store"
# Browsers and CDNs may keep public answers but ask each time (a 304 from memory when unchanged), so
# a write is seen on the next read.
_PUBLIC_CACHING = [(b"cache-control", _NO_CACHE.encode())]
_parsed_query = QueryParser(ListQuery)


def _announcements(request: Request) -> Announcements:
    announcements: Announcements = request.scope["app"].announcements  # service.app.Service
    return announcements


def _json(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status_code=status, headers=headers, media_type="application/json")


async def list_announcements(request: Request) -> Response | BytesResponse:
    announcements = _announcements(request)
    query = _parsed_query(request)
    if query.status == "all":
        announcements.require_admin_reader(request.headers.get("authorization"))
        page = await announcements.page(query, include_all=True)
        return _json(page, headers={"Cache-Control": _PRIVATE})
    view = await announcements.public_page(query)
    return view.respond(request.scope, _PUBLIC_CACHING)


async def create_announcement(request: Request) -> Response:
    announcements = _announcements(request)
    announcements.require_writer(request.headers.get("authorization"))
    created = await announcements.create(await read_json(request, _new_decoder))
    headers = {"Location": f"/announcements/{created.id}", "ETag": created.etag, "Cache-Control": _NO_CACHE}
    return _json(created, status=201, headers=headers)


async def get_announcement(request: Request) -> Response | BytesResponse:
    announcements = _announcements(request)
    if announcements.is_admin(request.headers.get("authorization")):
        found = await announcements.get(request.path_params["id"], admin=True)
        headers = {"ETag": found.etag, "Cache-Control": _PRIVATE}
        if not_modified(request.scope, found.etag):
            return Response(status_code=304, headers=headers)
        return _json(found, headers=headers)
    view = await announcements.public_item(request.path_params["id"])
    return view.respond(request.scope, _PUBLIC_CACHING)


async def update_announcement(request: Request) -> Response:
    announcements = _announcements(request)
    announcements.require_writer(request.headers.get("authorization"))
    patch = await read_json(request, _patch_decoder)
    updated = await announcements.update(request.path_params["id"], patch, if_match=if_match(request.scope))
    return _json(updated, headers={"ETag": updated.etag, "Cache-Control": _NO_CACHE})


async def delete_announcement(request: Request) -> Response:
    announcements = _announcements(request)
    announcements.require_writer(request.headers.get("authorization"))
    await announcements.delete(request.path_params["id"], if_match=if_match(request.scope))
    return Response(status_code=204)


routes = [
    route("/announcements", get=list_announcements, post=create_announcement),
    route("/announcements/{id:int}", get=get_announcement, patch=update_announcement, delete=delete_announcement),
]
