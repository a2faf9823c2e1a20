"""Deploy hooks across real server processes (the Procfile's command) on one database: a crash loses nothing,
several processes send each change once, a scheduled time is noticed with no request, and the command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from service.hooks.sender import LEASE
from tests.hook_receiver import HookReceiver
from tests.hooks.conftest import ADMIN, ADMIN_TOKEN, HOOK_SECRET, rows
from tests.support import procfile_server, release_phase, wait_until

Server = tuple[str, subprocess.Popen[bytes], Path]
Start = Callable[..., contextlib.AbstractContextManager[Server]]


@pytest.fixture
def start(tmp_path: Path, database_url: str, receiver: HookReceiver) -> Start:
    """Starts servers on one database (migrated first, as the release phase does) sending to `receiver`."""
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60
    )
    count = iter(range(100))

    @contextlib.contextmanager
    def server(**overrides: str) -> Iterator[Server]:
        log = tmp_path / f"server-{next(count)}.log"
        settings = {
            "DATABASE_URL": database_url, "ADMIN_TOKEN": ADMIN_TOKEN, "DEPLOY_HOOK_URLS": receiver.url,
            "DEPLOY_HOOK_SECRET": HOOK_SECRET, "DEPLOY_HOOK_DEBOUNCE": "1", "ACCESS_LOG": "false", **overrides,
        }  # fmt: skip
        with procfile_server(settings, cwd=tmp_path, log=log) as (url, process):
            yield url, process, log

    return server


def post(url: str, title: str, **fields: str) -> dict[str, object]:
    response = httpx.post(f"{url}/announcements", json={"title": title, "body": "text", **fields}, headers=ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def announced(receiver: HookReceiver) -> list[object]:
    """The ids of the announcements every POST so far named, in order, repeats included."""
    return [reason.get("id") for hit in receiver.received() for reason in hit.payload["reasons"]]


def test_a_change_survives_kill_9_before_its_window_ends(start: Start, receiver: HookReceiver) -> None:
    with start(DEPLOY_HOOK_DEBOUNCE="3") as (url, process, _):
        created = post(url, "Written just before the crash")
        os.killpg(process.pid, signal.SIGKILL)  # the whole process group, mid-window: no graceful anything
        process.wait(timeout=10)
    assert receiver.received() == [], "the window had not ended"
    with start(DEPLOY_HOOK_DEBOUNCE="3"):
        # The dead process's lease lapses, then the new one sends what the outbox holds.
        wait_until(lambda: receiver.received(), timeout=LEASE + 3 + 5, what="the delivery, after the restart", every=0.1)
        time.sleep(1.5)
    assert announced(receiver) == [created["id"]]
    assert receiver.received()[0].signed_with(HOOK_SECRET)


@pytest.mark.slow
def test_two_server_processes_send_each_change_once(start: Start, receiver: HookReceiver) -> None:
    with start(WEB_CONCURRENCY="2") as (first, _, _), start(WEB_CONCURRENCY="2") as (second, _, _):
        ids = []
        for n in range(8):  # four worker processes, each with its sender loop, writes arriving at both servers
            ids.append(post(first if n % 2 else second, f"Change {n}")["id"])
            time.sleep(0.7)  # some writes fall in one window, some in the next
        wait_until(lambda: sorted(announced(receiver)) == sorted(ids), timeout=20, what="every change", every=0.1)  # type: ignore[type-var]
        time.sleep(3)  # room for any repeat
    assert sorted(announced(receiver)) == sorted(ids), "each change once"  # type: ignore[type-var]
    deliveries = [hit.payload["id"] for hit in receiver.received()]
    assert len(deliveries) == len(set(deliveries)) >= 2, "one POST per delivery, several windows"


def test_a_scheduled_announcement_is_announced_with_no_request_arriving(start: Start, receiver: HookReceiver) -> None:
    with start() as (url, _, _):
        at = datetime.now(UTC) + timedelta(seconds=3)
        created = post(url, "Scheduled", published_at=at.isoformat())  # the last request this server gets
        wait_until(lambda: receiver.received(), timeout=3 + 1 + 5 + 2, what="the scheduled announcement's POST", every=0.05)
    hit = receiver.received()[0]
    assert hit.at <= at.timestamp() + 1 + 5, "within its time + debounce + 5 s"
    assert hit.at >= at.timestamp(), "not before its time"
    assert [(r["kind"], r["id"]) for r in hit.payload["reasons"]] == [("announcement.published", created["id"])]


def test_the_hook_url_and_secret_never_reach_the_log(start: Start, receiver: HookReceiver) -> None:
    with start(LOG_LEVEL="debug", ACCESS_LOG="true") as (url, _, log):
        post(url, "One")
        wait_until(lambda: receiver.received(), timeout=10, what="a POST")
        time.sleep(0.5)
    written = log.read_text()
    assert "deploy hook delivered to 127.0.0.1" in written
    assert "5c23354f454e1350f8543e78" not in written and "secret-title" not in written and HOOK_SECRET not in written


def test_hooks_status_lists_a_given_up_delivery_and_hooks_retry_sends_it(start: Start, database_url: str, tmp_path: Path) -> None:
    with HookReceiver(404) as receiver:
        settings = {"DATABASE_URL": database_url, "DEPLOY_HOOK_URLS": receiver.url, "DEPLOY_HOOK_SECRET": HOOK_SECRET}
        env = {**os.environ, **settings}
        release_phase(database_url, tmp_path)
        # A write from the command line records its change too; no server runs, so nothing is sent yet.
        subprocess.run(
            [sys.executable, "-m", "service", "announcements", "add", "--title", "From the shell", "--body", "b"],
            cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        assert rows(database_url, "SELECT kind, delivery FROM deploy_hook_changes") == [("announcement.published", None)]

        def hooks(action: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "service", "hooks", action],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        with procfile_server({**settings, "DEPLOY_HOOK_DEBOUNCE": "0", "ACCESS_LOG": "false"}, cwd=tmp_path):
            wait_until(
                lambda: rows(database_url, "SELECT state FROM deploy_hook_deliveries") == [("failed",)],
                timeout=10, what="the 404 given up", every=0.1,
            )  # fmt: skip
        status = hooks("status")
        assert "failed" in status and "127.0.0.1" in status and "HTTP 404" in status and "1 given up" in status
        assert "5c23354f" not in status
        retried = hooks("retry")
        assert "1 delivery made due now" in retried and "127.0.0.1 #" in retried and "delivered (HTTP 204)" in retried, retried
        assert "0 pending" in retried
    assert len(receiver.received()) == 2 and receiver.received()[0].payload["id"] == receiver.received()[1].payload["id"]
    assert rows(database_url, "SELECT state, attempts FROM deploy_hook_deliveries") == [("delivered", 2)]


def test_hooks_retry_sends_changes_still_inside_the_window_at_once(
    database_url: str, tmp_path: Path, receiver: HookReceiver
) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "DEPLOY_HOOK_URLS": receiver.url, "DEPLOY_HOOK_DEBOUNCE": "3600"}
    for command in (["migrate"], ["announcements", "add", "--title", "Now", "--body", "b"], ["hooks", "retry"]):
        done = subprocess.run(
            [sys.executable, "-m", "service", *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    assert "delivered (HTTP 204)" in done.stdout
    (hit,) = receiver.received()
    assert [reason["kind"] for reason in hit.payload["reasons"]] == ["announcement.published"]
    assert "x-hub-signature-256" not in hit.headers, "no DEPLOY_HOOK_SECRET, no signature"


def test_hooks_retry_without_deploy_hook_urls_changes_nothing(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("DEPLOY_HOOK_URLS", None)
    done = subprocess.run(
        [sys.executable, "-m", "service", "hooks", "retry"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "DEPLOY_HOOK_URLS is not set" in done.stderr


def test_hooks_retry_sends_only_to_the_urls_it_knows_and_says_when_a_try_failed(database_url: str, tmp_path: Path) -> None:
    with HookReceiver(503) as ours, HookReceiver() as theirs:
        env = {**os.environ, "DATABASE_URL": database_url, "DEPLOY_HOOK_URLS": f"{ours.url},{theirs.url}"}
        release_phase(database_url, tmp_path)
        add = [sys.executable, "-m", "service", "announcements", "add", "--title", "Both", "--body", "b"]
        subprocess.run(add, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
        server = {"DATABASE_URL": database_url, "DEPLOY_HOOK_URLS": env["DEPLOY_HOOK_URLS"], "DEPLOY_HOOK_DEBOUNCE": "3600"}
        with procfile_server(server, cwd=tmp_path):  # its sender names its two URLs; the window keeps the change waiting
            wait_until(lambda: rows(database_url, "SELECT targets FROM deploy_hook_sender") != [(None,)], what="the URLs named")
        # A shell that knows only one of the server's two URLs (a typo, a subset on a laptop).
        only_ours = {**env, "DEPLOY_HOOK_URLS": ours.url}
        done = subprocess.run(
            [sys.executable, "-m", "service", "hooks", "retry"],
            cwd=tmp_path,
            env=only_ours,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, "a try that did not deliver"
        assert "failed, tried again later (HTTP 503)" in done.stdout
        assert len(ours.received()) == 1 and theirs.received() == []
    states = rows(database_url, "SELECT host, state, attempts FROM deploy_hook_deliveries ORDER BY attempts")
    assert states == [("127.0.0.1", "pending", 0), ("127.0.0.1", "pending", 1)], "the other URL's delivery left for the server"


def test_a_delivery_to_a_url_since_replaced_reaches_the_new_one(start: Start, database_url: str, tmp_path: Path) -> None:
    with HookReceiver() as old, HookReceiver() as new:
        env = {**os.environ, "DATABASE_URL": database_url, "DEPLOY_HOOK_URLS": old.url, "DEPLOY_HOOK_DEBOUNCE": "0"}
        release_phase(database_url, tmp_path)
        add = [sys.executable, "-m", "service", "announcements", "add", "--title", "Moved", "--body", "b"]
        subprocess.run(add, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
        settings = {
            "DATABASE_URL": database_url,
            "DEPLOY_HOOK_URLS": old.url,
            "DEPLOY_HOOK_DEBOUNCE": "3600",
            "ACCESS_LOG": "false",
        }
        with procfile_server(settings, cwd=tmp_path):  # gathers nothing yet: the window is an hour
            pass
        subprocess.run(
            [sys.executable, "-m", "service", "hooks", "status"], cwd=tmp_path, env=env, check=True, capture_output=True
        )
        # The site moved hosts: the URL in the environment changes before the change was ever sent.
        with procfile_server({**settings, "DEPLOY_HOOK_URLS": new.url, "DEPLOY_HOOK_DEBOUNCE": "0"}, cwd=tmp_path):
            wait_until(lambda: new.received(), timeout=10, what="the change, at the new URL", every=0.1)
    assert old.received() == []
    assert [reason["kind"] for reason in new.received()[0].payload["reasons"]] == ["announcement.published"]


def test_hooks_retry_records_scheduled_times_that_passed_with_no_server(
    database_url: str, tmp_path: Path, receiver: HookReceiver
) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "DEPLOY_HOOK_URLS": receiver.url}
    release_phase(database_url, tmp_path)
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    add = [sys.executable, "-m", "service", "announcements", "add", "--title", "Soon", "--body", "b", "--published-at", soon]
    subprocess.run(add, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
    time.sleep(1.5)
    done = subprocess.run(
        [sys.executable, "-m", "service", "hooks", "retry"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [reason["kind"] for reason in receiver.received()[0].payload["reasons"]] == ["announcement.published"]
