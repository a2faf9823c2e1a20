"""GET /github/pinned and /github/languages: GitHub's GraphQL API (with a token) through the stand-in, which
executes the real queries against a schema subset written like GitHub's; the fallbacks from the cached
REST list without a token; failures, rate limits, webhooks and processes sharing one refresh."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from tests.github_standin import (
    GRAPHQL_RATE_LIMIT,
    LANGUAGE_COLORS,
    GitHubStandIn,
    Reply,
    delivery_headers,
    graphql_headers,
    poll,
    push_payload,
)
from tests.support import OpenClient, assert_problem, eventually, running, steady_traffic

pytestmark = pytest.mark.anyio

LIST = "/users/octo-dev/repos"
SECRET = "webhook-secret-0123456789abcdef"
METRICS_TOKEN = "metrics-token-0123456789abcdef"
REST_FIELDS = {
    "name", "full_name", "html_url", "description", "homepage", "language", "topics", "stargazers_count",
    "forks_count", "open_issues_count", "fork", "archived", "license", "default_branch", "created_at",
    "updated_at", "pushed_at",
}  # fmt: skip


def shown(standin: GitHubStandIn) -> list[dict[str, Any]]:
    """The repositories the showcase counts: neither forks nor archived."""
    return [r for r in standin.repos if not r["fork"] and not r["archived"]]


def expected_bytes(standin: GitHubStandIn) -> list[tuple[str, int]]:
    totals: dict[str, int] = {}
    for repo in shown(standin):
        for name, size in standin.languages[repo["name"]].items():
            totals[name] = totals.get(name, 0) + size
    return sorted(totals.items(), key=lambda item: (-item[1], item[0].lower()))


def graphql_reply(payload: object, **headers: str) -> Callable[[str, dict[str, str]], Reply | None]:
    """A scenario: GraphQL answers this 200 (REST answers as usual)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    reply = Reply(200, body, {"Content-Type": "application/json", **graphql_headers(4000), **headers})
    return lambda path, request_headers: reply if path == "/graphql" else None


# -- with a token: GraphQL ---------------------------------------------------------------------


@pytest.mark.parametrize("owner_type", ["User", "Organization"])
async def test_pinned_repositories_come_in_the_owners_order_under_rest_names(github_client: OpenClient, owner_type: str) -> None:
    with GitHubStandIn(owner_type=owner_type) as standin:
        standin.pinned = ["project-027", "project-002", "project-013"]
        async with github_client(standin) as client:
            response = await client.get("/github/pinned")
        calls = standin.graphql_calls()
    assert response.status_code == 200, response.text
    pinned = response.json()
    assert pinned["source"] == "pinned"
    assert [item["name"] for item in pinned["items"]] == ["project-027", "project-002", "project-013"]
    by_name = {r["name"]: r for r in standin.repos}
    for item in pinned["items"]:
        repo = by_name[item["name"]]
        assert set(item) == REST_FIELDS | {"languages"}
        assert {field: item[field] for field in REST_FIELDS - {"license"}} == {
            field: repo[field] for field in REST_FIELDS - {"license"}
        }
        assert item["license"] == (
            {"spdx_id": repo["license"]["spdx_id"], "name": repo["license"]["name"]} if repo["license"] else None
        )
        sizes = sorted(standin.languages[repo["name"]].items(), key=lambda item: -item[1])
        assert [(lang["name"], lang["bytes"], lang["color"]) for lang in item["languages"]] == [
            (name, size, LANGUAGE_COLORS[name]) for name, size in sizes
        ]
        assert not item["languages"] or math.isclose(sum(lang["share"] for lang in item["languages"]), 1.0)
    assert [call.operation for call in calls] == ["Pinned"]
    assert calls[0].headers["authorization"].startswith("Bearer ")


@pytest.mark.parametrize("owner_type", ["User", "Organization"])
async def test_languages_are_bytes_over_non_fork_non_archived_repositories_largest_first(
    github_client: OpenClient, owner_type: str
) -> None:
    with GitHubStandIn(owner_type=owner_type) as standin:
        async with github_client(standin) as client:
            response = await client.get("/github/languages")
        calls = standin.graphql_calls()
    assert response.status_code == 200, response.text
    languages = response.json()
    assert languages["source"] == "bytes"
    items = languages["items"]
    assert [(i["name"], i["bytes"]) for i in items] == expected_bytes(standin)
    assert all(set(i) == {"name", "color", "share", "bytes"} for i in items)
    assert {i["name"]: i["color"] for i in items} == {i["name"]: LANGUAGE_COLORS[i["name"]] for i in items}
    assert next(i for i in items if i["name"] == "Text")["color"] is None  # null where GitHub has no color
    assert math.isclose(sum(i["share"] for i in items), 1.0)
    assert [call.operation for call in calls] == ["Languages"] and not standin.calls_to(LIST)


async def test_languages_of_250_repositories_are_one_refresh_of_three_pages(github_client: OpenClient) -> None:
    with GitHubStandIn(count=250) as standin:
        async with github_client(standin) as client:
            first = await client.get("/github/languages")
            again = await client.get("/github/languages")
        pages = [json.loads(call.body)["variables"]["after"] for call in standin.graphql_calls("Languages")]
    assert first.status_code == 200 and again.headers["x-cache"] == "hit"
    assert pages == [None, "100", "200"]
    assert [(i["name"], i["bytes"]) for i in first.json()["items"]] == expected_bytes(standin)


async def test_nothing_pinned_falls_back_to_the_most_starred(standin: GitHubStandIn, github_client: OpenClient) -> None:
    standin.pinned = []
    async with github_client(standin) as client:
        response = await client.get("/github/pinned")
    assert response.status_code == 200 and response.json()["source"] == "top-starred"
    assert len(standin.graphql_calls("Pinned")) == 1 and len(standin.calls_to(LIST)) == 1


async def test_cached_like_every_github_answer(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        first = await client.get("/github/pinned")
        second = await client.get("/github/pinned")
        conditional = await client.get("/github/pinned", headers={"If-None-Match": first.headers["etag"]})
        languages = [await client.get("/github/languages") for _ in range(3)]
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.headers["cache-control"].startswith("public, max-age=") and "age" in second.headers
    assert second.headers["etag"] == first.headers["etag"] and conditional.status_code == 304
    assert [r.headers["x-cache"] for r in languages] == ["miss", "hit", "hit"]
    assert [c.operation for c in standin.graphql_calls()] == ["Pinned", "Languages"]


# -- without a token: the cached list, no GraphQL ------------------------------------------------


async def test_without_a_token_both_come_from_the_cached_list_and_graphql_is_never_called(
    standin: GitHubStandIn, github_client: OpenClient
) -> None:
    async with github_client(standin, GITHUB_TOKEN="") as client:
        repos = await client.get("/github/repos")
        pinned = await client.get("/github/pinned")
        languages = await client.get("/github/languages")
    assert repos.status_code == pinned.status_code == languages.status_code == 200
    top = sorted(shown(standin), key=lambda r: (-r["stargazers_count"], r["name"].lower()))[:6]
    assert pinned.json()["source"] == "top-starred"
    assert [item["name"] for item in pinned.json()["items"]] == [r["name"] for r in top]
    assert [item["languages"] for item in pinned.json()["items"]] == [
        [{"name": r["language"], "color": None, "share": 1.0}] if r["language"] else [] for r in top
    ]
    counts: dict[str, int] = {}
    for repo in shown(standin):
        if repo["language"]:
            counts[repo["language"]] = counts.get(repo["language"], 0) + 1
    assert languages.json()["source"] == "primary-language"
    assert [(i["name"], i["repositories"], i["color"]) for i in languages.json()["items"]] == [
        (name, count, None) for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0].lower()))
    ]
    assert math.isclose(sum(i["share"] for i in languages.json()["items"]), 1.0)
    assert pinned.headers["x-cache"] == languages.headers["x-cache"] == "hit"  # views of the list fetched for /github/repos
    assert not standin.graphql_calls() and len(standin.calls_to(LIST)) == 1


# -- GraphQL failures ----------------------------------------------------------------------------

FAILURES = {
    "errors in a 200": (
        {"data": {"repositoryOwner": None}, "errors": [{"type": "NOT_FOUND", "message": "Could not resolve to a User with the login of 'octo-dev'."}]},
        502,
    ),
    "a permission error beside data": (
        {"data": {"repositoryOwner": {"pinnedItems": {"nodes": []}}}, "errors": [{"type": "FORBIDDEN", "message": "Resource not accessible by integration"}]},
        502,
    ),
    "a body that is not JSON": (b"<html>unicorn</html>", 502),
    "JSON that is not the documented answer": ({"data": {"repositoryOwner": {"pinnedItems": {"nodes": [{"name": 5}]}}}}, 502),
    "neither data nor errors": ({}, 502),
}  # fmt: skip


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_graphql_failure_without_a_copy_is_a_problem(
    standin: GitHubStandIn, github_client: OpenClient, failure: str
) -> None:
    payload, status = FAILURES[failure]
    standin.scenario = graphql_reply(payload)
    async with github_client(standin) as client:
        problem = assert_problem(await client.get("/github/pinned"), status)
        ready = (await client.get("/health/ready")).json()["checks"]["github"]
    assert problem["type"].endswith("upstream-failed")
    assert "failed" in ready["detail"]


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_graphql_failure_serves_the_last_good_copy(
    standin: GitHubStandIn, github_client: OpenClient, failure: str
) -> None:
    async with github_client(standin, GITHUB_CACHE_TTL="0.2") as client:
        good = await client.get("/github/pinned")
        standin.scenario = graphql_reply(FAILURES[failure][0])
        await anyio.sleep(0.3)
        stale = await client.get("/github/pinned")  # answered at once; the refresh fails in the background
        await eventually(lambda: len(standin.graphql_calls()) == 2, what="the failed refresh")
        still = await client.get("/github/pinned")
    assert good.status_code == stale.status_code == still.status_code == 200
    assert stale.headers["x-cache"] == still.headers["x-cache"] == "stale"
    assert still.content == good.content


async def test_rate_limited_graphql_is_503_with_retry_after_and_no_call_until_the_reset(
    standin: GitHubStandIn, github_client: OpenClient
) -> None:
    reset = int(time.time()) + 600
    payload = {"errors": [{"type": "RATE_LIMITED", "message": "API rate limit exceeded for user ID 583231."}]}
    standin.scenario = graphql_reply(payload, **{"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})
    async with github_client(standin) as client:
        first = await client.get("/github/pinned")
        second = await client.get("/github/languages")
        ready = (await client.get("/health/ready")).json()["checks"]["github"]
    problem = assert_problem(first, 503)
    assert problem["type"].endswith("upstream-rate-limited")
    assert 590 <= int(first.headers["retry-after"]) <= 600
    assert_problem(second, 503)
    assert len(standin.graphql_calls()) == 1, "no GraphQL call before the reset"
    assert ready["rate_limited_until"].endswith("Z")


async def test_remaining_zero_without_data_is_rate_limited(standin: GitHubStandIn, github_client: OpenClient) -> None:
    standin.scenario = graphql_reply(
        {"errors": [{"message": "You have exceeded a secondary rate limit."}]}, **{"x-ratelimit-remaining": "0"}
    )
    async with github_client(standin) as client:
        response = await client.get("/github/languages")
    assert_problem(response, 503)
    assert "retry-after" in response.headers


async def test_graphql_403_secondary_rate_limit_is_503(standin: GitHubStandIn, github_client: OpenClient) -> None:
    reply = Reply(403, b'{"message": "You have exceeded a secondary rate limit."}', {"retry-after": "60"})
    standin.scenario = lambda path, headers: reply if path == "/graphql" else None
    async with github_client(standin) as client:
        response = await client.get("/github/pinned")
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "60"


async def test_the_graphql_rate_limit_is_in_metrics_by_resource(
    make_settings: Callable[..., Settings], standin: GitHubStandIn, github_client: OpenClient
) -> None:
    async with github_client(standin, METRICS_TOKEN=METRICS_TOKEN) as client:
        await client.get("/github/repos")
        await client.get("/github/pinned")
        await client.get("/github/languages")
        scrape = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    remaining = {
        sample.labels["resource"]: sample.value
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
        if sample.name == "website_api_github_ratelimit_remaining"
    }
    assert remaining["graphql"] == standin.graphql_points_left == GRAPHQL_RATE_LIMIT - 2


# -- webhooks, readiness, processes ----------------------------------------------------------------


@pytest.mark.parametrize("event", ["push", "star", "repository", "public"])
async def test_deliveries_that_change_them_refresh_pinned_and_languages(
    standin: GitHubStandIn, github_client: OpenClient, event: str
) -> None:
    pin = standin.pinned[0]
    async with github_client(standin, GITHUB_WEBHOOK_SECRET=SECRET) as client:
        await client.get("/github/pinned")
        await client.get("/github/languages")
        next(r for r in standin.repos if r["name"] == pin)["stargazers_count"] = 9999
        standin.languages[pin]["Text"] = 10**9  # from the smallest to the largest
        body = push_payload("octo-dev", pin)
        for name in (event, "release"):  # a release changes neither
            headers = delivery_headers(SECRET, body, event=name, delivery=f"delivery-{name}")
            assert (await client.post("/github/webhook", content=body, headers=headers)).status_code == 202
        pinned = await poll(
            lambda: client.get("/github/pinned"), until=lambda r: r.json()["items"][0]["stargazers_count"] == 9999
        )
        languages = await poll(lambda: client.get("/github/languages"), until=lambda r: r.json()["items"][0]["name"] == "Text")
        await anyio.sleep(0.3)  # nothing more follows
    assert pinned.status_code == 200 and languages.json()["items"][0]["bytes"] >= 10**9
    assert sorted(str(c.operation) for c in standin.graphql_calls()) == ["Languages", "Languages", "Pinned", "Pinned"]


async def test_readiness_knows_the_last_refresh_of_each(standin: GitHubStandIn, github_client: OpenClient) -> None:
    async with github_client(standin) as client:
        before = (await client.get("/health/ready")).json()["checks"]["github"]
        await client.get("/github/pinned")
        await client.get("/github/languages")
        after = (await client.get("/health/ready")).json()["checks"]["github"]
    assert "last_pinned_refresh" not in before and "last_languages_refresh" not in before
    assert after["last_pinned_refresh"].endswith("Z") and after["last_languages_refresh"].endswith("Z")


async def test_two_apps_on_one_database_make_one_graphql_call_per_ttl_between_them(
    make_settings: Callable[..., Settings], standin: GitHubStandIn
) -> None:
    ttl, seconds = 0.5, 2.5
    env = {"GITHUB_OWNER": "octo-dev", "GITHUB_API_URL": standin.url, "GITHUB_TOKEN": "ghp_x", "GITHUB_CACHE_TTL": str(ttl)}
    async with running(create_app(make_settings(**env))) as first, running(create_app(make_settings(**env))) as second:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < seconds:
            for client in (first, second):
                for path in ("/github/pinned", "/github/languages"):
                    assert (await client.get(path)).status_code == 200
                    sent += 1
            await anyio.sleep(0.02)
        took = time.monotonic() - started
    periods = math.ceil(took / ttl)
    for operation in ("Pinned", "Languages"):
        calls = len(standin.graphql_calls(operation))
        assert 1 <= calls <= periods + 1, f"{calls} {operation} queries over {periods} TTL periods ({sent} requests)"


@pytest.mark.slow
def test_two_server_processes_make_one_graphql_call_per_ttl_between_them(deployment, standin) -> None:  # type: ignore[no-untyped-def]
    ttl, seconds = 2.0, 10.0
    settings = {"GITHUB_CACHE_TTL": str(ttl), "GITHUB_TOKEN": "ghp_standin", "WEB_CONCURRENCY": "1"}
    paths = ["/github/pinned", "/github/languages", "/github/repos"]
    with deployment(**settings) as (first, _, _), deployment(**settings) as (second, _, _):
        sent, took = steady_traffic([first, second], seconds, paths, at_least=150)
    periods = math.ceil(took / ttl)
    counts = {operation: len(standin.graphql_calls(operation)) for operation in ("Pinned", "Languages")}
    print(f"two processes, {sent} requests over {took:.1f} s (TTL {ttl:g} s): {counts}, {len(standin.calls_to(LIST))} list calls")
    assert all(1 <= count <= periods + 1 for count in counts.values()), f"{counts} over {periods} TTL periods"


@pytest.mark.slow
def test_four_processes_call_github_as_often_as_one_under_the_same_traffic(deployment, standin) -> None:  # type: ignore[no-untyped-def]
    """The measurement of issue 27: the same traffic to one process, then to four (two servers, two workers each)."""
    ttl, seconds = 2.0, 12.0
    paths = ["/github/pinned", "/github/languages", "/github/repos", "/github/owner", "/github/repos/project-001"]
    settings = {"GITHUB_CACHE_TTL": str(ttl), "GITHUB_TOKEN": "ghp_standin"}

    def calls() -> dict[str, int]:
        return {
            "pinned": len(standin.graphql_calls("Pinned")),
            "languages": len(standin.graphql_calls("Languages")),
            "list": len(standin.calls_to(LIST)),
            "owner": len([c for c in standin.calls if c.path == "/users/octo-dev"]),
        }

    with deployment(**settings, WEB_CONCURRENCY="1") as (only, _, _):
        one_sent, one_took = steady_traffic([only], seconds, paths, at_least=200)
    one = calls()
    standin.calls.clear()
    with (
        deployment(**settings, WEB_CONCURRENCY="2") as (first, _, _),
        deployment(**settings, WEB_CONCURRENCY="2") as (second, _, _),
    ):
        four_sent, four_took = steady_traffic([first, second], seconds, paths, at_least=200)
    four = calls()
    print(f"one process: {one_sent} requests in {one_took:.1f} s -> upstream calls {one} (total {sum(one.values())})")
    print(f"four processes: {four_sent} requests in {four_took:.1f} s -> upstream calls {four} (total {sum(four.values())})")
    for key in ("pinned", "languages", "list"):
        assert four[key] <= math.ceil(four_took / ttl) + 1, f"{key}: {four[key]} calls by four processes"
        assert four[key] <= one[key] + 2, f"{key}: four processes {four[key]}, one process {one[key]}"
