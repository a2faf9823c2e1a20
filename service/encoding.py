"""Content codings (RFC 9110 §12.5.3, §8.4): Accept-Encoding negotiation, and bodies encoded once and kept in
every coding a client asked for, each with its own ETag."""

from __future__ import annotations

import functools
import gzip
import re
from collections.abc import Iterable
from typing import Literal

import brotli
from starlette.datastructures import Headers

from service.conditional import etag_for, not_modified
from service.responses import BytesResponse, HeaderList

Coding = Literal["br", "gzip", "identity"]
# What this service sends, in its own order of preference among codings a client weighs equally.
CODINGS: tuple[Coding, ...] = ("br", "gzip", "identity")
_ALIASES = {"x-gzip": "gzip"}  # §8.4.1.3
# Below this a body is sent as it is: with its headers (about 300 bytes) it fits in one TCP segment
# either way, so compression would save no packet (README, "Compression", has the measurements).
MIN_COMPRESSED_SIZE = 1024
# Made once per body, on the event loop for cached views: about 0.3 ms each for a 39 KB list at these
# settings, against 45 ms for brotli's best (14% smaller) and 0.7 ms for gzip's best (4% smaller).
BROTLI_QUALITY = 5
GZIP_LEVEL = 6
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_UNNAMED_IDENTITY = 0.0001  # below the smallest q-value a client can write (0.001)


def parse_accept_encoding(value: bytes | None) -> tuple[Coding, ...]:
    """The codings this service can send that an Accept-Encoding value accepts, best first: highest
    q-value, then br, gzip, identity. Identity is acceptable unless refused (`identity;q=0`, or `*;q=0`
    without an `identity` entry), after the codings named; a coding not named is acceptable only
    through `*`. No header means
    identity (any coding would do; identity is the one every client reads). An empty tuple means the
    client refused everything this service has: the caller sends identity anyway (§12.5.3 allows it).

    Names are case-insensitive; an element with a malformed q-value or another parameter is ignored,
    as is an unknown coding; the first of repeated entries counts."""
    if value is None:
        return ("identity",)
    weights: dict[str, float] = {}
    for element in value.decode("latin-1").split(","):
        name, *parameters = element.split(";")
        name = name.strip(" \t").lower()
        if not _TOKEN.fullmatch(name):
            continue  # empty list element, or not a token
        q = 1.0
        for parameter in parameters:
            key, equals, number = parameter.partition("=")
            number = number.strip(" \t")
            if not equals or key.strip(" \t").lower() != "q" or not _QVALUE.fullmatch(number):
                break
            q = float(number)
        else:
            weights.setdefault(_ALIASES.get(name, name), q)
    anything = weights.get("*")

    def weight(coding: Coding) -> float:
        if coding in weights:
            return weights[coding]
        if anything is not None:
            return anything
        # Identity, named neither itself nor through `*`, is acceptable but ranks after every coding
        # the client did name ("gzip;q=0.5" still asks for gzip); other unnamed codings are refused.
        return _UNNAMED_IDENTITY if coding == "identity" else 0.0

    # sorted() is stable, so codings a client weighs equally keep this service's order.
    return tuple(sorted((coding for coding in CODINGS if weight(coding) > 0), key=weight, reverse=True))


_NEGOTIATED_VALUE_BYTES = 256  # a longer value (no browser sends one) is parsed every time, never kept


def acceptable_codings(headers: Headers) -> tuple[Coding, ...]:
    """`parse_accept_encoding` of the request's Accept-Encoding (all its field lines). Short values are parsed
    once each (browsers send a handful), so the hot path costs a header lookup and a cache lookup; the cache
    holds at most 256 values of at most 256 bytes, whatever clients send."""
    lines = headers.getlist("accept-encoding")
    value = None if not lines else lines[0] if len(lines) == 1 else ",".join(lines)
    if value is not None and len(value) > _NEGOTIATED_VALUE_BYTES:
        return parse_accept_encoding(value.encode("latin-1"))
    return _negotiated(value)


@functools.lru_cache(maxsize=256)
def _negotiated(value: str | None) -> tuple[Coding, ...]:
    return parse_accept_encoding(None if value is None else value.encode("latin-1"))


def coded_etag(etag: str, coding: Coding) -> str:
    """The entity tag of `etag`'s representation in `coding`: `"v"` becomes `"v-br"`, `"v-gzip"`."""
    return etag if coding == "identity" else f'{etag[:-1]}-{coding}"'


def compress(body: bytes, coding: Coding) -> bytes:
    """The same bytes on every call and in every process (gzip without a timestamp), so one strong
    ETag per coding holds across workers."""
    if coding == "br":
        return brotli.compress(body, quality=BROTLI_QUALITY)
    if coding == "gzip":
        return gzip.compress(body, GZIP_LEVEL, mtime=0)
    return body


_VARY = (b"vary", b"accept-encoding")


class Encoded:
    """One body in one coding, with the headers that describe it (for a 200) and the validators a 304
    repeats (RFC 9110 §15.4.5)."""

    __slots__ = ("body", "etag", "headers", "validators")

    def __init__(self, body: bytes, etag: str, coding: Coding, *, media_type: bytes, negotiable: bool) -> None:
        self.body = body
        self.etag = etag
        self.validators: HeaderList = [(b"etag", etag.encode())] + ([_VARY] if negotiable else [])
        self.headers: HeaderList = [(b"content-type", media_type), (b"content-length", b"%d" % len(body)), *self.validators]
        if coding != "identity":
            self.headers.append((b"content-encoding", coding.encode()))


def held_bytes(body: bytes) -> int:
    """The bytes a cached, encoded answer may come to hold: its body, compressed forms no larger than it together
    (br and gzip of JSON are far smaller), and its headers. What the read caches count against their budgets."""
    return 2 * len(body) + 1024


class EncodedBody:
    """An answer's bytes, encoded once and kept: identity, and br and gzip forms made the first time a
    client asks for each, every form with its own ETag so a 304 never confirms bytes the client does
    not hold. Bodies under MIN_COMPRESSED_SIZE, and those made with `negotiable=False` (already
    compressed, like PNG), are only ever sent as they are."""

    __slots__ = ("body", "etag", "media_type", "negotiable", "compressible", "_forms")

    def __init__(
        self, body: bytes, etag: str | None = None, *, media_type: bytes = b"application/json", negotiable: bool = True
    ) -> None:
        self.body = body
        self.etag = etag if etag is not None else etag_for(body)
        self.media_type = media_type
        self.negotiable = negotiable  # answers carry Vary: Accept-Encoding
        self.compressible = negotiable and len(body) >= MIN_COMPRESSED_SIZE
        self._forms = {"identity": Encoded(body, self.etag, "identity", media_type=media_type, negotiable=negotiable)}

    def form(self, coding: Coding) -> Encoded:
        """The body in `coding`, compressed now if no client asked for it before."""
        found = self._forms.get(coding)
        if found is None:
            found = self._forms[coding] = Encoded(
                compress(self.body, coding), coded_etag(self.etag, coding), coding, media_type=self.media_type, negotiable=True
            )
        return found

    def compress_all(self) -> EncodedBody:
        """Every form now (static answers, prepared before serving)."""
        if self.compressible:
            for coding in CODINGS:
                self.form(coding)
        return self

    def select(self, codings: tuple[Coding, ...]) -> Encoded:
        """The form for a request accepting `codings` (best first); identity if it accepts nothing."""
        if self.compressible and codings:
            return self.form(codings[0])
        return self._forms["identity"]

    def respond(self, request_headers: Headers, headers: Iterable[tuple[bytes, bytes]] = ()) -> BytesResponse:
        """200 with the form the request accepts best, or 304 if its If-None-Match names that form."""
        form = self.select(acceptable_codings(request_headers)) if self.compressible else self._forms["identity"]
        if not_modified(request_headers, form.etag):
            return BytesResponse(304, b"", [*form.validators, *headers])
        return BytesResponse(200, form.body, [*form.headers, *headers])
