"""The deploy-hook outbox on both databases: recorded with the change or not at all, each change once, one
sender at a time, and the back-off between tries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from service.announcements.models import AnnouncementPatch, NewAnnouncement
from service.announcements.store import AnnouncementStore
from service.database import Database, open_database
from service.errors import Conflict
from service.hooks.outbox import MAX_REASONS, DeployOutbox, Reason, Target
from service.hooks.sender import MAX_RETRY, backoff

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = open_database(database_url, pool_size=2)
    database.open()
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def outbox(database: Database) -> DeployOutbox:
    return DeployOutbox(database, events=("announcements",))


def waiting(database: Database) -> list[tuple[str, str | None]]:
    with database.transaction(write=False) as conn:
        return [tuple(row) for row in database.execute(conn, "SELECT kind, delivery FROM deploy_hook_changes ORDER BY id")]  # type: ignore[misc]


def new(title: str, **fields: object) -> NewAnnouncement:
    return NewAnnouncement(title=title, body="text", **fields)  # type: ignore[arg-type]


def test_a_refused_write_records_nothing(database: Database, outbox: DeployOutbox) -> None:
    store = AnnouncementStore(database, outbox=outbox)
    store.create(new("One", slug="one"), now=NOW)
    with pytest.raises(Conflict):
        store.create(new("Other", slug="one"), now=NOW)
    assert [kind for kind, _ in waiting(database)] == ["announcement.published"]


def test_a_store_without_an_outbox_records_nothing(database: Database) -> None:
    store = AnnouncementStore(database)
    created = store.create(new("One"), now=NOW)
    store.update(created.id, AnnouncementPatch(title="Two"), now=NOW, if_match=None)
    store.delete(created.id, if_match=None, now=NOW)
    assert waiting(database) == []


def test_an_outbox_for_github_only_records_no_announcement(database: Database) -> None:
    store = AnnouncementStore(database, outbox=DeployOutbox(database, events=("github",)))
    store.create(new("One"), now=NOW)
    assert waiting(database) == []


def test_an_import_records_each_public_change_and_a_dry_run_nothing(database: Database, outbox: DeployOutbox) -> None:
    store = AnnouncementStore(database, outbox=outbox)
    items = [new("One", slug="one"), new("Two", slug="two", published_at=NOW + timedelta(days=1))]
    store.upsert(items, now=NOW, dry_run=True)
    assert waiting(database) == []
    store.upsert(items, now=NOW)
    store.upsert(items, now=NOW)  # unchanged: no write, nothing recorded
    assert [kind for kind, _ in waiting(database)] == ["announcement.published"]


def test_a_scheduled_time_written_just_before_it_and_committed_just_after_is_still_recorded(
    database: Database, outbox: DeployOutbox
) -> None:
    store = AnnouncementStore(database, outbox=outbox)
    at = NOW + timedelta(seconds=2)
    store.record_scheduled(now=at + timedelta(seconds=0.5))  # the sender looked while the write waited for the database
    store.create(new("Published at two", published_at=at), now=NOW)  # read the clock at NOW, committed after `at`
    assert store.record_scheduled(now=at + timedelta(seconds=1.5)) == 1


def test_scheduled_times_are_recorded_once_when_they_pass(database: Database, outbox: DeployOutbox) -> None:
    store = AnnouncementStore(database, outbox=outbox)
    assert store.record_scheduled(now=NOW) == 0
    later = store.create(new("Later", published_at=NOW + timedelta(seconds=10)), now=NOW)
    brief = store.create(new("Brief", expires_at=NOW + timedelta(seconds=20)), now=NOW)
    assert [kind for kind, _ in waiting(database)] == ["announcement.published"]  # Brief, public at once
    assert store.record_scheduled(now=NOW + timedelta(seconds=5)) == 0
    assert store.record_scheduled(now=NOW + timedelta(seconds=11)) == 1
    assert store.record_scheduled(now=NOW + timedelta(seconds=11)) == 0
    assert store.record_scheduled(now=NOW + timedelta(seconds=30)) == 1
    # Another process that looked from an older mark finds the same changes already recorded.
    with database.transaction(write=True) as conn:
        database.execute(conn, "UPDATE deploy_hook_sender SET scheduled_checked_at = 0")
    assert store.record_scheduled(now=NOW + timedelta(seconds=30)) == 0
    with database.transaction(write=False) as conn:
        reasons = [row[0] for row in database.execute(conn, "SELECT reason FROM deploy_hook_changes ORDER BY id")]
    assert f'"kind":"announcement.published","id":{later.id}' in reasons[1]
    assert f'"kind":"announcement.expired","id":{brief.id}' in reasons[2]


def test_one_holder_at_a_time_and_a_lapsed_lease_is_taken_over(outbox: DeployOutbox) -> None:
    assert outbox.claim("a", now=NOW, seconds=15)
    assert not outbox.claim("b", now=NOW + timedelta(seconds=5), seconds=15)
    assert outbox.claim("a", now=NOW + timedelta(seconds=10), seconds=15), "renewed by its holder"
    assert not outbox.claim("b", now=NOW + timedelta(seconds=20), seconds=15)
    assert outbox.claim("b", now=NOW + timedelta(seconds=26), seconds=15), "a holder that stopped renewing"
    outbox.release("b")
    assert outbox.claim("c", now=NOW + timedelta(seconds=27), seconds=15), "handed back at shutdown"


def test_changes_are_gathered_once_the_first_is_a_window_old(database: Database, outbox: DeployOutbox) -> None:
    targets = [Target.of("https://api.netlify.com/build_hooks/x"), Target.of("https://api.vercel.com/v1/integrations/deploy/y")]
    assert outbox.claim("me", now=NOW, seconds=60)
    with database.transaction(write=True) as conn:
        outbox.record(conn, Reason(kind="announcement.published", id=1, at=NOW))
        outbox.record(conn, Reason(kind="announcement.updated", id=1, at=NOW + timedelta(seconds=4)))
    assert outbox.gather("me", now=NOW + timedelta(seconds=9), debounce=10, targets=targets) is None
    assert outbox.gather("not-me", now=NOW + timedelta(seconds=10), debounce=10, targets=targets) is None, "not the holder"
    delivery = outbox.gather("me", now=NOW + timedelta(seconds=10), debounce=10, targets=targets)
    assert delivery is not None
    assert waiting(database) == [("announcement.published", delivery), ("announcement.updated", delivery)]
    assert outbox.due("not-me", now=NOW + timedelta(seconds=10), hold=30) == []
    due = outbox.due("me", now=NOW + timedelta(seconds=10), hold=30)
    assert sorted(d.host for d in due) == ["api.netlify.com", "api.vercel.com"] and {d.changes for d in due} == {2}
    assert outbox.due("me", now=NOW + timedelta(seconds=11), hold=30) == [], "taken while their POSTs are under way"
    assert len(outbox.due("me", now=NOW + timedelta(seconds=41), hold=30)) == 2, "due again if their sender died"
    assert outbox.gather("me", now=NOW + timedelta(seconds=50), debounce=10, targets=targets) is None, "nothing new waits"


def test_a_payload_lists_at_most_max_reasons(database: Database, outbox: DeployOutbox) -> None:
    assert outbox.claim("me", now=NOW, seconds=60)
    with database.transaction(write=True) as conn:
        for n in range(MAX_REASONS + 5):
            outbox.record(conn, Reason(kind="announcement.published", id=n + 1, at=NOW))
    assert outbox.gather("me", now=NOW, debounce=0, targets=[Target.of("https://example.org/hook")]) is not None
    (delivery,) = outbox.due("me", now=NOW, hold=30)
    reasons, omitted, first = outbox.payload(delivery)
    assert len(reasons) == MAX_REASONS and omitted == 5 and first == NOW and reasons[0].id == 1


def test_a_url_still_being_retried_gets_one_delivery_with_every_reason_not_one_per_window(
    database: Database, outbox: DeployOutbox
) -> None:
    netlify, vercel = Target.of("https://api.netlify.com/build_hooks/x"), Target.of("https://api.vercel.com/y")
    assert outbox.claim("me", now=NOW, seconds=3600)
    for minute in range(3):  # three windows while Netlify answers 503 and Vercel 204
        at = NOW + timedelta(minutes=minute)
        with database.transaction(write=True) as conn:
            outbox.record(conn, Reason(kind="announcement.published", id=minute + 1, at=at))
        assert outbox.gather("me", now=at, debounce=0, targets=[netlify, vercel]) is not None
        for delivery in outbox.due("me", now=at, hold=30):
            state: Literal["pending", "delivered"] = "pending" if delivery.target == netlify.id else "delivered"
            outbox.finish(delivery, state=state, outcome="HTTP 503", now=at, next_attempt_at=at + timedelta(hours=1))
    pending = outbox.deliveries(states=("pending",))
    assert [(d.host, d.changes, d.first_change_at) for d in pending] == [("api.netlify.com", 3, NOW)]
    reasons, omitted, _ = outbox.payload(pending[0])
    assert [r.id for r in reasons] == [1, 2, 3] and omitted == 0
    assert len(outbox.deliveries(states=("superseded",))) == 2
    assert outbox.status(now=NOW + timedelta(minutes=3)).pending == 1


def test_back_off_doubles_from_two_seconds_to_ten_minutes_with_jitter_and_honours_retry_after() -> None:
    assert [backoff(n, rng=lambda: 0.0) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff(1, rng=lambda: 1.0) == 2.5, "up to a quarter more at random"
    assert backoff(20, rng=lambda: 0.0) == MAX_RETRY == 600, "at most ten minutes"
    assert backoff(20, rng=lambda: 1.0) == 525, "where the jitter takes up to an eighth off, so retries still spread"
    assert backoff(1, retry_after=10**12, rng=lambda: 0.0) == 86400, "an absurd Retry-After is believed up to a day"
    assert backoff(1, retry_after=30, rng=lambda: 0.0) == 30
    assert backoff(5, retry_after=3, rng=lambda: 0.0) == 32, "never sooner than the back-off either"


def test_a_hook_target_is_known_by_hash_and_host_only() -> None:
    target = Target.of("https://api.netlify.com/build_hooks/5c23354f?trigger_title=x")
    assert target.host == "api.netlify.com" and len(target.id) == 16 and "5c23354f" not in target.id
