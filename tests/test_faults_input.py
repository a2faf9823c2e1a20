"""Input PostgreSQL cannot store is refused the same way on both stores: a 422 naming the field, nothing written."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from service.announcements.store import open_store
from service.app import create_app
from service.settings import Settings
from tests.support import running

pytestmark = pytest.mark.anyio

TOKEN = "faults-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POST = {"title": "Talk on Friday", "body": "About async Python.", "tags": ["talks"]}


@contextlib.asynccontextmanager
async def api_on(database_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    if database_url.startswith("postgres"):
        store = open_store(database_url, pool_size=1)
        store.open()
        store.migrate()  # the release phase's job on PostgreSQL
        store.close()
    async with running(create_app(make_settings(ADMIN_TOKEN=TOKEN, DATABASE_URL=database_url))) as client:
        yield client


def assert_422_naming(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [error["field"] for error in response.json()["errors"]] == [field]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**POST, "title": "a\u0000b"}, "title"),
        ({**POST, "body": "text\u0000"}, "body"),
        ({**POST, "body": "\u0000"}, "body"),
        ({**POST, "tags": ["talks", "a\u0000b"]}, "tags[1]"),
    ],
)
async def test_a_nul_character_in_a_new_announcement_is_422_naming_the_field(
    database_url: str, make_settings: Callable[..., Settings], body: dict, field: str
) -> None:
    async with api_on(database_url, make_settings) as api:
        assert_422_naming(await api.post("/announcements", json=body, headers=ADMIN), field)
        listed = await api.get("/announcements?status=all", headers=ADMIN)
    assert listed.status_code == 200 and listed.json()["items"] == []


@pytest.mark.parametrize(("patch", "field"), [({"title": "\u0000"}, "title"), ({"body": "ok\u0000ok"}, "body")])
async def test_a_nul_character_in_a_patch_is_422_and_changes_nothing(
    database_url: str, make_settings: Callable[..., Settings], patch: dict, field: str
) -> None:
    async with api_on(database_url, make_settings) as api:
        created = await api.post("/announcements", json=POST, headers=ADMIN)
        assert created.status_code == 201
        assert_422_naming(await api.patch(created.headers["location"], json=patch, headers=ADMIN), field)
        after = await api.get(created.headers["location"])
    assert after.json() == created.json()


async def test_text_around_the_nul_rule_is_still_accepted(database_url: str, make_settings: Callable[..., Settings]) -> None:
    """Leading and trailing space, line breaks and other control characters are text PostgreSQL stores."""
    body = {**POST, "title": "  spaced \t title\n", "body": "line\nbreak \u0001 \u007f \u200b end"}
    async with api_on(database_url, make_settings) as api:
        created = await api.post("/announcements", json=body, headers=ADMIN)
        assert created.status_code == 201, created.text
        fetched = await api.get(created.headers["location"])
    assert fetched.json()["title"] == body["title"] and fetched.json()["body"] == body["body"]
