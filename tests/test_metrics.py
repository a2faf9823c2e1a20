"""GET /metrics: protected, in the Prometheus text format, with bounded series, and right across workers."""

from __future__ import annotations

import functools
import os
import random
import re
import signal
import string
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.announcements.access import Announcements
from service.announcements.models import AnnouncementPage, ListQuery
from service.app import create_app
from service.settings import Settings
from tests.github_standin import GitHubStandIn, Reply
from tests.support import procfile_server, running

pytestmark = pytest.mark.anyio

TOKEN = "metrics-token-0123456789abcdef"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by name and sorted labels (parsing also proves the format)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics", headers=SCRAPE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert response.headers["cache-control"] == "no-store"
    return parse(response.text)


async def test_metrics_are_off_without_a_token_404_problem(make_settings: Callable[..., Settings]) -> None:
    async with running(create_app(make_settings())) as client:
        response = await client.get("/metrics", headers=SCRAPE)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "METRICS_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
async def test_missing_or_wrong_token_is_401_problem(make_settings: Callable[..., Settings], authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with running(create_app(make_settings(METRICS_TOKEN=TOKEN))) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text


async def test_requests_are_counted_by_route_template_method_and_status(make_settings: Callable[..., Settings]) -> None:
    async with running(create_app(make_settings(METRICS_TOKEN=TOKEN))) as client:
        before = await scrape(client)
        for _ in range(3):
            await client.get("/health")
        await client.head("/health")
        await client.get("/announcements/12345")  # 404 from a matched route
        await client.get("/announcements/not-a-number")
        await client.request("BREW", "/health")  # an unknown method: one "other" label, never the method itself
        after = await scrape(client)
    counter = "website_api_http_requests_total"

    def delta(**labels: str) -> float:
        return value(after, counter, **labels) - value(before, counter, **labels)

    assert delta(method="GET", route="/health", status="200") == 3
    assert delta(method="HEAD", route="/health", status="200") == 1
    assert delta(method="GET", route="/announcements/{id}", status="404") == 1  # as openapi.yaml names it
    assert delta(method="GET", route=metrics.UNMATCHED, status="404") == 1  # not an {id:int}: no route matched
    assert delta(method="other", route="/health", status="405") == 1
    histogram = "website_api_http_request_duration_seconds_count"
    assert value(after, histogram, method="GET", route="/health") - value(before, histogram, method="GET", route="/health") == 3
    assert not any("BREW" in str(key) or "not-a-number" in str(key) for key in after)


async def test_a_thousand_random_paths_add_only_the_unmatched_series(make_settings: Callable[..., Settings]) -> None:
    rng = random.Random(12)
    async with running(create_app(make_settings(METRICS_TOKEN=TOKEN))) as client:
        await client.get("/nope")  # the "unmatched" series exist from here on
        await scrape(client)  # and so do those of /metrics itself
        before = await scrape(client)
        alphabet = string.ascii_letters + string.digits + "{}%._-"
        for _ in range(1000):
            segments = ("".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 4)))
            await client.get("/" + "/".join(segments))
        after = await scrape(client)
    assert after.keys() == before.keys()
    unmatched = {"method": "GET", "route": metrics.UNMATCHED, "status": "404"}
    assert (
        value(after, "website_api_http_requests_total", **unmatched)
        - value(before, "website_api_http_requests_total", **unmatched)
        >= 1000
    )


OUTCOMES = ("200", "304", "404", "timeout", "error", "rate_limited")


async def test_github_calls_by_outcome_and_the_rate_limit_left(
    make_settings: Callable[..., Settings], standin: GitHubStandIn
) -> None:
    reply_headers = {"x-ratelimit-remaining": "4321", "x-ratelimit-resource": "core"}
    original = standin.answer
    standin.answer = lambda path, headers: _with_headers(original(path, headers), reply_headers)  # type: ignore[method-assign]
    # No fresh or stale window: every request asks GitHub, and sees what it answered.
    settings = make_settings(METRICS_TOKEN=TOKEN, GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url, GITHUB_TIMEOUT="1",
                             GITHUB_CACHE_TTL="0", GITHUB_STALE_TTL="0")  # fmt: skip
    reset = str(int(time.time()) + 600)
    name = "website_api_github_requests_total"
    steps: list[tuple[Reply | None, int]] = [
        (None, 200),  # 200
        (None, 200),  # 304: the profile is revalidated
        (Reply(delay=3), 504),  # timeout: longer than GITHUB_TIMEOUT
        (Reply(500, b"oops"), 502),  # error
        (Reply(404, b'{"message": "Not Found"}'), 502),  # 404: the owner is gone
        (Reply(403, b"{}", {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}), 503),  # rate_limited
    ]
    app = create_app(settings)
    async with running(app) as client:
        before = await scrape(client)
        for n, (reply, status) in enumerate(steps):
            standin.scenario = (lambda path, headers, reply=reply: reply) if reply is not None else None
            assert ((await client.get("/github/owner")).status_code, n) == (status, n)
            # The refresh may outlive the visitor's wait by a moment (the 504): the next step must not join it.
            for _ in range(100):
                if not app.state.github.cache._refreshing:
                    break
                await anyio.sleep(0.05)
            if n == 0:
                assert value(await scrape(client), "website_api_github_ratelimit_remaining", resource="core") == 4321
        after = await scrape(client)
    outcomes = {o: value(after, name, outcome=o) - value(before, name, outcome=o) for o in OUTCOMES}
    assert outcomes == {"200": 1, "304": 1, "404": 1, "timeout": 1, "error": 1, "rate_limited": 1}
    assert value(after, "website_api_github_ratelimit_remaining", resource="core") == 0  # the rate-limited answer came last


def _with_headers(reply: Reply, headers: dict[str, str]) -> Reply:
    reply.headers = {**reply.headers, **headers}
    return reply


async def test_cache_lookups_by_resource_and_state(
    make_settings: Callable[..., Settings], standin: GitHubStandIn, tmp_path: Path
) -> None:
    name = "website_api_cache_lookups_total"

    def states(
        before: dict[tuple[str, frozenset[tuple[str, str]]], float], after: dict[tuple[str, frozenset[tuple[str, str]]], float]
    ) -> dict[str, float]:
        return {s: value(after, name, resource="repositories", state=s) - value(before, name, resource="repositories", state=s)
                for s in ("hit", "miss", "revalidated", "stale")}  # fmt: skip

    base = {"METRICS_TOKEN": TOKEN, "GITHUB_OWNER": standin.owner, "GITHUB_API_URL": standin.url}
    # An expired copy within GITHUB_STALE_TTL is served at once ("stale") while it is refreshed behind it.
    # The TTL is wide enough that the second read, right after the first, is surely a hit on a loaded machine.
    async with running(create_app(make_settings(**base, GITHUB_CACHE_TTL="2"))) as client:
        before = await scrape(client)
        await client.get("/github/repos")  # miss (and an owner miss behind it)
        await client.get("/github/repos")  # hit
        await anyio.sleep(2.1)  # past GITHUB_CACHE_TTL
        await client.get("/github/repos")  # stale
        after = await scrape(client)
    assert states(before, after) == {"hit": 1, "miss": 1, "revalidated": 0, "stale": 1}
    assert value(after, name, resource="owner", state="miss") - value(before, name, resource="owner", state="miss") == 1
    # With no stale window the visitor waits for the revalidation: GitHub answers 304. (A database of its
    # own: the first app's copy in the shared tier would be adopted, not missed.)
    fresh = {"DATABASE_URL": f"sqlite:///{tmp_path}/second.db"}
    async with running(create_app(make_settings(**base, **fresh, GITHUB_CACHE_TTL="0", GITHUB_STALE_TTL="0"))) as client:
        before = await scrape(client)
        await client.get("/github/repos")  # miss
        await client.get("/github/repos")  # revalidated
        after = await scrape(client)
    assert states(before, after) == {"hit": 0, "miss": 1, "revalidated": 1, "stale": 0}


class GatedAnnouncements(Announcements):
    """Store reads that hold their pool slot until the test opens the gate, so the next callers must wait."""

    gate = threading.Event()

    async def page(self, query: ListQuery, *, include_all: bool, now: datetime | None = None) -> AnnouncementPage:
        await self.call(self.gate.wait, 10)
        return AnnouncementPage([], None)


async def test_store_calls_are_timed_and_waits_for_a_pool_slot_counted(make_settings: Callable[..., Settings]) -> None:
    admin = "admin-token-for-the-metrics-tests"
    settings = make_settings(METRICS_TOKEN=TOKEN, ADMIN_TOKEN=admin, DATABASE_POOL_SIZE="1")
    GatedAnnouncements.gate.clear()
    app = create_app(settings, announcements_class=GatedAnnouncements)
    held = 0.2
    async with running(app) as client:
        before = await scrape(client)
        async with anyio.create_task_group() as group:
            for _ in range(3):  # admin reads: public ones may be answered from the read cache
                group.start_soon(
                    functools.partial(client.get, "/announcements?status=all", headers={"Authorization": f"Bearer {admin}"})
                )
            with anyio.fail_after(10):  # the first holds the only slot, two wait (a bound against hanging)
                while value(during := await scrape(client), "website_api_store_calls_waiting") < 2:
                    await anyio.sleep(0.01)
            await anyio.sleep(held)
            GatedAnnouncements.gate.set()
        after = await scrape(client)
    assert value(during, "website_api_store_calls_waiting") == 2
    assert value(after, "website_api_store_calls_waiting") == 0
    count = "website_api_store_call_duration_seconds_count"
    assert value(after, count, operation="wait") - value(before, count, operation="wait") == 3
    # Once in, the two waiters ran at once (the gate was open): only counting their wait for the slot keeps
    # all three calls out of the buckets below the time the slot was held.
    quick = "website_api_store_call_duration_seconds_bucket"
    assert value(after, quick, operation="wait", le="0.1") - value(before, quick, operation="wait", le="0.1") == 0
    assert value(after, quick, operation="wait", le="+Inf") - value(before, quick, operation="wait", le="+Inf") == 3


async def test_webhook_deliveries_are_counted_with_bounded_labels(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(METRICS_TOKEN=TOKEN))
    async with running(app) as client:
        telemetry = app.state.webhook.telemetry
        telemetry.webhook_delivery("push", "accepted", verified=True)
        telemetry.webhook_delivery("push", "accepted", verified=True)
        telemetry.webhook_delivery("Evil Event {name}", "bad signature!", verified=True)
        for n in range(metrics.MAX_WEBHOOK_EVENTS + 10):
            telemetry.webhook_delivery(f"made_up_{n}", "ignored", verified=True)
        for n in range(100):  # unsigned requests name no event: they cannot spend the budget
            telemetry.webhook_delivery(f"junk{n}", "unauthorized", verified=False)
        samples = await scrape(client)
    name = "website_api_webhook_deliveries_total"
    assert value(samples, name, event="push", outcome="accepted") == 2
    assert value(samples, name, event="other", outcome="other") == 1
    events = {dict(labels)["event"] for (sample, labels) in samples if sample == name}
    assert len(events) <= metrics.MAX_WEBHOOK_EVENTS + 2
    assert value(samples, name, event="unverified", outcome="unauthorized") == 100
    assert not any(event.startswith("junk") for event in events)


async def test_no_secret_in_any_metric(make_settings: Callable[..., Settings], standin: GitHubStandIn) -> None:
    admin, github_token = "admin-SECRET-0123456789abcdef", "ghp_metricsSECRET0123456789"
    settings = make_settings(METRICS_TOKEN=TOKEN, ADMIN_TOKEN=admin, GITHUB_TOKEN=github_token, GITHUB_OWNER=standin.owner,
                             GITHUB_API_URL=standin.url)  # fmt: skip
    async with running(create_app(settings)) as client:
        await client.get("/github/repos")
        await client.post("/announcements", json={"title": "t", "body": "b"}, headers={"Authorization": f"Bearer {admin}"})
        await client.get(f"/{admin}/{TOKEN}", headers={"Authorization": f"Bearer {github_token}"})
        text = (await client.get("/metrics", headers=SCRAPE)).text
    for secret in (admin, github_token, TOKEN):
        assert secret not in text


async def test_recording_is_off_in_an_app_without_a_token(make_settings: Callable[..., Settings]) -> None:
    """Without METRICS_TOKEN the app builds no series at all (prometheus_client is not even asked), and its
    /metrics is off; tests/test_middleware.py runs apps with and without metrics side by side."""
    app = create_app(make_settings())
    async with running(app) as client:
        await client.get("/health")
        app.state.webhook.telemetry.webhook_delivery("push", "accepted", verified=True)
        assert app.state.webhook.telemetry.series is None
        assert (await client.get("/metrics", headers=SCRAPE)).status_code == 404


# -- a real server with two workers --------------------------------------------------------


def _scrape_sync(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", headers=SCRAPE, timeout=10)
    assert response.status_code == 200
    return parse(response.text)


def _served_by(log: Path, path: str) -> dict[int, int]:
    """Requests for `path` per worker pid, from the access lines."""
    import json

    counts: dict[int, int] = {}
    for raw in log.read_text().splitlines():
        if raw.startswith("{") and f'"path":"{path}"' in raw:
            line = json.loads(raw)
            counts[line["pid"]] = counts.get(line["pid"], 0) + 1
    return counts


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_workers_one_scrape_sums_both_and_a_killed_worker_never_lowers_the_totals(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
        "WEB_CONCURRENCY": "2",
        "METRICS_TOKEN": TOKEN,
        "ACCESS_LOG": "true",
    }
    log = tmp_path / "server.log"
    route = ("website_api_http_requests_total", (("method", "GET"), ("route", "/openapi.json"), ("status", "200")))
    with procfile_server(env, cwd=tmp_path, log=log) as (url, _):
        n = 0
        while n < 60 or len(_served_by(log, "/openapi.json")) < 2:  # a new connection each: both workers serve
            assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200
            n += 1
            assert n < 2000, "the requests never reached both workers"
        _wait_for(lambda: _scrape_sync(url).get(route, 0.0) == n, 5, "both workers' counts")  # written within 50 ms
        scrapes = [_scrape_sync(url).get(route, 0.0) for _ in range(6)]  # answered by either worker
        assert scrapes == [n] * 6

        victim = min(_served_by(log, "/openapi.json"))
        survivors = set(_served_by(log, "/openapi.json")) - {victim}
        os.kill(victim, signal.SIGKILL)
        totals: list[float] = []
        stop = threading.Event()

        def keep_scraping() -> None:
            while not stop.is_set():
                try:
                    totals.append(_scrape_sync(url).get(route, 0.0))
                except httpx.HTTPError:
                    pass  # the connection landed on the dying worker
                time.sleep(0.02)

        scraper = threading.Thread(target=keep_scraping)
        scraper.start()
        try:
            m = 0
            while not set(_served_by(log, "/openapi.json")) - survivors - {victim}:  # until the replacement served some
                try:
                    response = httpx.get(f"{url}/openapi.json", timeout=10)
                except httpx.HTTPError:
                    continue  # accepted by the killed worker before it died: never answered, never counted
                assert response.status_code == 200
                m += 1
                assert m < 5000, "no replacement worker served"
                time.sleep(0.01)
        finally:
            stop.set()
            scraper.join(timeout=20)
        _wait_for(lambda: _scrape_sync(url).get(route, 0.0) == n + m, 5, "the final total")
        final = _scrape_sync(url)
    assert totals and all(later >= earlier for earlier, later in zip(totals, totals[1:])), totals
    assert min(totals) >= n
    pids = {int(dict(labels)["pid"]) for (name, labels) in final if name == "process_resident_memory_bytes"}
    assert victim not in pids and len(pids) == 2, "process metrics are those of the two live workers"


@pytest.mark.slow
def test_the_metrics_directory_is_emptied_when_the_server_starts(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"left over from an earlier run")
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with procfile_server(env, cwd=tmp_path) as (url, _):
        assert not (directory / "counter_1.db").exists()
        samples = _scrape_sync(url)
        assert any(re.fullmatch(r"counter_\d+\.db", p.name) for p in directory.iterdir())
    health = ("website_api_http_requests_total", (("method", "GET"), ("route", "/health"), ("status", "200")))
    assert samples[health] >= 1


def test_check_config_masks_the_metrics_token() -> None:
    from service.settings import load_settings

    view = load_settings({"METRICS_TOKEN": TOKEN}).public_view()
    assert view["METRICS_TOKEN"] == "***"
    assert TOKEN not in str(view)
