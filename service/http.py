"""HTTP details written once: raw header lookup, entity tags and conditional requests (RFC 9110
§8.8.3, §13.1.1–13.1.2), content codings (§12.5.3), a HEAD-aware response of fixed bytes, and the
lean endpoint every route but the webhook's is.

Everything that answers with an ETag, honours If-Match / If-None-Match or compresses calls these;
nothing else scans `scope["headers"]` for them.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal

import brotli
from starlette.requests import Request
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

Headers = list[tuple[bytes, bytes]]


def raw_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), straight from the ASGI scope: on the hot path
    this is cheaper than building a Starlette `Headers` object."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def etag_for(body: bytes) -> str:
    """A strong entity tag for these exact bytes."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc = %x21 / %x23-7E / obs-text (RFC 9110 §8.8.3)
# One list element per match, with optional whitespace around it; an empty element (", ,") is allowed.
_ELEMENT = re.compile(rb'[ \t]*(?:(W/)?("[\x21\x23-\x7e\x80-\xff]*"))?[ \t]*')


class EntityTags:
    """A parsed If-Match or If-None-Match value: `*`, or a list of entity tags.

    A value that is neither (malformed) matches nothing, which is what RFC 9110 makes of it: If-Match
    evaluates to false (412) and If-None-Match to true (the normal answer).
    """

    __slots__ = ("any", "strong", "opaque")

    def __init__(self, *, any: bool = False, tags: Iterable[tuple[bool, str]] = ()) -> None:
        tags = list(tags)
        self.any = any
        self.strong = frozenset(tag for weak, tag in tags if not weak)  # compared strongly (If-Match)
        self.opaque = frozenset(tag for _, tag in tags)  # compared weakly (If-None-Match)

    def __repr__(self) -> str:
        return "EntityTags(*)" if self.any else f"EntityTags(strong={sorted(self.strong)}, all={sorted(self.opaque)})"

    def strong_match(self, etag: str) -> bool:
        """If-Match (§13.1.1): true for `*` (the resource exists) or a strongly equal tag. `etag` is
        the current representation's tag; a weak current tag never matches strongly."""
        return self.any or (not etag.startswith("W/") and etag in self.strong)

    def weak_match(self, etag: str) -> bool:
        """If-None-Match (§13.1.2): true for `*` or a tag whose opaque part equals `etag`'s."""
        return self.any or etag.removeprefix("W/") in self.opaque


MATCHES_NOTHING = EntityTags()
_ANY = EntityTags(any=True)


def parse_entity_tags(value: bytes | str | None) -> EntityTags | None:
    """The condition a header states, or None where it states none (absent, or only whitespace)."""
    if value is None:
        return None
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    stripped = raw.strip(b" \t")
    if not stripped:
        return None
    if stripped == b"*":
        return _ANY
    tags: list[tuple[bool, str]] = []
    position, end = 0, len(raw)
    while True:
        element = _ELEMENT.match(raw, position)
        assert element is not None  # every part of the pattern is optional
        if element[2] is not None:
            tags.append((element[1] is not None, element[2].decode("latin-1")))
        position = element.end()
        if position == end:
            break
        if raw[position : position + 1] != b",":
            return MATCHES_NOTHING  # not a list of entity tags
        position += 1
    return EntityTags(tags=tags) if tags else MATCHES_NOTHING


def not_modified(scope: Scope, etag: str) -> bool:
    """Whether a GET/HEAD for a representation tagged `etag` is answered 304 (If-None-Match, §13.1.2)."""
    condition = parse_entity_tags(raw_header(scope, b"if-none-match"))
    return condition is not None and condition.weak_match(etag)


def if_match(scope: Scope) -> EntityTags | None:
    """The request's If-Match precondition, parsed; None if it states none.

    A tag of a compressed form (`"v-br"`, `"v-gzip"`, see `coded_etag`) stands for the same state as the
    identity tag `"v"`: an editor whose browser read the compressed form may send it back, and an edit
    based on the current state must not fail because of how its bytes travelled."""
    condition = parse_entity_tags(raw_header(scope, b"if-match"))
    if condition is None or condition.any:
        return condition
    tags = [(False, tag) for tag in condition.strong] + [(True, tag) for tag in condition.opaque - condition.strong]
    return EntityTags(tags=[*tags, *((weak, _CODED_SUFFIX.sub('"', tag)) for weak, tag in tags)])


# -- content codings (RFC 9110 §12.5.3, §8.4) ---------------------------------------------------

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
_CODED_SUFFIX = re.compile(r'-(?:br|gzip)"$')


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


_NEGOTIATED_SIZE = 256  # distinct Accept-Encoding values remembered; browsers send a handful
_negotiated: dict[bytes | None, tuple[Coding, ...]] = {}


def acceptable_codings(scope: Scope) -> tuple[Coding, ...]:
    """`parse_accept_encoding` of the request's Accept-Encoding (all its field lines), parsed once per
    distinct value so the hot path costs a header scan and a dict lookup."""
    value: bytes | None = None
    for key, line in scope["headers"]:
        if key == b"accept-encoding":
            value = bytes(line) if value is None else value + b"," + bytes(line)
    found = _negotiated.get(value)
    if found is None:
        found = parse_accept_encoding(value)
        if len(_negotiated) >= _NEGOTIATED_SIZE:
            _negotiated.clear()
        _negotiated[value] = found
    return found


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
        self.validators: Headers = [(b"etag", etag.encode())] + ([_VARY] if negotiable else [])
        self.headers: Headers = [(b"content-type", media_type), (b"content-length", b"%d" % len(body)), *self.validators]
        if coding != "identity":
            self.headers.append((b"content-encoding", coding.encode()))


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

    def respond(self, scope: Scope, headers: Iterable[tuple[bytes, bytes]] = ()) -> BytesResponse:
        """200 with the form the request accepts best, or 304 if its If-None-Match names that form."""
        form = self.select(acceptable_codings(scope)) if self.compressible else self._forms["identity"]
        if not_modified(scope, form.etag):
            return BytesResponse(304, b"", [*form.validators, *headers])
        return BytesResponse(200, form.body, [*form.headers, *headers])


class BytesResponse:
    """Fixed bytes with prepared headers, sent as they are: no per-request header building. HEAD gets
    the same headers (Content-Length included) and no body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Headers) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @classmethod
    def of(
        cls, body: bytes, headers: Iterable[tuple[bytes, bytes]] = (), *, status: int = 200, media_type: bytes = b"application/json"
    ) -> BytesResponse:
        """A response with this body, its type and length, and `headers`."""
        return cls(status, body, [*headers, (b"content-type", media_type), (b"content-length", b"%d" % len(body))])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})


class Endpoint:
    """Handlers by method, as a route's bare ASGI app: no endpoint object per request (Starlette's
    `HTTPEndpoint`) and no per-request exception wrapper (a plain function route), about a fifth of a
    cache hit's time. What a handler raises still reaches the app's exception handlers; HEAD is answered
    by the GET handler (the server sends no body for it). Made by `route`."""

    __slots__ = ("handlers",)

    def __init__(self, **handlers: Callable[[Request], Awaitable[ASGIApp]]) -> None:
        self.handlers = {method.upper(): handler for method, handler in handlers.items()}
        if "GET" in self.handlers:
            self.handlers["HEAD"] = self.handlers["GET"]

    @property
    def methods(self) -> list[str]:
        return list(self.handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handlers[scope["method"]](Request(scope, receive))
        await response(scope, receive, send)


def route(path: str, **handlers: Callable[[Request], Awaitable[ASGIApp]]) -> Route:
    """A route answering `path` with these handlers by method (`get=…, post=…`) and 405, with `Allow`,
    for every other method."""
    endpoint = Endpoint(**handlers)
    return Route(path, endpoint, methods=endpoint.methods)


class StaticFirstRouter(Router):
    """Starlette's router, which tries every route's pattern in turn (a regular expression and a scope
    each, about 0.3 µs a route), with one shortcut: a path without parameters that no earlier route
    could take, asked with a method its route allows, is found in a dict. Everything else — parameters,
    405, 404, redirects, routes added later — goes the usual way, so the answer is always the one the
    ordered search would give. The table is rebuilt when the list of routes changes length."""

    def __init__(self, routes: list[BaseRoute], **options: object) -> None:
        super().__init__(routes, **options)  # type: ignore[arg-type]
        # Router middleware (or max_body_size) would wrap `app`, and __call__ would skip it.
        assert self.middleware_stack == self.app, "StaticFirstRouter takes no router middleware"
        self._static: dict[str, Route] = {}
        self._static_for = -1

    def _static_routes(self) -> dict[str, Route]:
        if self._static_for != len(self.routes):
            table: dict[str, Route] = {}
            for n, route in enumerate(self.routes):
                if isinstance(route, Route) and not route.param_convertors and route.methods:
                    # Any earlier route that could take the path (or is not a plain Route) keeps it off the table.
                    if not any(not isinstance(other, Route) or other.path_regex.match(route.path) for other in self.routes[:n]):
                        table.setdefault(route.path, route)
            self._static, self._static_for = table, len(self.routes)
        return self._static

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # In place of Router.__call__, which only awaits `app` (this router takes no middleware of its
        # own): one coroutine fewer for every request.
        if scope["type"] == "http":
            route = self._static_routes().get(get_route_path(scope))
            if route is not None and route.methods is not None and scope["method"] in route.methods:
                scope.setdefault("router", self)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = dict(scope.get("path_params", ()))
                await route.app(scope, receive, send)
                return
        await self.app(scope, receive, send)
