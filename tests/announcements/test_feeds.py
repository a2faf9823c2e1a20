"""The Atom and JSON feeds over HTTP, on SQLite and PostgreSQL, read back by a real feed parser (feedparser)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime

import feedparser
import httpx
import pytest

from service.announcements.store import open_store
from service.app import create_app
from service.settings import Settings
from tests.support import assert_problem, running

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SITE = {"SITE_URL": "https://example.com/", "SITE_TITLE": "Example news"}
FEEDS = ["/announcements/feed.atom", "/announcements/feed.json"]


def titles(response: httpx.Response) -> list[str]:
    """The entries' titles: Atom as a feed reader parses it (feedparser 6 reads no JSON Feed), JSON Feed as JSON."""
    if response.headers["content-type"].startswith("application/atom+xml"):
        feed = feedparser.parse(response.content)
        assert not feed.bozo, feed.bozo_exception
        return [entry.title for entry in feed.entries]
    return [item["title"] for item in json.loads(response.content)["items"]]


OpenApi = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def open_api(make_settings: Callable[..., Settings], database_url: str) -> OpenApi:
    @contextlib.asynccontextmanager
    async def open_client(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        if not database_url.startswith("sqlite"):
            store = open_store(database_url, pool_size=1)
            store.open()
            store.migrate()  # the release phase's job on PostgreSQL
            store.close()
        async with running(create_app(make_settings(ADMIN_TOKEN=TOKEN, DATABASE_URL=database_url, **env))) as client:
            yield client

    return open_client


async def publish(api: httpx.AsyncClient, **fields: object) -> dict[str, object]:
    response = await api.post("/announcements", json={"title": "Hello", "body": "Some *Markdown*.", **fields}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.mark.parametrize("path", FEEDS)
async def test_feeds_without_site_url_are_404_saying_to_set_it(open_api: OpenApi, path: str) -> None:
    async with open_api() as api:
        await publish(api)
        problem = assert_problem(await api.get(path), 404)
    assert "SITE_URL" in problem["detail"]


async def test_atom_feed_parses_with_the_20_newest_public_announcements(open_api: OpenApi) -> None:
    async with open_api(**SITE) as api:
        for day in range(1, 23):
            await publish(api, title=f"Post {day}", published_at=f"2026-10-{day:02d}T12:00:00Z", pinned=day == 1)
        await publish(api, title="Later", published_at="2099-01-01T00:00:00Z")
        await publish(api, title="Gone", published_at="2026-10-30T00:00:00Z", expires_at="2026-10-31T00:00:00Z")
        special = await publish(
            api, title="Blåbær & <brød>", summary="Kort.", tags=["mat", "skog"], published_at="2026-11-01T00:00:00Z",
            body="Hi <script>alert(1)</script> **there** ![x](data:image/png;base64,AAAA)",
        )  # fmt: skip
        response = await api.get("/announcements/feed.atom")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache" and response.headers["etag"]
    feed = feedparser.parse(response.content)
    assert not feed.bozo, feed.bozo_exception
    assert feed.version == "atom10" and feed.feed.title == "Example news" and feed.feed.link == "https://example.com/"
    assert len(feed.entries) == 20
    assert [e.title for e in feed.entries[:3]] == ["Blåbær & <brød>", "Post 22", "Post 21"]  # newest, pinned or not
    first = feed.entries[0]
    assert first.link == "https://example.com/announcements/blabaer-brod"
    assert first.summary == "Kort." and [t.term for t in first.tags] == ["mat", "skog"]
    assert first.published_parsed[:3] == (2026, 11, 1)
    assert first.updated_parsed >= first.published_parsed
    html = first.content[0].value
    assert "<strong>there</strong>" in html and "script" not in html and "data:" not in html
    assert first.id.startswith("urn:uuid:") and len({e.id for e in feed.entries}) == 20
    assert special["slug"] == "blabaer-brod"


async def test_json_feed_has_the_json_feed_1_1_required_fields(open_api: OpenApi) -> None:
    async with open_api(**SITE, ANNOUNCEMENT_PATH="/news/{id}/{slug}") as api:
        item = await publish(api, title="First", summary="In short.", tags=["news"], body="| a |\n|---|\n| ~~b~~ |")
        await publish(api, title="Second")
        response = await api.get("/announcements/feed.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/feed+json; charset=utf-8"
    feed = json.loads(response.content)
    # JSON Feed 1.1: version, title and items are required; every item has an id and content_html or content_text.
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["title"] == "Example news" and feed["home_page_url"] == "https://example.com/"
    assert [i["title"] for i in feed["items"]] == ["Second", "First"]
    for entry in feed["items"]:
        assert isinstance(entry["id"], str) and entry["id"]
        assert isinstance(entry["content_html"], str)
        assert datetime.fromisoformat(entry["date_published"]) <= datetime.fromisoformat(entry["date_modified"])
    first = feed["items"][1]
    assert first["url"] == f"https://example.com/news/{item['id']}/first"
    assert first["summary"] == "In short." and first["tags"] == ["news"] and "<s>b</s>" in first["content_html"]
    assert "summary" not in feed["items"][0]  # none given: left out, not ""


@pytest.mark.parametrize("path", FEEDS)
async def test_feed_by_tag_etag_304_and_a_write_seen_at_once(open_api: OpenApi, path: str) -> None:
    async with open_api(**SITE) as api:
        await publish(api, title="Talk", tags=["talks"])
        await publish(api, title="Post", tags=["posts"])
        talks = await api.get(path, params={"tag": "talks"})
        assert titles(talks) == ["Talk"]
        again = await api.get(path, params={"tag": "talks"}, headers={"If-None-Match": talks.headers["etag"]})
        assert again.status_code == 304
        await publish(api, title="Another talk", tags=["talks"])
        changed = await api.get(path, params={"tag": "talks"}, headers={"If-None-Match": talks.headers["etag"]})
        assert changed.status_code == 200
        assert titles(changed) == ["Another talk", "Talk"]
        gzipped = await api.get(path, headers={"Accept-Encoding": "gzip"})
        assert gzipped.status_code == 200 and titles(gzipped) == ["Another talk", "Post", "Talk"]


@pytest.mark.parametrize("query", [{"tag": "Not A Tag"}, {"limit": "5"}])
async def test_feed_with_a_bad_or_unknown_parameter_is_422(open_api: OpenApi, query: dict[str, str]) -> None:
    async with open_api(**SITE) as api:
        for path in FEEDS:
            problem = assert_problem(await api.get(path, params=query), 422)
            assert [e["field"] for e in problem["errors"]] == list(query)
