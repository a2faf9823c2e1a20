"""GitHub endpoints through a real HTTP stand-in for GitHub on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import ASGIApp, Message

from service.app import create_app
from service.github.client import UNLISTED_LOOKUP_BURST, TokenBucket
from service.settings import Settings
from tests.github_standin import TOKEN, GitHubStandIn, Reply, gather, poll
from tests.support import OpenClient, assert_problem, eventually, refused_port, running

pytestmark = pytest.mark.anyio

Check = Callable[[list[dict[str, Any]], list[dict[str, Any]]], object]


def names(response: httpx.Response) -> list[str]:
    return [r["name"] for r in response.json()]


# -- normal answers --------------------------------------------------------------------------


async def test_lists_repositories_newest_push_first_without_forks(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        response = await client.get("/github/repos")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    repos = response.json()
    expected = sorted((r for r in standin.repos if not r["fork"]), key=lambda r: r["pushed_at"], reverse=True)
    assert [r["name"] for r in repos] == [r["name"] for r in expected][:30]
    assert set(repos[0]) == {
        "name", "full_name", "html_url", "description", "homepage", "language", "topics", "stargazers_count",
        "forks_count", "open_issues_count", "fork", "archived", "license", "default_branch", "created_at",
        "updated_at", "pushed_at",
    }  # fmt: skip
    licensed = next(r for r in repos if r["license"])
    assert set(licensed["license"]) == {"spdx_id", "name"}


async def test_upstream_request_carries_githubs_required_headers(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        await client.get("/github/repos")
    headers = standin.calls_to("/users/octo-dev/repos")[0].headers
    assert headers["accept"] == "application/vnd.github+json"
    assert headers["x-github-api-version"] == "2022-11-28"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["user-agent"].startswith("website-api")
    assert "per_page=100" in standin.calls_to("/users/octo-dev/repos")[0].path


async def test_organisation_owner_lists_org_repositories(github_client: OpenClient) -> None:
    with GitHubStandIn(owner_type="Organization") as org:
        async with github_client(org) as client:
            response = await client.get("/github/repos")
    assert response.status_code == 200
    assert org.calls_to("/orgs/octo-dev/repos") and not org.calls_to("/users/octo-dev/repos")


@pytest.mark.parametrize(
    ("query", "check"),
    [
        ("sort=name", lambda repos, all_: [r["name"] for r in repos] == sorted(r["name"] for r in all_ if not r["fork"])),
        (
            "sort=stars&direction=asc&forks=true&limit=100",
            lambda repos, all_: [r["stargazers_count"] for r in repos] == sorted(r["stargazers_count"] for r in all_),
        ),
        ("language=python", lambda repos, all_: repos and all(r["language"] == "Python" for r in repos)),
        ("topic=rust&forks=true", lambda repos, all_: len(repos) == sum("rust" in r["topics"] for r in all_)),
        ("archived=false", lambda repos, all_: repos and not any(r["archived"] for r in repos)),
        ("forks=true&limit=5", lambda repos, all_: len(repos) == 5),
        ("forks=true&limit=100", lambda repos, all_: len(repos) == len(all_) and any(r["fork"] for r in repos)),
    ],
)
async def test_query_parameters_filter_and_sort(
    standin: GitHubStandIn, github_client: OpenClient, query: str, check: Check
) -> None:
    async with github_client(standin) as client:
        response = await client.get(f"/github/repos?{query}")
    assert response.status_code == 200
    assert check(response.json(), standin.repos)


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("sort=stargazers", "sort"),
     ("direction=up", "direction"), ("direction=null", "direction"), ("forks=maybe", "forks"), ("language=", "language"),
     ("colour=red", "colour"), ("limit=5&limit=6", "limit")],
)  # fmt: skip
async def test_invalid_query_is_422_naming_the_parameter(
    standin: GitHubStandIn, github_client: OpenClient, query: str, field: str
) -> None:
    async with github_client(standin) as client:
        response = await client.get(f"/github/repos?{query}")
    problem = assert_problem(response, 422)
    assert [e["field"] for e in problem["errors"]] == [field]
    assert not standin.calls, "an invalid query must not reach GitHub"


async def test_every_page_is_followed_and_fetched_once_under_100_concurrent_requests(github_client: OpenClient) -> None:
    with GitHubStandIn(count=250) as big:
        big.delay = 0.2
        async with github_client(big, GITHUB_TIMEOUT="5") as client:
            responses: list[httpx.Response] = []

            async def one() -> None:
                responses.append(await client.get("/github/repos?forks=true&sort=name&direction=desc&limit=100"))

            async with anyio.create_task_group() as group:
                for _ in range(100):
                    group.start_soon(one)
        pages = [c.path for c in big.calls_to("/users/octo-dev/repos")]
    assert len(responses) == 100 and all(r.status_code == 200 for r in responses)
    assert len({r.content for r in responses}) == 1
    assert len(big.calls_to("/users/octo-dev?")) + len([c for c in big.calls if c.path == "/users/octo-dev"]) == 1
    assert len(pages) == 3 and len(set(pages)) == 3  # one call per page
    everything = sorted((r["name"] for r in big.repos), reverse=True)
    assert names(responses[0]) == everything[:100]  # names from page 3 sort first: all pages were read


async def test_single_repository_and_owner_profile(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        repo = await client.get("/github/repos/project-001")
        owner = await client.get("/github/owner")
    assert repo.status_code == 200 and repo.json()["full_name"] == "octo-dev/project-001"
    assert owner.status_code == 200
    assert set(owner.json()) == {
        "login", "type", "html_url", "avatar_url", "name", "bio", "blog", "location", "public_repos", "followers"
    }  # fmt: skip
    assert owner.json()["login"] == "octo-dev" and owner.json()["type"] == "User"


async def test_unknown_repository_is_404(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        problem = assert_problem(await client.get("/github/repos/no-such-thing"), 404)
    assert "no-such-thing" in problem["detail"]


@pytest.mark.parametrize("name", ["..", ".", "tool.git", "TOOL.GIT", "a/b", "../../users", "a" * 101, "été", "a b", "a%2Fb"])
async def test_invalid_repository_name_is_404_without_upstream_call(
    standin: GitHubStandIn, github_client: OpenClient, name: str
) -> None:
    async with github_client(standin) as client:
        transport = client._transport
        assert isinstance(transport, httpx.ASGITransport)
        app = transport.app
        # Straight to ASGI, as a server passes a decoded path on: no client-side normalisation of "." or "..".
        status, body = await asgi_get(app, f"/github/repos/{name}")
    assert status == 404 and json.loads(body)["status"] == 404
    assert not standin.calls_to("/repos/")


async def asgi_get(app: ASGIApp, path: str) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}  # fmt: skip
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_renamed_repository_is_followed(standin: GitHubStandIn, github_client: OpenClient) -> None:
    def renamed(path: str, headers: dict[str, str]) -> Reply | None:
        if path == "/repos/octo-dev/old-name":
            return Reply(301, b'{"message": "Moved Permanently"}', {"Location": f"{standin.url}/repos/octo-dev/project-002"})
        return None

    standin.scenario = renamed
    async with github_client(standin) as client:
        response = await client.get("/github/repos/old-name")
    assert response.status_code == 200 and response.json()["name"] == "project-002"


async def test_made_up_names_spend_only_a_small_upstream_budget(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        assert (await client.get("/github/repos")).status_code == 200  # the owner's names are now known
        for i in range(20):
            problem = assert_problem(await client.get(f"/github/repos/made-up-{i}"), 404)
            assert f"made-up-{i}" in problem["detail"]
        listed = [f"project-{i:03d}" for i in range(1, 30) if i % 7]
        for name in listed:  # names on the list are never refused by the budget
            response = await client.get(f"/github/repos/{name.upper()}")
            assert response.status_code == 200 and response.json()["name"] == name
    assert len(standin.calls_to("/repos/octo-dev/made-up-")) == UNLISTED_LOOKUP_BURST
    assert len(standin.calls_to("/repos/")) == UNLISTED_LOOKUP_BURST  # listed names are answered from the list


async def test_listed_repository_is_answered_from_the_list_without_its_own_call(
    standin: GitHubStandIn, github_client: OpenClient
) -> None:
    async with github_client(standin) as client:
        one = await client.get("/github/repos/project-003")
        listing = await client.get("/github/repos?forks=true&limit=100")
    expected = next(r for r in listing.json() if r["name"] == "project-003")
    assert one.status_code == 200 and one.json() == expected
    assert one.headers["x-cache"] == "miss"  # the list was fetched for it
    assert not standin.calls_to("/repos/") and len(standin.calls_to("/users/octo-dev/repos")) == 1


async def test_cold_start_answers_every_listed_name_with_one_list_fetch(
    standin: GitHubStandIn, github_client: OpenClient
) -> None:
    standin.delay = 0.2  # the names all arrive while the list is being fetched
    names_asked = [r["name"] for r in standin.repos]
    # The profile and the list take 0.2 s each: a timeout with room for a loaded machine, not 1 s.
    async with github_client(standin, GITHUB_TIMEOUT="5") as client:
        responses = await gather(client.get(f"/github/repos/{name}") for name in names_asked)
    assert [r.status_code for r in responses] == [200] * len(names_asked)
    assert [r.json()["name"] for r in responses] == names_asked
    assert len(standin.calls_to("/users/octo-dev/repos")) == 1 and not standin.calls_to("/repos/")


def test_unlisted_lookup_budget_is_regained_over_time() -> None:
    now = [0.0]
    bucket = TokenBucket(2, 60.0, lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 59
    assert not bucket.take()
    now[0] += 1
    assert bucket.take() and not bucket.take()
    now[0] += 3600
    assert [bucket.take() for _ in range(3)] == [True, True, False]  # never more than the burst


# -- caching ---------------------------------------------------------------------------------


async def test_second_request_is_a_hit_with_cache_headers(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin, GITHUB_CACHE_TTL="300") as client:
        first = await client.get("/github/repos")
        second = await client.get("/github/repos")
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert first.content == second.content and first.headers["etag"] == second.headers["etag"]
    assert second.headers["cache-control"] == "public, max-age=60, stale-while-revalidate=300, stale-if-error=86400"
    assert int(second.headers["age"]) >= 0
    assert len(standin.calls_to("/users/octo-dev/repos")) == 1


async def test_client_if_none_match_gets_304(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        first = await client.get("/github/repos?limit=3")
        again = await client.get("/github/repos?limit=3", headers={"If-None-Match": first.headers["etag"]})
        other_view = await client.get("/github/repos?limit=4", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
    assert other_view.status_code == 200


async def test_revalidation_sends_if_none_match_and_304_keeps_serving(standin: GitHubStandIn, github_client: OpenClient) -> None:
    # No stale window: the second visitor waits for the revalidation and sees its outcome.
    async with github_client(standin, GITHUB_CACHE_TTL="0", GITHUB_STALE_TTL="0") as client:
        first = await client.get("/github/repos")
        second = await client.get("/github/repos")
    assert second.status_code == 200 and second.headers["x-cache"] == "revalidated"
    assert second.content == first.content
    calls = standin.calls_to("/users/octo-dev/repos")
    assert len(calls) == 2
    assert "if-none-match" not in calls[0].headers
    assert calls[1].headers["if-none-match"].startswith('"')


async def test_changed_upstream_is_served_after_revalidation(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin, GITHUB_CACHE_TTL="0", GITHUB_STALE_TTL="0") as client:
        await client.get("/github/repos?sort=name")
        standin.repos[1]["name"] = "aaa-renamed"
        changed = await client.get("/github/repos?sort=name")
    assert changed.headers["x-cache"] == "miss" and names(changed)[0] == "aaa-renamed"


# -- failures --------------------------------------------------------------------------------


def fail_repos(reply: Reply) -> Callable[[str, dict[str, str]], Reply | None]:
    return lambda path, headers: reply if "/repos" in path else None


RATE_LIMITED = Reply(403, b'{"message": "API rate limit exceeded"}', {"x-ratelimit-remaining": "0"})
FAILURES = {
    "timeout": (Reply(delay=3), 504),
    "500": (Reply(500, b"oops"), 502),
    "502": (Reply(502, b"<html>bad gateway</html>"), 502),
    "not json": (Reply(200, b"<html>not json</html>"), 502),
    "wrong shape": (Reply(200, b'{"message": "hello"}'), 502),
    "wrong item shape": (Reply(200, b'[{"name": 5}]'), 502),
    "reset": (Reply(reset_connection=True), 502),
    "429 retry-after": (Reply(429, b"{}", {"retry-after": "7"}), 503),
    "unexplained 403": (Reply(403, b'{"message": "Forbidden"}'), 502),
}


@pytest.mark.parametrize("failure", FAILURES)
async def test_upstream_failure_without_cache_is_a_problem(
    standin: GitHubStandIn, github_client: OpenClient, failure: str
) -> None:
    reply, status = FAILURES[failure]
    standin.scenario = fail_repos(reply)
    async with github_client(standin) as client:
        response = await client.get("/github/repos")
    assert_problem(response, status)  # "timeout": 504, as GITHUB_TIMEOUT (1 s) cut short GitHub's 3 s answer
    if failure == "429 retry-after":
        assert response.headers["retry-after"] == "7"


async def test_rate_limit_gives_503_with_retry_after_until_reset_and_no_upstream_call(
    standin: GitHubStandIn, github_client: OpenClient
) -> None:
    reset = int(time.time()) + 30
    standin.scenario = fail_repos(Reply(403, b"{}", {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}))
    async with github_client(standin) as client:
        first = await client.get("/github/repos")
        calls_after_first = len(standin.calls)
        standin.scenario = None  # GitHub would answer again, but the reset time has not passed
        second = await client.get("/github/repos?sort=name")
        single = await client.get("/github/repos/project-001")
    assert_problem(first, 503)
    assert 28 <= int(first.headers["retry-after"]) <= 31
    assert_problem(second, 503) and assert_problem(single, 503)
    assert int(second.headers["retry-after"]) <= int(first.headers["retry-after"])
    assert len(standin.calls) == calls_after_first


async def test_upstream_called_again_once_reset_passes(standin: GitHubStandIn, github_client: OpenClient) -> None:
    standin.scenario = fail_repos(Reply(429, b"{}", {"retry-after": "1"}))
    async with github_client(standin) as client:
        first_sent = time.monotonic()
        assert (await client.get("/github/repos")).status_code == 503
        standin.scenario = None
        status = 503
        with anyio.fail_after(10):  # Retry-After said 1 s: this bound only stops a hang
            while status == 503:  # each of these is answered without asking GitHub
                await anyio.sleep(0.05)
                sent = time.monotonic()
                status = (await client.get("/github/repos")).status_code
    assert status == 200
    # A lower bound, so no speed is assumed: GitHub was not asked again before its Retry-After had passed.
    assert sent - first_sent >= 1.0
    assert len(standin.calls_to("/users/octo-dev/repos")) == 2


async def test_bad_credentials_are_503_and_the_token_is_never_echoed(
    standin: GitHubStandIn, github_client: OpenClient, caplog: pytest.LogCaptureFixture
) -> None:
    standin.scenario = lambda path, headers: Reply(401, b'{"message": "Bad credentials"}')
    caplog.set_level(logging.DEBUG)
    async with github_client(standin) as client:
        response = await client.get("/github/repos")
        ready = await client.get("/health/ready")
    problem = assert_problem(response, 503)
    assert problem["title"] == "GitHub credentials rejected"
    assert ready.status_code == 503 and "credentials rejected" in ready.json()["checks"]["github"]["detail"]
    assert any("401" in r.getMessage() for r in caplog.records)
    for text in (response.text, ready.text, json.dumps([r.getMessage() for r in caplog.records])):
        assert TOKEN not in text


async def test_connection_refused_is_502(github_client: OpenClient) -> None:
    with refused_port() as port:
        async with github_client(f"http://127.0.0.1:{port}") as client:
            response = await client.get("/github/repos")
    assert_problem(response, 502)


async def test_an_unreachable_github_is_one_warning_a_minute_naming_the_host_never_the_token(
    github_client: OpenClient, caplog: pytest.LogCaptureFixture
) -> None:
    with refused_port() as port:
        async with github_client(f"http://127.0.0.1:{port}") as client:
            for path in ("/github/repos", "/github/owner", "/github/repos", "/github/owner"):
                assert_problem(await client.get(path), 502)
    warnings = [r for r in caplog.records if r.name == "service.github" and r.levelname == "WARNING"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one per kind of failure and minute
    assert "127.0.0.1" in warnings[0].getMessage() and "ConnectError" in warnings[0].getMessage()
    assert TOKEN not in caplog.text


async def test_owner_not_configured_is_503_and_ready_says_so(make_settings: Callable[..., Settings]) -> None:
    async with running(create_app(make_settings())) as client:
        for path in ("/github/repos", "/github/owner", "/github/repos/x"):
            assert assert_problem(await client.get(path), 503)["title"] == "GitHub owner not configured"
        ready = await client.get("/health/ready")
    assert ready.status_code == 503
    github = ready.json()["checks"]["github"]
    assert (github["status"], github["detail"]) == ("failing", "GitHub owner not configured (GITHUB_OWNER)")


async def test_owner_that_does_not_exist_is_502_naming_it(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin, GITHUB_OWNER="ghost-owner") as client:
        response = await client.get("/github/repos")
        ready = await client.get("/health/ready")
    assert "ghost-owner" in assert_problem(response, 502)["detail"]
    assert ready.status_code == 503 and "ghost-owner" in ready.json()["checks"]["github"]["detail"]


@pytest.mark.parametrize("failure", ["timeout", "500", "not json", "wrong shape", "reset", "429 retry-after"])
async def test_stale_copy_is_served_when_refresh_fails(standin: GitHubStandIn, github_client: OpenClient, failure: str) -> None:
    async with github_client(standin, GITHUB_CACHE_TTL="0") as client:
        good = await client.get("/github/repos")
        standin.scenario = fail_repos(FAILURES[failure][0])
        stale = await client.get("/github/repos")
        # The refresh runs in the background; readiness tells once it has failed.
        ready = await poll(
            lambda: client.get("/health/ready"), until=lambda r: "failed" in r.json()["checks"]["github"]["detail"]
        )
        again = await client.get("/github/repos")
    assert stale.status_code == 200 and stale.headers["x-cache"] == "stale"
    assert stale.content == good.content
    assert ready.status_code == 200 and "serving cached copies" in ready.json()["checks"]["github"]["detail"]
    assert again.status_code == 200 and again.headers["x-cache"] == "stale" and again.content == good.content


async def test_stale_copy_expires_after_stale_ttl(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin, GITHUB_CACHE_TTL="0", GITHUB_STALE_TTL="0.2") as client:
        assert (await client.get("/github/repos")).status_code == 200
        standin.scenario = fail_repos(FAILURES["500"][0])
        status = 200
        with anyio.fail_after(10):  # the stale copy may be served for 0.2 s: the bound only stops a hang
            while status == 200:
                await anyio.sleep(0.05)
                response = await client.get("/github/repos")
                status = response.status_code
    assert_problem(response, 502)


async def test_readiness_makes_no_upstream_call(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        for _ in range(5):
            ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["github"]["status"] == "ok"
    assert standin.calls == []


async def test_implausible_rate_limit_reset_is_capped_at_an_hour(standin: GitHubStandIn, github_client: OpenClient) -> None:
    standin.scenario = fail_repos(Reply(403, b"{}", {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "9999999999"}))
    async with github_client(standin) as client:
        response = await client.get("/github/repos")
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "3600"


async def test_owner_deleted_after_caching_is_502_not_500(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin, GITHUB_CACHE_TTL="0", GITHUB_STALE_TTL="0") as client:
        assert (await client.get("/github/repos")).status_code == 200
        standin.scenario = lambda path, headers: Reply(404, b'{"message": "Not Found"}')
        response = await client.get("/github/repos")
    assert "octo-dev" in assert_problem(response, 502)["detail"]


async def test_list_refresh_does_not_revalidate_the_owner_profile(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin, GITHUB_CACHE_TTL="0", GITHUB_STALE_TTL="0") as client:
        for _ in range(3):
            assert (await client.get("/github/repos")).status_code == 200
    assert len([c for c in standin.calls if c.path == "/users/octo-dev"]) == 1
    assert len(standin.calls_to("/users/octo-dev/repos")) == 3


# -- once a copy exists, no visitor waits on GitHub; one GITHUB_TIMEOUT per visitor ----------------


async def test_hanging_github_does_not_hold_up_a_stale_copy(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin, GITHUB_CACHE_TTL="0.3", GITHUB_TIMEOUT="3") as client:
        good = await client.get("/github/repos")
        standin.hold = threading.Event()  # GitHub now accepts calls and never answers them
        try:
            await anyio.sleep(0.4)  # the copy is older than the TTL now
            started = time.monotonic()
            responses = await gather(client.get("/github/repos") for _ in range(10))
            elapsed = time.monotonic() - started
            lists = lambda: len(standin.calls_to("/users/octo-dev/repos"))  # noqa: E731
            await eventually(lambda: lists() == 2, what="the background refresh")  # the refresh runs in the background …
            await anyio.sleep(0.2)
        finally:
            standin.hold.set()
    assert lists() == 2  # … once for all ten
    assert [r.status_code for r in responses] == [200] * 10
    assert {r.headers["x-cache"] for r in responses} == {"stale"} and {r.content for r in responses} == {good.content}
    # A bound at the deadline, not a speed: waiting for GitHub would take the whole GITHUB_TIMEOUT (3 s).
    assert elapsed < 3.0, f"answered in {elapsed:.2f} s: a stale copy must not wait for GitHub (GITHUB_TIMEOUT 3 s)"


def slowly(standin: GitHubStandIn, delays: dict[str, float]) -> Callable[[str, dict[str, str]], Reply | None]:
    """GitHub's normal answers, each path in `delays` held back that long."""

    def scenario(path: str, headers: dict[str, str]) -> Reply | None:
        for prefix, delay in delays.items():
            if path.split("?")[0] == prefix:
                reply = standin.answer(path, headers)
                reply.delay = delay
                return reply
        return None

    return scenario


@pytest.mark.parametrize("path", ["/github/repos", "/github/repos/project-001"])
async def test_cold_list_with_a_slow_owner_takes_one_timeout_not_two(
    standin: GitHubStandIn, github_client: OpenClient, path: str
) -> None:
    # The profile (needed once, for the owner's type) answers just inside GITHUB_TIMEOUT, the list not at all.
    # One timeout per visitor answers at 3 s; one per upstream call would take 2.4 + 3 = 5.4 s. The bound
    # sits between the two, with room for a loaded machine on either side.
    standin.scenario = slowly(standin, {"/users/octo-dev": 2.4, "/users/octo-dev/repos": 10})
    async with github_client(standin, GITHUB_TIMEOUT="3") as client:
        started = time.monotonic()
        response = await client.get(path)
        elapsed = time.monotonic() - started
    assert_problem(response, 504)
    assert elapsed < 4.5, f"answered after {elapsed:.2f} s: one GITHUB_TIMEOUT (3 s) per visitor, not one per upstream call"


def test_the_views_of_a_cached_entry_stay_within_their_byte_budget() -> None:
    """Views are keyed by the client's query: however many distinct ones arrive, an entry holds at most
    MAX_VIEW_BYTES_PER_ENTRY of them (encoded forms counted)."""
    from service.encoding import held_bytes
    from service.github.cache import MAX_VIEW_BYTES_PER_ENTRY, Entry

    entry = Entry(value=None, validators=None, validated_at=0.0, fresh_until=0.0)
    body = b"x" * 100_000
    for n in range(500):
        entry.view(("query", n), lambda: body)
        assert entry.view_bytes <= MAX_VIEW_BYTES_PER_ENTRY
        assert sum(held_bytes(view.body) for view in entry.views.values()) == entry.view_bytes
