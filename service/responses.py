"""`BytesResponse`: a Starlette response of fixed bytes with headers prepared once (cached views, liveness)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import Response

HeaderList = list[tuple[bytes, bytes]]


class BytesResponse(Response):
    """A Starlette `Response` whose raw headers are given ready-made (content type and length included), so a
    cached answer builds no header per request. Everything else, sending included, is Starlette's."""

    def __init__(self, status: int, body: bytes, headers: HeaderList) -> None:
        self.status_code = status
        self.body = body
        self.raw_headers = headers
        self.background = None

    @classmethod
    def of(
        cls,
        body: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        status: int = 200,
        media_type: bytes = b"application/json",
    ) -> BytesResponse:
        """A response with this body, its type and length, and `headers`."""
        return cls(status, body, [*headers, (b"content-type", media_type), (b"content-length", b"%d" % len(body))])
