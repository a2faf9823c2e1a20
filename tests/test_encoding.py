"""Content negotiation (RFC 9110 §12.5.3) and compressed answers: each coding's bytes decompress to the
identity body exactly, each has its own ETag, 304s confirm only the coding the client holds, and
compressed forms are made once, never per request."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable

import brotli
import httpx
import pytest
from starlette.datastructures import Headers

from service import encoding
from service.app import create_app
from service.encoding import MIN_COMPRESSED_SIZE, parse_accept_encoding
from service.settings import Settings
from tests.github_standin import GitHubStandIn
from tests.support import running

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ALL = ("br", "gzip", "identity")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ("identity",)),  # no header: any coding would do, identity is the one everyone reads
        ("", ("identity",)),  # empty: no content coding wanted
        ("gzip", ("gzip", "identity")),
        ("gzip, deflate, br, zstd", ALL),  # a browser's; ties go br, gzip, identity
        ("gzip, br", ALL),
        ("gzip;q=1.0, br;q=0.5", ("gzip", "br", "identity")),
        ("br;q=0.8, gzip;q=0.9", ("gzip", "br", "identity")),
        ("identity, gzip;q=0.5", ("identity", "gzip")),  # identity named with the higher weight wins
        ("gzip;q=0.5", ("gzip", "identity")),  # unnamed identity ranks after what was named
        # q=0 refuses
        ("br;q=0, gzip", ("gzip", "identity")),
        ("br;q=0.000, gzip;q=0", ("identity",)),
        # "*"
        ("*", ALL),
        ("gzip;q=0, *", ("br", "identity")),
        ("*;q=0.5, gzip", ("gzip", "br", "identity")),
        ("*;q=0", ()),  # everything refused, identity included
        ("*;q=0, gzip;q=0.5", ("gzip",)),
        ("*;q=0, identity", ("identity",)),  # the more specific entry for identity wins over "*"
        # identity refused
        ("identity;q=0", ()),
        ("identity;q=0, gzip", ("gzip",)),
        ("identity;q=0, *", ("br", "gzip")),
        # unknown codings are not ours to send
        ("compress, deflate, zstd", ("identity",)),
        ("zstd;q=1, identity;q=0", ()),
        ("x-gzip", ("gzip", "identity")),  # §8.4.1.3
        # names and the q parameter are case-insensitive
        ("GZIP, Br", ALL),
        ("gzip;Q=0.5, br;q=0.4", ("gzip", "br", "identity")),
        ("IDENTITY;Q=0", ()),
        # whitespace and empty list elements
        (" \tgzip \t; \tq=0.5 \t,br", ("br", "gzip", "identity")),
        (",, gzip ,,", ("gzip", "identity")),
        # malformed elements are ignored, the rest still counts
        ("gzip;q=2, br", ("br", "identity")),
        ("gzip;q=0.1234", ("identity",)),
        ("gzip;q=, br;q=abc", ("identity",)),
        ("gzip;level=1", ("identity",)),
        ("identity;q=zero", ("identity",)),  # a malformed refusal refuses nothing
        ('g zip, b"r', ("identity",)),
        ("gzip;q=0.5, gzip", ("gzip", "identity")),  # the first of repeated entries counts
    ],
)
def test_negotiation_table(header: str | None, expected: tuple[str, ...]) -> None:
    assert parse_accept_encoding(None if header is None else header.encode("latin-1")) == expected


def test_bytes_outside_ascii_do_not_break_negotiation() -> None:
    assert parse_accept_encoding("gzïp, br".encode("latin-1")) == ("br", "identity")
    assert parse_accept_encoding(b"\xff\xfe, gzip") == ("gzip", "identity")


def test_several_accept_encoding_lines_are_one_list() -> None:
    scope = {"headers": [(b"accept-encoding", b"identity;q=0"), (b"accept-encoding", b"gzip")]}
    assert encoding.acceptable_codings(Headers(scope=scope)) == ("gzip",)


# -- over HTTP -----------------------------------------------------------------------------------


@pytest.fixture
async def api(make_settings: Callable[..., Settings], standin: GitHubStandIn) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url, ADMIN_TOKEN=TOKEN)
    async with running(create_app(settings)) as client:
        yield client


async def raw_get(api: httpx.AsyncClient, path: str, *, method: str = "GET", **headers: str) -> tuple[httpx.Response, bytes]:
    """The answer and its bytes as they travelled (httpx would otherwise decompress them)."""
    async with api.stream(method, path, headers=headers) as response:
        return response, b"".join([chunk async for chunk in response.aiter_raw()])


def decompress(body: bytes, coding: str | None) -> bytes:
    if coding == "br":
        return brotli.decompress(body)
    if coding == "gzip":
        return gzip.decompress(body)
    assert coding is None
    return body


async def compressible_paths(api: httpx.AsyncClient) -> list[str]:
    """One of every kind of negotiable answer, each at least MIN_COMPRESSED_SIZE long."""
    created = await api.post("/announcements", json={"title": "Long", "body": "A paragraph of *Markdown*. " * 80}, headers=ADMIN)
    return ["/github/repos", "/announcements", created.headers["location"], "/openapi.json", "/openapi.yaml",
            "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"]  # fmt: skip


@pytest.mark.anyio
async def test_every_coding_decompresses_to_exactly_the_identity_body(api: httpx.AsyncClient) -> None:
    for path in await compressible_paths(api):
        plain, identity = await raw_get(api, path, **{"accept-encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers and len(identity) >= MIN_COMPRESSED_SIZE
        for coding in ("br", "gzip"):
            response, body = await raw_get(api, path, **{"accept-encoding": coding})
            assert response.headers["content-encoding"] == coding, path
            assert int(response.headers["content-length"]) == len(body) < len(identity), path
            assert decompress(body, coding) == identity, path
            assert response.headers["content-type"] == plain.headers["content-type"]


@pytest.mark.anyio
async def test_each_coding_has_its_own_etag_and_304_confirms_only_that_coding(api: httpx.AsyncClient) -> None:
    for path in await compressible_paths(api):
        tags = {}
        for coding in ALL:
            response, _ = await raw_get(api, path, **{"accept-encoding": coding})
            assert response.headers["vary"].lower() == "accept-encoding", path
            tags[coding] = response.headers["etag"]
        assert len(set(tags.values())) == 3, tags
        for held, tag in tags.items():
            for asked in ALL:
                response, body = await raw_get(api, path, **{"accept-encoding": asked, "if-none-match": tag})
                if asked == held:
                    assert response.status_code == 304 and body == b"", (path, held)
                    assert response.headers["etag"] == tag and response.headers["vary"].lower() == "accept-encoding"
                else:  # the client holds other bytes than it would get now: it gets the bytes
                    assert response.status_code == 200 and response.headers["etag"] == tags[asked], (path, held, asked)
                    assert response.headers.get("content-encoding", "identity") == asked


@pytest.mark.anyio
async def test_head_answers_the_same_headers_without_the_body(api: httpx.AsyncClient) -> None:
    for path in await compressible_paths(api):
        got, body = await raw_get(api, path, **{"accept-encoding": "br"})
        head, nothing = await raw_get(api, path, method="HEAD", **{"accept-encoding": "br"})
        assert head.status_code == 200 and nothing == b""
        for name in ("content-encoding", "content-length", "etag", "vary", "content-type", "cache-control"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)


@pytest.mark.anyio
async def test_small_bodies_are_sent_as_they_are(api: httpx.AsyncClient) -> None:
    small = await api.post("/announcements", json={"title": "Short", "body": "Tiny."}, headers=ADMIN)
    for path in ("/github/owner", small.headers["location"], "/docs/init.js"):
        response, body = await raw_get(api, path, **{"accept-encoding": "br, gzip"})
        assert response.status_code == 200 and len(body) < MIN_COMPRESSED_SIZE, path
        assert "content-encoding" not in response.headers, path
        assert response.headers["vary"].lower() == "accept-encoding", path  # still a negotiable resource
    png, _ = await raw_get(api, "/docs/favicon-32x32.png", **{"accept-encoding": "br, gzip"})
    assert "content-encoding" not in png.headers and "vary" not in png.headers  # already compressed: not negotiated


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["identity;q=0", "*;q=0", "br;q=0, gzip;q=0, identity;q=0"])
async def test_when_nothing_acceptable_is_left_the_body_is_sent_uncompressed(api: httpx.AsyncClient, header: str) -> None:
    _, identity = await raw_get(api, "/github/repos", **{"accept-encoding": "identity"})
    response, body = await raw_get(api, "/github/repos", **{"accept-encoding": header})
    assert response.status_code == 200 and "content-encoding" not in response.headers and body == identity


@pytest.mark.anyio
async def test_no_accept_encoding_means_identity_and_refused_identity_gets_a_coding(api: httpx.AsyncClient) -> None:
    async with api.stream("GET", "/github/repos", headers={"accept-encoding": ""}) as response:
        assert "content-encoding" not in response.headers
    scope_without = {"headers": []}
    assert encoding.acceptable_codings(Headers(scope=scope_without)) == ("identity",)
    refused, body = await raw_get(api, "/github/repos", **{"accept-encoding": "identity;q=0, gzip"})
    assert refused.headers["content-encoding"] == "gzip" and gzip.decompress(body)


@pytest.mark.anyio
async def test_if_match_accepts_the_tag_of_a_compressed_form(api: httpx.AsyncClient) -> None:
    """An editor's browser read the br form; sending its tag back must not be a 412."""
    created = await api.post("/announcements", json={"title": "Long", "body": "Words. " * 400}, headers=ADMIN)
    location = created.headers["location"]
    read, _ = await raw_get(api, location, **{"accept-encoding": "br"})
    assert read.headers["etag"] != created.headers["etag"] and read.headers["etag"].endswith('-br"')
    patched = await api.patch(location, json={"pinned": True}, headers={**ADMIN, "If-Match": read.headers["etag"]})
    assert patched.status_code == 200
    stale = await api.patch(location, json={"pinned": False}, headers={**ADMIN, "If-Match": read.headers["etag"]})
    assert stale.status_code == 412  # the compressed tag of an old version is still an old version
    weak = await api.patch(
        location, json={"pinned": False}, headers={**ADMIN, "If-Match": f'W/{patched.headers["etag"][:-1]}-gzip"'}
    )
    assert weak.status_code == 412  # still strong comparison


@pytest.mark.anyio
async def test_cached_views_are_compressed_once_and_static_answers_never_per_request(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.get("/docs/swagger-ui-bundle.js")  # the app is built: static answers are ready
    calls: list[str] = []
    original = encoding.compress

    def counting(body: bytes, coding: encoding.Coding) -> bytes:
        calls.append(coding)
        return original(body, coding)

    monkeypatch.setattr(encoding, "compress", counting)
    for _ in range(3):
        for coding in ("br", "gzip"):
            for path in ("/docs/swagger-ui-bundle.js", "/openapi.json", "/openapi.yaml"):
                assert (await raw_get(api, path, **{"accept-encoding": coding}))[0].headers["content-encoding"] == coding
    assert calls == []
    for _ in range(3):
        for coding in ("br", "gzip"):
            assert (await raw_get(api, "/github/repos?limit=50", **{"accept-encoding": coding}))[0].headers[
                "content-encoding"
            ] == coding
    assert sorted(calls) == ["br", "gzip"]  # once per coding the clients asked for, on first request
