"""The Litestar version: msgspec structs as typed handler signatures and return types, Litestar's own
response cache for the GitHub list, an in-memory dict of decoded structs behind it, and a sync handler
run with sync_to_thread for the store (no read cache, as the framework gives none).

`app` is the plain peer. `gzip_app` adds Litestar's compression (gzip, its default level 9) and turns
the response cache off for the GitHub list: that cache keys on path and query only and stores what
the compression middleware has already compressed, so it would replay gzip bytes to a client that
did not ask for them. With it off, every answer is compressed per request, as the config promises.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import msgspec
from litestar import Litestar, get
from litestar.config.compression import CompressionConfig
from litestar.params import FromQuery

API_URL = os.environ.get("GITHUB_API_URL", "https://api.github.com")
OWNER = os.environ.get("GITHUB_OWNER", "octo-dev")
CACHE_TTL = int(float(os.environ.get("GITHUB_CACHE_TTL", "300")))
DB_PATH = os.environ.get("BENCH_SQLITE_PATH", "bench.db")


class HealthResponse(msgspec.Struct):
    api: str
    version: int
    status: str


class License(msgspec.Struct):
    spdx_id: str | None = None
    name: str | None = None


class Repository(msgspec.Struct):
    name: str
    full_name: str
    html_url: str
    description: str | None = None
    homepage: str | None = None
    language: str | None = None
    topics: list[str] | None = None
    stargazers_count: int | None = None
    forks_count: int | None = None
    open_issues_count: int | None = None
    fork: bool | None = None
    archived: bool | None = None
    license: License | None = None
    default_branch: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    pushed_at: str | None = None


class Announcement(msgspec.Struct):
    id: int
    title: str
    body: str
    pinned: bool
    published_at: int


_decoder = msgspec.json.Decoder(list[Repository])
_cache: dict[str, tuple[float, list[Repository]]] = {}
_http: dict[str, httpx.AsyncClient] = {}


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    _http["client"] = httpx.AsyncClient(base_url=API_URL, timeout=10, limits=httpx.Limits(max_connections=100))
    yield
    await _http.pop("client").aclose()


@get("/health")
async def health() -> HealthResponse:
    return HealthResponse(api="website-api", version=1, status="ok")


async def _repositories() -> list[Repository]:
    cached = _cache.get("repos")
    if cached and time.monotonic() - cached[0] < CACHE_TTL:
        return cached[1]
    response = await _http["client"].get(f"/users/{OWNER}/repos", params={"per_page": 100})
    response.raise_for_status()
    repositories = sorted(_decoder.decode(response.content), key=lambda r: r.pushed_at or "", reverse=True)
    _cache["repos"] = (time.monotonic(), repositories)
    return repositories


def _announcements() -> list[Announcement]:
    with sqlite3.connect(DB_PATH) as conn:
        rows = conn.execute(
            "SELECT id, title, body, pinned, published_at FROM announcements ORDER BY pinned DESC, published_at DESC LIMIT 20"
        ).fetchall()
    return [Announcement(id=r[0], title=r[1], body=r[2], pinned=bool(r[3]), published_at=r[4]) for r in rows]


def build(*, compression: bool) -> Litestar:
    @get("/github/repos", cache=False if compression else CACHE_TTL)
    async def repos(limit: FromQuery[int] = 30) -> list[Repository]:
        return (await _repositories())[:limit]

    @get("/announcements", sync_to_thread=True)
    def announcements() -> list[Announcement]:
        return _announcements()

    return Litestar(
        route_handlers=[health, repos, announcements],
        lifespan=[lifespan],
        compression_config=CompressionConfig(backend="gzip") if compression else None,
        logging_config=None,
    )


app = build(compression=False)
gzip_app = build(compression=True)
