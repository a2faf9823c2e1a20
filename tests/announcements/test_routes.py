"""/announcements over HTTP (in-process ASGI), on SQLite and PostgreSQL: every status, auth included."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import httpx
import pytest

from service.announcements.store import AnnouncementStore
from service.app import create_app
from service.settings import Settings
from tests.support import assert_problem, eventually, running

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POST = {"title": "New talk on Friday", "body": "About **async** Python.", "tags": ["talks"]}
WRONG_CREDENTIALS = [{"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                     {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}]  # fmt: skip

OpenApi = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def open_api(make_settings: Callable[..., Settings], database_url: str) -> OpenApi:
    @contextlib.asynccontextmanager
    async def open_client(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(**{"ADMIN_TOKEN": TOKEN, "DATABASE_URL": database_url, **env})
        app = create_app(settings)
        if not database_url.startswith("sqlite"):
            from service.announcements.store import open_store

            store = open_store(database_url, pool_size=1)
            store.open()
            store.migrate()  # the release phase's job on PostgreSQL
            store.close()
        async with running(app) as client:
            yield client

    return open_client


@pytest.fixture
async def api(open_api: OpenApi) -> AsyncIterator[httpx.AsyncClient]:
    async with open_api() as client:
        yield client


async def count_all(api: httpx.AsyncClient) -> int:
    return len((await api.get("/announcements?status=all&limit=100", headers=ADMIN)).json()["items"])


async def test_publish_then_read_it_back(api: httpx.AsyncClient) -> None:
    created = await api.post("/announcements", json=POST, headers=ADMIN)
    assert created.status_code == 201
    body = created.json()
    assert created.headers["location"] == f"/announcements/{body['id']}"
    assert {k: body[k] for k in POST} == POST and body["pinned"] is False and body["expires_at"] is None
    fetched = await api.get(created.headers["location"])
    assert fetched.status_code == 200 and fetched.json() == body
    assert fetched.headers["etag"] == created.headers["etag"]
    listed = await api.get("/announcements")
    assert listed.json() == {"items": [body], "next_cursor": None}


async def test_get_with_current_etag_is_304(api: httpx.AsyncClient) -> None:
    created = await api.post("/announcements", json=POST, headers=ADMIN)
    again = await api.get(created.headers["location"], headers={"If-None-Match": created.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong-token-wrong-token"}, 401), ({"Authorization": f"Basic {TOKEN}"}, 401),
     ({"Authorization": "Bearer"}, 401)],
)  # fmt: skip
async def test_writes_without_the_right_token_are_401_and_write_nothing(
    api: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    existing = (await api.post("/announcements", json=POST, headers=ADMIN)).json()["id"]
    responses = [
        await api.post("/announcements", json=POST, headers=headers),
        await api.patch(f"/announcements/{existing}", json={"title": "x"}, headers=headers),
        await api.delete(f"/announcements/{existing}", headers=headers),
        await api.get("/announcements?status=all", headers=headers),
    ]
    for response in responses:
        assert_problem(response, status)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert await count_all(api) == 1
    assert (await api.get(f"/announcements/{existing}", headers=ADMIN)).json()["title"] == POST["title"]


# Basic credentials are not an admin attempt on a public read (tests/announcements/test_access.py).
WRONG_BEARER = [h for h in WRONG_CREDENTIALS if h["Authorization"].startswith("Bearer")]


@pytest.mark.parametrize("headers", WRONG_BEARER, ids=["wrong-token", "no-token", "one-char-more"])
async def test_reading_one_with_a_wrong_token_is_401_not_anonymous(api: httpx.AsyncClient, headers: dict[str, str]) -> None:
    published = (await api.post("/announcements", json=POST, headers=ADMIN)).json()
    scheduled = (await api.post("/announcements", json={**POST, "published_at": "2099-01-01T00:00:00Z"}, headers=ADMIN)).json()
    for item in (published, scheduled):
        response = await api.get(f"/announcements/{item['id']}", headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await api.get(f"/announcements/{published['id']}")).status_code == 200  # no token at all: public


async def test_writes_are_disabled_without_admin_token(make_settings: Callable[..., Settings]) -> None:
    async with running(create_app(make_settings())) as client:
        response = await client.post("/announcements", json=POST, headers=ADMIN)
        listed = await client.get("/announcements")
    assert "ADMIN_TOKEN" in assert_problem(response, 403)["detail"]
    assert listed.status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"title": "x", "body": ', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"title": "x", "body": "y"}', "text/plain", 415),
        (b'{"title": "x", "body": "y"}', "application/x-www-form-urlencoded", 415),
    ],
)
async def test_malformed_or_wrong_type_body_writes_nothing(
    api: httpx.AsyncClient, content: bytes, content_type: str, status: int
) -> None:
    response = await api.post("/announcements", content=content, headers={**ADMIN, "content-type": content_type})
    assert_problem(response, status)
    assert await count_all(api) == 0


async def test_invalid_fields_are_all_named_in_one_422(api: httpx.AsyncClient) -> None:
    bad = {
        "title": "",
        "body": "x" * 20_001,
        "tags": ["Not-Lower", "ok", *["t"] * 10],
        "pinned": "yes",
        "published_at": "yesterday",
        "expires_at": "2026-01-01T00:00:00",  # no offset
        "colour": "red",
    }
    problem = assert_problem(await api.post("/announcements", json=bad, headers=ADMIN), 422)
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {"title", "body", "tags", "pinned", "published_at", "expires_at", "colour"}
    assert await count_all(api) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [({"title": "   ", "body": "x"}, "title"), ({"title": "t", "body": "x", "tags": ["a b"]}, "tags[0]"),
     ({"title": "t", "body": "x", "published_at": "2026-11-23T10:00:00Z", "expires_at": "2026-11-23T09:00:00Z"}, "expires_at"),
     ({"title": "t", "body": "x", "published_at": "9999-12-31T23:00:00-05:00"}, "published_at"), ({"body": "x"}, "title")],
)  # fmt: skip
async def test_constraint_violations_name_the_field(api: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    problem = assert_problem(await api.post("/announcements", json=body, headers=ADMIN), 422)
    assert [e["field"] for e in problem["errors"]] == [field]
    assert await count_all(api) == 0


async def test_body_over_max_body_bytes_is_413(open_api: OpenApi) -> None:
    async with open_api(MAX_BODY_BYTES="1000") as api:
        response = await api.post("/announcements", json={**POST, "body": "x" * 2000}, headers=ADMIN)
        assert_problem(response, 413)
        assert await count_all(api) == 0


@pytest.mark.parametrize("path", ["/announcements/abc", "/announcements/-1", "/announcements/0", "/announcements/1.5",
                                  "/announcements/99999999999999999999999", "/announcements/12345"])  # fmt: skip
async def test_non_integer_or_unknown_id_is_404(api: httpx.AsyncClient, path: str) -> None:
    for response in (await api.get(path), await api.patch(path, json={"pinned": True}, headers=ADMIN),
                     await api.delete(path, headers=ADMIN)):  # fmt: skip
        assert_problem(response, 404)


async def test_scheduled_and_expired_are_hidden_from_the_public_but_not_the_admin(api: httpx.AsyncClient) -> None:
    scheduled = (await api.post("/announcements", json={**POST, "published_at": "2099-01-01T00:00:00Z"}, headers=ADMIN)).json()
    expired = (await api.post("/announcements", json={**POST, "published_at": "2020-01-01T00:00:00Z",
                                                      "expires_at": "2020-02-01T00:00:00Z"}, headers=ADMIN)).json()  # fmt: skip
    for item in (scheduled, expired):
        assert_problem(await api.get(f"/announcements/{item['id']}"), 404)
        admin_view = await api.get(f"/announcements/{item['id']}", headers=ADMIN)
        assert admin_view.status_code == 200 and admin_view.headers["cache-control"] == "private, no-store"
    assert (await api.get("/announcements")).json()["items"] == []
    assert len((await api.get("/announcements?status=all", headers=ADMIN)).json()["items"]) == 2


async def test_list_pages_with_cursor_and_filters_by_tag(api: httpx.AsyncClient) -> None:
    for i in range(7):
        await api.post("/announcements", json={**POST, "title": f"n{i}", "tags": ["odd" if i % 2 else "even"],
                                               "published_at": f"2026-01-0{i + 1}T00:00:00Z"}, headers=ADMIN)  # fmt: skip
    first = (await api.get("/announcements?limit=3")).json()
    second = (await api.get(f"/announcements?limit=3&cursor={first['next_cursor']}")).json()
    third = (await api.get(f"/announcements?limit=3&cursor={second['next_cursor']}")).json()
    titles = [a["title"] for page in (first, second, third) for a in page["items"]]
    assert titles == ["n6", "n5", "n4", "n3", "n2", "n1", "n0"] and third["next_cursor"] is None
    odd = (await api.get("/announcements?tag=odd")).json()["items"]
    assert [a["title"] for a in odd] == ["n5", "n3", "n1"]
    problem = assert_problem(await api.get("/announcements?cursor=garbage"), 422)
    assert problem["errors"][0]["field"] == "cursor"
    assert_problem(await api.get("/announcements?limit=0"), 422)
    assert_problem(await api.get("/announcements?status=drafts", headers=ADMIN), 422)


async def test_patch_with_if_match_stops_lost_updates(api: httpx.AsyncClient) -> None:
    created = await api.post("/announcements", json=POST, headers=ADMIN)
    location, etag = created.headers["location"], created.headers["etag"]
    first = await api.patch(location, json={"title": "Editor one"}, headers={**ADMIN, "If-Match": etag})
    assert first.status_code == 200 and first.json()["title"] == "Editor one" and first.json()["body"] == POST["body"]
    second = await api.patch(location, json={"title": "Editor two"}, headers={**ADMIN, "If-Match": etag})
    assert_problem(second, 412)
    assert (await api.get(location)).json()["title"] == "Editor one"
    merge = await api.patch(location, content=b'{"pinned": true}',
                            headers={**ADMIN, "content-type": "application/merge-patch+json"})  # fmt: skip
    assert merge.status_code == 200 and merge.json()["pinned"] is True


async def test_if_match_star_matches_any_current_version(api: httpx.AsyncClient) -> None:
    location = (await api.post("/announcements", json=POST, headers=ADMIN)).headers["location"]
    patched = await api.patch(location, json={"title": "Star"}, headers={**ADMIN, "If-Match": "*"})
    assert patched.status_code == 200 and patched.json()["title"] == "Star"
    deleted = await api.delete(location, headers={**ADMIN, "If-Match": "*"})
    assert deleted.status_code == 204
    assert_problem(await api.patch(location, json={"title": "x"}, headers={**ADMIN, "If-Match": "*"}), 404)


async def test_if_match_takes_a_list_and_compares_strongly(api: httpx.AsyncClient) -> None:
    created = await api.post("/announcements", json=POST, headers=ADMIN)
    location, etag = created.headers["location"], created.headers["etag"]
    weak = await api.patch(location, json={"title": "Weak"}, headers={**ADMIN, "If-Match": f"W/{etag}"})
    assert_problem(weak, 412)  # RFC 9110 §13.1.1: If-Match uses the strong comparison, a weak tag never matches
    listed = await api.patch(location, json={"title": "Listed"}, headers={**ADMIN, "If-Match": f'"0-0", {etag}'})
    assert listed.status_code == 200 and listed.json()["title"] == "Listed"


async def test_invalid_patch_changes_nothing(api: httpx.AsyncClient) -> None:
    created = (await api.post("/announcements", json=POST, headers=ADMIN)).json()
    for body in ({"title": None}, {"expires_at": "2000-01-01T00:00:00Z"}, {"nope": 1}, {"tags": "talks"}):
        assert_problem(await api.patch(f"/announcements/{created['id']}", json=body, headers=ADMIN), 422)
    assert (await api.get(f"/announcements/{created['id']}")).json() == created


async def test_delete_then_gone(api: httpx.AsyncClient) -> None:
    location = (await api.post("/announcements", json=POST, headers=ADMIN)).headers["location"]
    stale = await api.delete(location, headers={**ADMIN, "If-Match": '"0-0"'})
    assert_problem(stale, 412)
    deleted = await api.delete(location, headers=ADMIN)
    assert deleted.status_code == 204 and deleted.content == b""
    assert_problem(await api.get(location), 404)
    assert_problem(await api.delete(location, headers=ADMIN), 404)


async def test_slow_store_read_does_not_delay_health(api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    held: list[bool] = []
    original = AnnouncementStore.list

    def held_list(self: AnnouncementStore, **kwargs: Any) -> Any:
        held.append(True)
        release.wait(timeout=5)  # blocking, as a slow query would be: only harmless off the event loop
        return original(self, **kwargs)

    monkeypatch.setattr(AnnouncementStore, "list", held_list)
    reads_done: list[int] = []

    async def read() -> None:
        assert (await api.get("/announcements")).status_code == 200
        reads_done.append(1)

    async with anyio.create_task_group() as group:
        for _ in range(8):  # more than the pool's 5 connections: some wait for one
            group.start_soon(read)
        await eventually(lambda: held, what="a read to reach the database")
        for _ in range(5):
            assert (await api.get("/health")).status_code == 200
        # Every probe was answered while the reads were still held in the database, not after them.
        assert reads_done == [], "/health waited for the slow reads"
        release.set()
    assert len(reads_done) == 8


async def test_unreachable_database_is_503_while_other_endpoints_work(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        ADMIN_TOKEN=TOKEN, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1"
    )
    async with running(create_app(settings)) as client:
        listed = await client.get("/announcements")
        health = await client.get("/health")
        probe_started = time.monotonic()
        ready = await client.get("/health/ready")
        probe_seconds = time.monotonic() - probe_started
    problem = assert_problem(listed, 503)
    assert problem["title"] == "Database unavailable" and listed.headers["retry-after"] == "2"
    assert health.status_code == 200
    assert ready.status_code == 503 and ready.json()["checks"]["database"]["status"] == "failing"
    # A deadline, not a speed: the probe gives up after 1 s, while a request waits up to 5 s for a connection.
    assert probe_seconds < 5, "a readiness probe must not wait out the 5 s pool timeout"


@pytest.mark.parametrize("digits", [20, 4_301, 10_000])
async def test_an_id_longer_than_any_id_is_404_whatever_the_method(api: httpx.AsyncClient, digits: int) -> None:
    """Starlette's int convertor turned 4,301 digits into a ValueError (a 500); no id has more than 19."""
    path = "/announcements/" + "9" * digits
    for method in ("GET", "HEAD", "PATCH", "DELETE"):
        response = await api.request(method, path, headers=ADMIN, json={"title": "x"} if method == "PATCH" else None)
        assert response.status_code == 404, (method, response.status_code)
        if method != "HEAD":
            assert_problem(response, 404)


# -- by slug ---------------------------------------------------------------------------------


async def test_by_slug_is_the_same_answer_as_by_id(api: httpx.AsyncClient) -> None:
    created = await api.post("/announcements", json={**POST, "title": "Håndtering av blokkerende kode"}, headers=ADMIN)
    body = created.json()
    assert (
        body["slug"] == "handtering-av-blokkerende-kode" and body["body_html"] == "<p>About <strong>async</strong> Python.</p>\n"
    )
    by_id = await api.get(f"/announcements/{body['id']}")
    by_slug = await api.get("/announcements/slug/handtering-av-blokkerende-kode")
    assert by_slug.status_code == 200 and by_slug.json() == by_id.json() == body
    assert by_slug.headers["etag"] == by_id.headers["etag"] == created.headers["etag"]
    assert by_slug.headers["cache-control"] == "no-cache"
    again = await api.get(
        "/announcements/slug/handtering-av-blokkerende-kode", headers={"If-None-Match": by_slug.headers["etag"]}
    )
    assert again.status_code == 304


async def test_by_slug_unpublished_is_404_except_for_the_admin(api: httpx.AsyncClient) -> None:
    scheduled = {**POST, "slug": "later", "published_at": "2099-01-01T00:00:00Z"}
    assert (await api.post("/announcements", json=scheduled, headers=ADMIN)).status_code == 201
    assert_problem(await api.get("/announcements/slug/later"), 404)
    admin = await api.get("/announcements/slug/later", headers=ADMIN)
    assert admin.status_code == 200 and admin.json()["slug"] == "later"
    assert admin.headers["cache-control"] == "private, no-store"
    assert_problem(await api.get("/announcements/slug/later", headers={"Authorization": "Bearer wrong-token-wrong-token"}), 401)


@pytest.mark.parametrize("path", ["/announcements/slug/No-Caps", "/announcements/slug/a--b", "/announcements/slug/-a",
                                  "/announcements/slug/" + "a" * 81, "/announcements/slug/missing"])  # fmt: skip
async def test_by_slug_of_no_announcement_is_404(api: httpx.AsyncClient, path: str) -> None:
    assert_problem(await api.get(path), 404)


async def test_renamed_slug_is_seen_at_once_and_the_old_one_is_gone(api: httpx.AsyncClient) -> None:
    created = (await api.post("/announcements", json=POST, headers=ADMIN)).json()
    assert (await api.get(f"/announcements/slug/{created['slug']}")).status_code == 200  # now cached
    renamed = await api.patch(f"/announcements/{created['id']}", json={"slug": "renamed"}, headers=ADMIN)
    assert renamed.status_code == 200 and renamed.json()["slug"] == "renamed"
    assert_problem(await api.get(f"/announcements/slug/{created['slug']}"), 404)
    assert (await api.get("/announcements/slug/renamed")).json() == renamed.json()


async def test_taken_slug_is_409_on_post_and_patch_and_writes_nothing(api: httpx.AsyncClient) -> None:
    first = (await api.post("/announcements", json={**POST, "slug": "taken"}, headers=ADMIN)).json()
    second = (await api.post("/announcements", json=POST, headers=ADMIN)).json()
    assert second["slug"] == "new-talk-on-friday"
    assert (
        "taken" in assert_problem(await api.post("/announcements", json={**POST, "slug": "taken"}, headers=ADMIN), 409)["detail"]
    )
    patch = await api.patch(f"/announcements/{second['id']}", json={"slug": "taken", "title": "x"}, headers=ADMIN)
    assert_problem(patch, 409)
    assert await count_all(api) == 2
    assert (await api.get(f"/announcements/{second['id']}")).json() == second
    assert (await api.get("/announcements/slug/taken")).json() == first


@pytest.mark.parametrize("fields", [{"slug": "Bad Slug"}, {"slug": ""}, {"slug": "a" * 81}, {"summary": "x" * 501},
                                    {"body_html": "<p>mine</p>"}])  # fmt: skip
async def test_bad_slug_or_summary_or_read_only_body_html_is_422(api: httpx.AsyncClient, fields: dict[str, str]) -> None:
    problem = assert_problem(await api.post("/announcements", json={**POST, **fields}, headers=ADMIN), 422)
    assert [e["field"] for e in problem["errors"]] == list(fields)
    assert await count_all(api) == 0


# -- search ----------------------------------------------------------------------------------


async def test_search_answers_best_matches_first_with_tag_and_limit(api: httpx.AsyncClient) -> None:
    for title, body, tags in [("Blåbær og brødskiver", "Om frokost.", ["mat"]), ("Frokost", "Blåbær på brødskiva.", ["mat"]),
                              ("Blåbær", "Bær.", ["skog"])]:  # fmt: skip
        assert (
            await api.post("/announcements", json={"title": title, "body": body, "tags": tags}, headers=ADMIN)
        ).status_code == 201
    found = await api.get("/announcements", params={"q": "blåbær", "tag": "mat"})
    assert found.status_code == 200 and found.headers["etag"]
    assert [a["title"] for a in found.json()["items"]] == ["Blåbær og brødskiver", "Frokost"]
    assert found.json()["next_cursor"] is None
    one = await api.get("/announcements", params={"q": "BLÅBÆR", "limit": "1"})
    assert [a["title"] for a in one.json()["items"]] == ["Blåbær"]
    assert (await api.get("/announcements", params={"q": "brødskiva"})).json()["items"][0]["title"] == "Frokost"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": "?!… —"}, "q"),
        ({"q": '"'}, "q"),
        ({"q": ""}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "a", "cursor": "0.1.1"}, "cursor"),
    ],
)
async def test_search_without_words_or_with_a_cursor_is_422_naming_the_field(
    api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    problem = assert_problem(await api.get("/announcements", params=params), 422)
    assert [e["field"] for e in problem["errors"]] == [field]


async def test_search_sees_a_write_at_once(api: httpx.AsyncClient) -> None:
    assert (await api.get("/announcements", params={"q": "zebra"})).json()["items"] == []  # cached: nothing
    await api.post("/announcements", json={**POST, "body": "A zebra."}, headers=ADMIN)
    assert len((await api.get("/announcements", params={"q": "zebra"})).json()["items"]) == 1
