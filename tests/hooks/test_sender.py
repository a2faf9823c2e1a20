"""Deploy hooks end to end in one process: writes through the API, a real loopback receiver, both databases."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.database import open_database
from service.hooks.outbox import DeployOutbox, OutboxStatus, Reason, Target
from service.hooks.sender import HookSender, build_hook_client
from tests.hook_receiver import HookReceiver
from tests.hooks.conftest import ADMIN, HOOK_SECRET, OpenHooked, rows
from tests.support import eventually, migrated

pytestmark = pytest.mark.anyio

METRICS_TOKEN = "metrics-token-0123456789abcdef"


async def test_three_writes_within_the_window_make_one_signed_post(hooked: OpenHooked, receiver: HookReceiver) -> None:
    async with hooked(receiver, DEPLOY_HOOK_DEBOUNCE="2") as api:
        first = (await api.post("/announcements", json={"title": "One", "body": "a"}, headers=ADMIN)).json()
        await api.patch(f"/announcements/{first['id']}", json={"title": "One, again"}, headers=ADMIN)
        second = (await api.post("/announcements", json={"title": "Two", "body": "b"}, headers=ADMIN)).json()
        await eventually(lambda: receiver.received(), timeout=10, what="a POST")
        await asyncio.sleep(2.5)  # a second POST would have come by now
    (hit,) = receiver.received()
    assert hit.signed_with(HOOK_SECRET)
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["user-agent"].startswith("website-api-deploy-hook/")
    payload = hit.payload
    assert hit.headers["x-hook-delivery"] == payload["id"]
    assert [(r["kind"], r["id"]) for r in payload["reasons"]] == [
        ("announcement.published", first["id"]),
        ("announcement.updated", first["id"]),
        ("announcement.published", second["id"]),
    ]
    assert payload["reasons"][1]["slug"] == first["slug"]
    assert payload["omitted_reasons"] == 0
    first_change = datetime.fromisoformat(payload["first_change_at"])
    sent = datetime.fromisoformat(payload["sent_at"])
    assert timedelta(seconds=2) <= sent - first_change < timedelta(seconds=5), "sent once the window was over"


async def test_writes_that_stay_off_the_site_send_nothing(hooked: OpenHooked, receiver: HookReceiver, database_url: str) -> None:
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    async with hooked(receiver, DEPLOY_HOOK_DEBOUNCE="0") as api:
        draft = (
            await api.post("/announcements", json={"title": "Soon", "body": "a", "published_at": later}, headers=ADMIN)
        ).json()
        await api.patch(f"/announcements/{draft['id']}", json={"body": "edited while scheduled"}, headers=ADMIN)
        await api.delete(f"/announcements/{draft['id']}", headers=ADMIN)
        refused = await api.post(
            "/announcements", json={"title": "Bad", "body": "b", "expires_at": "2000-01-01T00:00:00Z"}, headers=ADMIN
        )
        assert refused.status_code == 422
        await asyncio.sleep(2.5)  # two ticks of the sender
    assert receiver.received() == []
    assert rows(database_url, "SELECT kind FROM deploy_hook_changes") == []


async def test_public_changes_are_named_by_what_happened(hooked: OpenHooked, receiver: HookReceiver) -> None:
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    async with hooked(receiver, DEPLOY_HOOK_DEBOUNCE="1") as api:
        one = (await api.post("/announcements", json={"title": "One", "body": "a"}, headers=ADMIN)).json()
        two = (await api.post("/announcements", json={"title": "Two", "body": "b"}, headers=ADMIN)).json()
        await api.patch(f"/announcements/{one['id']}", json={"published_at": later}, headers=ADMIN)  # off the site until then
        await api.delete(f"/announcements/{two['id']}", headers=ADMIN)
        await eventually(lambda: receiver.received(), timeout=10, what="a POST")
    kinds = [(r["kind"], r["id"]) for r in receiver.received()[0].payload["reasons"]]
    assert kinds == [
        ("announcement.published", one["id"]),
        ("announcement.published", two["id"]),
        ("announcement.unpublished", one["id"]),
        ("announcement.deleted", two["id"]),
    ]


async def test_a_receiver_that_fails_twice_gets_the_third_try(hooked: OpenHooked) -> None:
    with HookReceiver(500, 503) as receiver:
        async with hooked(receiver, DEPLOY_HOOK_DEBOUNCE="0", METRICS_TOKEN=METRICS_TOKEN) as api:
            await api.post("/announcements", json={"title": "One", "body": "a"}, headers=ADMIN)
            await eventually(lambda: len(receiver.received()) == 2, timeout=10, what="two failed tries")
            ready = (await api.get("/health/ready")).json()["checks"]["deploy_hooks"]
            assert ready["status"] == "ok" and ready["pending"] == 1 and ready["retrying"] == 1
            assert "HTTP 503" in ready["detail"] and "5c23354f" not in ready["detail"]
            await eventually(lambda: len(receiver.received()) == 3, timeout=15, what="the third try")
            metrics = await _metrics_once_delivered(api)
    first, second, third = receiver.received()
    assert first.payload["id"] == second.payload["id"] == third.payload["id"], "the same delivery, tried again"
    assert second.at - first.at >= 2 - 0.1 and third.at - second.at >= 4 - 0.1, "2 s, then 4 s between tries"
    assert 'website_api_deploy_hook_deliveries_total{outcome="retried"} 2.0' in metrics
    assert 'website_api_deploy_hook_deliveries_total{outcome="delivered"} 1.0' in metrics


async def _metrics_once_delivered(api: httpx.AsyncClient) -> str:
    """/metrics once the delivery is written back as delivered (just after the receiver answered)."""
    deadline = time.monotonic() + 5
    while True:
        ready = (await api.get("/health/ready")).json()["checks"]["deploy_hooks"]
        if ready.get("pending", 0) == 0 and "last_delivered_at" in ready:
            break
        assert time.monotonic() < deadline, f"still not delivered: {ready}"
        await asyncio.sleep(0.05)
    response = await api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    return response.text


async def test_retry_after_is_honoured(hooked: OpenHooked) -> None:
    with HookReceiver((429, {"Retry-After": "4"})) as receiver:
        async with hooked(receiver, DEPLOY_HOOK_DEBOUNCE="0") as api:
            await api.post("/announcements", json={"title": "One", "body": "a"}, headers=ADMIN)
            await eventually(lambda: len(receiver.received()) == 2, timeout=15, what="the second try")
    first, second = receiver.received()
    assert second.at - first.at >= 4 - 0.1, "not before Retry-After"


async def test_a_404_is_given_up_at_once_and_logged_by_host_only(
    hooked: OpenHooked, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with HookReceiver(404) as receiver:
        async with hooked(receiver, DEPLOY_HOOK_DEBOUNCE="0") as api:
            await api.post("/announcements", json={"title": "One", "body": "a"}, headers=ADMIN)
            await eventually(lambda: receiver.received(), timeout=10, what="a POST")
            await eventually(
                lambda: rows(database_url, "SELECT state FROM deploy_hook_deliveries") == [("failed",)],
                timeout=5,
                what="the delivery given up",
                every=0.2,
            )
            await asyncio.sleep(3)  # no second try comes
            ready = (await api.get("/health/ready")).json()["checks"]["deploy_hooks"]
    assert len(receiver.received()) == 1
    assert ready["failed_last_24h"] == 1 and ready["status"] == "ok"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "service.hooks"]
    message = warning.getMessage()
    assert "given up" in message and "127.0.0.1" in message and "HTTP 404" in message
    # httpx's own INFO line names the URL; the service's logging configuration keeps httpx at WARNING
    # (tests/hooks/test_processes.py reads a real server's log for it).
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name != "httpx")
    assert "5c23354f454e1350f8543e78" not in logged and "secret-title" not in logged and HOOK_SECRET not in logged


async def test_without_deploy_hook_urls_nothing_is_recorded(hooked: OpenHooked, database_url: str) -> None:
    async with hooked(None) as api:
        created = (await api.post("/announcements", json={"title": "One", "body": "a"}, headers=ADMIN)).json()
        await api.patch(f"/announcements/{created['id']}", json={"title": "Changed"}, headers=ADMIN)
        await api.delete(f"/announcements/{created['id']}", headers=ADMIN)
        checks = (await api.get("/health/ready")).json()["checks"]
    assert "deploy_hooks" not in checks
    assert rows(database_url, "SELECT COUNT(*) FROM deploy_hook_changes") == [(0,)]
    assert rows(database_url, "SELECT COUNT(*) FROM deploy_hook_deliveries") == [(0,)]


async def test_a_scheduled_announcement_is_announced_when_its_time_comes(hooked: OpenHooked, receiver: HookReceiver) -> None:
    at = datetime.now(UTC) + timedelta(seconds=2)
    async with hooked(receiver, DEPLOY_HOOK_DEBOUNCE="1") as api:
        created = await api.post(
            "/announcements", json={"title": "Later", "body": "a", "published_at": at.isoformat()}, headers=ADMIN
        )
        await eventually(lambda: receiver.received(), timeout=2 + 1 + 5, what="the scheduled announcement's POST")
    (reason,) = receiver.received()[0].payload["reasons"]
    assert reason == {"kind": "announcement.published", "id": created.json()["id"], "slug": "later", "at": reason["at"]}
    assert datetime.fromisoformat(reason["at"]) == at.replace(microsecond=at.microsecond)


async def test_a_receiver_that_does_not_answer_is_tried_again_later(database_url: str) -> None:
    database = open_database(migrated(database_url), pool_size=2)
    database.open()
    outbox = DeployOutbox(database)
    with HookReceiver() as receiver:
        receiver.delay = 3
        with database.transaction(write=True) as conn:
            outbox.record(conn, Reason(kind="announcement.published", id=1, at=datetime.now(UTC)))
        async with build_hook_client() as http:
            sender = HookSender(outbox, targets=[Target.of(receiver.url)], secret=None, debounce=0, http=http, send_timeout=0.5)
            started = time.monotonic()
            tried = await sender.send_due_once()
            took = time.monotonic() - started
            await sender.stop()
    database.close()
    assert tried is not None and [(outcome, detail) for _, outcome, detail in tried] == [("retry", "no answer within 0.5 s")]
    assert took < 2.5, "the whole POST is bounded, not each of its phases"


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("99999999999999999", ("give_up", "HTTP 503")),  # believed up to a day: past the 24 hours of tries
        ("\u00b2", ("retry", "HTTP 503")),  # a digit to str.isdigit(), not to Retry-After: ignored, the back-off applies
        ("Sun, 06 Nov 1994 08:49:37 -0000", ("retry", "HTTP 503")),  # a date in the past, zone unknown: the back-off
    ],
)
async def test_a_retry_after_of_any_form_ends_in_a_try_written_down(
    database_url: str, retry_after: str, expected: tuple[str, str]
) -> None:
    database = open_database(migrated(database_url), pool_size=2)
    database.open()
    outbox = DeployOutbox(database)
    with HookReceiver((503, {"Retry-After": retry_after})) as receiver:
        with database.transaction(write=True) as conn:
            outbox.record(conn, Reason(kind="announcement.published", id=1, at=datetime.now(UTC)))
        async with build_hook_client() as http:
            sender = HookSender(outbox, targets=[Target.of(receiver.url)], secret=None, debounce=0, http=http)
            tried = await sender.send_due_once()
            await sender.stop()
        (delivery,) = outbox.deliveries(states=("pending", "failed"))
    database.close()
    assert tried is not None and [(outcome, detail) for _, outcome, detail in tried] == [expected]
    assert delivery.attempts == 1 and len(receiver.received()) == 1
    if expected[0] == "retry":  # the first back-off: 2 s and up to a quarter more, after the try
        assert 2 - 0.1 <= delivery.next_attempt_at.timestamp() - receiver.received()[0].at <= 2.5 + 0.5


async def test_readiness_probes_share_one_reading_of_the_outbox(database_url: str) -> None:
    database = open_database(migrated(database_url), pool_size=2)
    database.open()
    outbox = DeployOutbox(database)
    readings = 0
    status = outbox.status

    def counted(**kwargs: Any) -> OutboxStatus:
        nonlocal readings
        readings += 1
        return status(**kwargs)

    outbox.status = counted  # type: ignore[method-assign]
    async with build_hook_client() as http:
        sender = HookSender(outbox, targets=[Target.of("https://example.org/hook")], secret=None, debounce=0, http=http)
        checks = await asyncio.gather(*(sender.readiness() for _ in range(50)))
        await sender.stop()
    database.close()
    assert readings == 1, "fifty anonymous probes, one database read"
    assert {check.detail for check in checks} == {"1 URL; 0 pending"}
