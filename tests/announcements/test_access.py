"""Who may read and write announcements, and writes that change nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.app import create_app
from service.settings import Settings
from tests.support import assert_problem, running

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POST = {"title": "New talk on Friday", "body": "About **async** Python.", "tags": ["talks"]}


async def test_an_empty_patch_changes_nothing(make_settings: Callable[..., Settings]) -> None:
    async with running(create_app(make_settings(ADMIN_TOKEN=TOKEN))) as api:
        created = await api.post("/announcements", json=POST, headers=ADMIN)
        for body in ({}, {"title": POST["title"]}, {"tags": ["talks", "talks"], "pinned": False}):
            same = await api.patch(created.headers["location"], json=body, headers={**ADMIN, "If-Match": created.headers["etag"]})
            assert same.status_code == 200, body
            assert same.headers["etag"] == created.headers["etag"] and same.json() == created.json(), body
        changed = await api.patch(created.headers["location"], json={"pinned": True}, headers=ADMIN)
        assert changed.headers["etag"] != created.headers["etag"]
        assert changed.json()["updated_at"] > created.json()["updated_at"]


async def test_admin_read_without_admin_token_configured_says_admin_reads_are_disabled(
    make_settings: Callable[..., Settings],
) -> None:
    async with running(create_app(make_settings())) as api:
        problem = assert_problem(await api.get("/announcements?status=all", headers=ADMIN), 403)
    assert problem["detail"].startswith("Admin reads are disabled") and "Writes" not in problem["detail"]


@pytest.mark.parametrize("admin_token", [TOKEN, None])
async def test_credentials_of_another_scheme_are_not_an_admin_attempt_on_public_reads(
    make_settings: Callable[..., Settings], admin_token: str | None
) -> None:
    """A browser behind a password-protected preview sends Basic credentials with every request."""
    basic = {"Authorization": "Basic dXNlcjpwcmV2aWV3LXBhc3N3b3Jk"}
    env = {"ADMIN_TOKEN": TOKEN} if admin_token else {}
    async with running(create_app(make_settings(**env))) as api:
        if admin_token:
            location = (await api.post("/announcements", json=POST, headers=ADMIN)).headers["location"]
            item = await api.get(location, headers=basic)
            assert item.status_code == 200 and item.json()["title"] == POST["title"]
            assert item.headers["cache-control"] == "no-cache"  # the public view, not the admin one
        else:
            assert_problem(await api.get("/announcements/1", headers=basic), 404)
        assert (await api.get("/announcements", headers=basic)).status_code == 200
        # Writes still need the Bearer token, whatever else is sent.
        assert_problem(await api.post("/announcements", json=POST, headers=basic), 401 if admin_token else 403)


async def test_a_wrong_bearer_token_on_a_public_read_is_401(make_settings: Callable[..., Settings]) -> None:
    async with running(create_app(make_settings(ADMIN_TOKEN=TOKEN))) as api:
        location = (await api.post("/announcements", json=POST, headers=ADMIN)).headers["location"]
        assert_problem(await api.get(location, headers={"Authorization": "Bearer wrong-token-wrong-token"}), 401)
