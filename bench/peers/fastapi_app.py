"""The FastAPI + Pydantic version: response_model, async def, httpx with response.json(), a sync def
endpoint for announcements (FastAPI runs it in its thread pool), and a simple TTL cache of models."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

API_URL = os.environ.get("GITHUB_API_URL", "https://api.github.com")
OWNER = os.environ.get("GITHUB_OWNER", "octo-dev")
CACHE_TTL = float(os.environ.get("GITHUB_CACHE_TTL", "300"))
DB_PATH = os.environ.get("BENCH_SQLITE_PATH", "bench.db")


class HealthResponse(BaseModel):
    api: str
    version: int
    status: str


class License(BaseModel):
    spdx_id: str | None = None
    name: str | None = None


class Repository(BaseModel):
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


class Announcement(BaseModel):
    id: int
    title: str
    body: str
    pinned: bool
    published_at: int


_cache: dict[str, tuple[float, list[Repository]]] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.http = httpx.AsyncClient(base_url=API_URL, timeout=10, limits=httpx.Limits(max_connections=100))
    yield
    await app.state.http.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    return HealthResponse(api="website-api", version=1, status="ok")


@app.get("/github/repos", response_model=list[Repository])
async def repos(limit: int = 30) -> list[Repository]:
    cached = _cache.get("repos")
    if cached and time.monotonic() - cached[0] < CACHE_TTL:
        return cached[1][:limit]
    response = await app.state.http.get(f"/users/{OWNER}/repos", params={"per_page": 100})
    response.raise_for_status()
    repositories = [Repository(**item) for item in response.json()]
    repositories.sort(key=lambda r: r.pushed_at or "", reverse=True)
    _cache["repos"] = (time.monotonic(), repositories)
    return repositories[:limit]


@app.get("/announcements", response_model=list[Announcement])
def announcements() -> list[Announcement]:
    with sqlite3.connect(DB_PATH) as conn:
        rows = conn.execute(
            "SELECT id, title, body, pinned, published_at FROM announcements ORDER BY pinned DESC, published_at DESC LIMIT 20"
        ).fetchall()
    return [Announcement(id=r[0], title=r[1], body=r[2], pinned=bool(r[3]), published_at=r[4]) for r in rows]
