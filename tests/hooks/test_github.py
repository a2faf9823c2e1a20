"""Deploy hooks for GitHub data (DEPLOY_HOOK_EVENTS=github): new data recorded by the shared tier, nothing for
the same bytes, and no announcement change when only `github` is chosen."""

from __future__ import annotations

import asyncio

import pytest

from service.github.client import VIEWS_EVERY
from tests.github_standin import GitHubStandIn
from tests.hook_receiver import HookReceiver
from tests.hooks.conftest import ADMIN, OpenHooked
from tests.support import eventually

pytestmark = pytest.mark.anyio


async def test_a_refresh_with_different_data_asks_for_a_rebuild_and_the_same_bytes_do_not(
    hooked: OpenHooked, receiver: HookReceiver, standin: GitHubStandIn
) -> None:
    github = {"GITHUB_OWNER": "octo-dev", "GITHUB_API_URL": standin.url, "GITHUB_TIMEOUT": "2", "GITHUB_CACHE_TTL": "1"}
    async with hooked(receiver, DEPLOY_HOOK_EVENTS="github", DEPLOY_HOOK_DEBOUNCE="0", **github) as api:
        # No visitor asks: the sender keeps the owner's views fresh on its own (with a TTL this short, every
        # VIEWS_EVERY seconds). The first copies are no change, nor is the same data again.
        await api.post("/announcements", json={"title": "Not a GitHub change", "body": "a"}, headers=ADMIN)
        lists = standin.calls_to("/users/octo-dev/repos")
        await eventually(
            lambda: len(standin.calls_to("/users/octo-dev/repos")) > len(lists), timeout=VIEWS_EVERY + 5, what="a refresh"
        )
        await asyncio.sleep(1.5)
        assert receiver.received() == [], "the same bytes again, and announcements are not chosen"
        standin.repos[0]["stargazers_count"] = 4242  # GitHub's data changes
        await eventually(lambda: receiver.received(), timeout=VIEWS_EVERY + 5, what="a POST for the new list")
    (hit,) = receiver.received()
    assert [reason["kind"] for reason in hit.payload["reasons"]] == ["github.repositories"]
