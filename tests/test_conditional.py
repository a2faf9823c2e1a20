"""Conditional requests as RFC 9110 writes them (§8.8.3.2, §13.1.1, §13.1.2), and the same behaviour on
every endpoint family that answers with an ETag."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from service.app import create_app
from service.conditional import EntityTags, etag_for, parse_entity_tags
from service.settings import Settings
from tests.github_standin import GitHubStandIn
from tests.support import assert_problem, running

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def parsed(value: str) -> EntityTags:
    condition = parse_entity_tags(value)
    assert condition is not None
    return condition


# §8.8.3.2's table: (ETag 1, ETag 2, strong comparison, weak comparison)
@pytest.mark.parametrize(
    ("one", "two", "strong", "weak"),
    [
        ('W/"1"', 'W/"1"', False, True),
        ('W/"1"', 'W/"2"', False, False),
        ('W/"1"', '"1"', False, True),
        ('"1"', '"1"', True, True),
    ],
)
def test_rfc_9110_comparison_table(one: str, two: str, strong: bool, weak: bool) -> None:
    # Symmetric in the RFC, so both orders: one as the header's tag, two as the representation's, and back.
    assert parsed(one).strong_match(two) is strong and parsed(two).strong_match(one) is strong
    assert parsed(one).weak_match(two) is weak and parsed(two).weak_match(one) is weak


@pytest.mark.parametrize(
    ("header", "current", "if_match", "if_none_match"),
    [
        # §13.1.1's and §13.1.2's examples
        ('"xyzzy"', '"xyzzy"', True, True),
        ('"xyzzy", "r2d2xxxx", "c3piozzzz"', '"r2d2xxxx"', True, True),
        ('"xyzzy", "r2d2xxxx", "c3piozzzz"', '"other"', False, False),
        ('W/"xyzzy"', '"xyzzy"', False, True),
        ('W/"xyzzy", W/"r2d2xxxx", W/"c3piozzzz"', '"c3piozzzz"', False, True),
        ("*", '"anything"', True, True),
        # list syntax: optional whitespace, empty elements, commas inside an opaque tag
        (' "a" ,, "b" ', '"b"', True, True),
        ('"a,b", "c"', '"a,b"', True, True),
        ('"a,b", "c"', '"a"', False, False),
        # malformed: not "*" and not a list of entity tags -> matches nothing (If-Match 412, If-None-Match 200)
        ("xyzzy", '"xyzzy"', False, False),
        ('"xyzzy" junk', '"xyzzy"', False, False),
        ('"unterminated', '"unterminated"', False, False),
        ('*, "a"', '"a"', False, False),
        ('w/"a"', '"a"', False, False),  # the weak prefix is case-sensitive
    ],
)
def test_if_match_is_strong_and_if_none_match_is_weak(header: str, current: str, if_match: bool, if_none_match: bool) -> None:
    condition = parsed(header)
    assert condition.strong_match(current) is if_match
    assert condition.weak_match(current) is if_none_match


@pytest.mark.parametrize("header", [None, "", "  \t "])
def test_an_absent_or_blank_header_states_no_condition(header: str | None) -> None:
    assert parse_entity_tags(header) is None


def test_etag_for_is_strong_and_follows_the_bytes() -> None:
    tag = etag_for(b"body")
    assert tag.startswith('"') and tag.endswith('"') and tag == etag_for(b"body") != etag_for(b"body!")
    assert parsed(tag).strong_match(tag)


# -- every endpoint family behaves the same ---------------------------------------------------


def variants(etag: str) -> dict[str, int]:
    """If-None-Match values and the status a GET must answer with them."""
    return {etag: 304, f"W/{etag}": 304, "*": 304, f'"nope", {etag}': 304, '"nope"': 200, "garbage": 200}


@pytest.fixture
async def api(make_settings: Callable[..., Settings], standin: GitHubStandIn) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url, ADMIN_TOKEN=TOKEN)
    async with running(create_app(settings)) as client:
        yield client


async def _check_get(client: httpx.AsyncClient, path: str) -> None:
    first = await client.get(path)
    assert first.status_code == 200
    etag = first.headers["etag"]
    for header, status in variants(etag).items():
        response = await client.get(path, headers={"If-None-Match": header})
        assert (header, response.status_code) == (header, status)
        if status == 304:
            assert response.content == b"" and response.headers["etag"] == etag


@pytest.mark.anyio
async def test_if_none_match_is_the_same_on_github_announcements_and_docs(api: httpx.AsyncClient) -> None:
    created = await api.post("/announcements", json={"title": "t", "body": "b"}, headers=ADMIN)
    repository = (await api.get("/github/repos")).json()[0]["name"]
    paths = ["/github/repos", "/github/owner", f"/github/repos/{repository}", created.headers["location"], "/docs/swagger-ui.css"]
    for path in paths:
        await _check_get(api, path)


@pytest.mark.anyio
async def test_if_match_uses_strong_comparison_and_accepts_star_and_lists(api: httpx.AsyncClient) -> None:
    created = await api.post("/announcements", json={"title": "t", "body": "b"}, headers=ADMIN)
    location, etag = created.headers["location"], created.headers["etag"]
    for header in (f"W/{etag}", '"nope"', "garbage", f"{etag} junk"):
        assert_problem(await api.patch(location, json={"pinned": True}, headers={**ADMIN, "If-Match": header}), 412)
    assert (await api.get(location)).headers["etag"] == etag  # nothing written
    listed = await api.patch(location, json={"pinned": True}, headers={**ADMIN, "If-Match": f'"nope", {etag}'})
    assert listed.status_code == 200
    starred = await api.patch(location, json={"pinned": False}, headers={**ADMIN, "If-Match": "*"})
    assert starred.status_code == 200 and starred.headers["etag"] != listed.headers["etag"]
    assert_problem(await api.delete(location, headers={**ADMIN, "If-Match": f"W/{starred.headers['etag']}"}), 412)
    assert (await api.delete(location, headers={**ADMIN, "If-Match": "*"})).status_code == 204
    assert_problem(await api.delete(location, headers={**ADMIN, "If-Match": "*"}), 404)  # "*" needs a current representation


# -- routing -----------------------------------------------------------------------------------
