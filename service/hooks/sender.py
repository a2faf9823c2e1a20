"""`HookSender`: the loop, in every process, that sends the outbox's deliveries while this process holds the lease.

Once a second the holder renews its lease, lets each watcher record what changed without a write (scheduled
announcements whose time came, GitHub data that differs), gathers the changes older than the debounce window
into one delivery, and POSTs each due delivery to its URL. A 2xx is delivered; a network error, a time-out,
429 or 5xx is tried again with exponential back-off and jitter (2 s doubling to at most 10 minutes, at least
what Retry-After asks) for 24 hours; anything else is given up at once. A process that stops, or is killed,
leaves its deliveries pending in the database: the next holder sends them (at least once; the body's `id`
lets a receiver ignore a repeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import math
import os
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
import msgspec

from service import API_NAME, API_VERSION
from service.database import BlockingRunner, Breaker, DatabaseUnavailable
from service.hooks.outbox import Delivery, DeployHookPayload, DeployOutbox, OutboxStatus, Target, Time
from service.readiness import Check

logger = logging.getLogger("service.hooks")

TICK = 1.0  # seconds between looks at the outbox: a scheduled time is noticed within this
LEASE = 15.0  # seconds a lease lasts unless renewed: how long a killed sender's deliveries wait for the next one
SEND_TIMEOUT = 10.0  # seconds for one POST, connecting included
FIRST_RETRY = 2.0  # seconds before the second try; doubled after each failed one
MAX_RETRY = 600.0  # never longer between two tries, unless Retry-After asks
MAX_RETRY_AFTER = 86400.0  # a Retry-After beyond the 24 hours of tries is believed up to here (then given up)
GIVE_UP_AFTER = timedelta(hours=24)
MAX_AT_ONCE = 4  # POSTs in flight at once
WARN_EVERY = 60.0  # seconds between two warnings that the outbox cannot be read
STATUS_MAX_AGE = 1.0  # seconds a reading of the outbox answers readiness probes
WATCH_TIMEOUT = 5.0  # seconds a tick waits for each watcher (a GitHub refresh goes on without it)
STOP_WAIT = 3.0  # seconds a shutdown waits for the tick and the POSTs in flight (Heroku kills at 30 s, uvicorn takes 20)

_encoder = msgspec.json.Encoder()
Watcher = Callable[[datetime], Awaitable[object]]
Outcome = Literal["delivered", "retry", "give_up"]


def _now() -> datetime:
    return datetime.now(UTC)


def build_hook_client() -> httpx.AsyncClient:
    """The sender's own connection pool: never the GitHub client's, whose headers carry the GitHub token."""
    return httpx.AsyncClient(
        headers={"User-Agent": f"{API_NAME}-deploy-hook/{API_VERSION}", "Content-Type": "application/json"},
        timeout=SEND_TIMEOUT,
        limits=httpx.Limits(max_connections=MAX_AT_ONCE, max_keepalive_connections=MAX_AT_ONCE, keepalive_expiry=30),
        follow_redirects=False,  # a redirected POST turns into a GET: a build hook that moved is a configuration error
        trust_env=False,
    )


def signature(secret: str, body: bytes) -> str:
    """X-Hub-Signature-256, as GitHub signs its own webhook deliveries."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempts: int, *, retry_after: float | None = None, rng: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after `attempts` failed ones: 2 s doubling, up to a quarter more at random
    (so many services that failed together do not retry together), at most MAX_RETRY, where the jitter takes up
    to an eighth off instead; never less than the receiver's Retry-After (at most MAX_RETRY_AFTER)."""
    wait: float = FIRST_RETRY * 2.0 ** min(max(attempts - 1, 0), 30) * (1 + rng() / 4)
    if wait > MAX_RETRY:
        wait = MAX_RETRY * (1 - rng() / 8)
    return max(wait, min(retry_after or 0.0, MAX_RETRY_AFTER))


def _retry_after(response: httpx.Response, now: datetime) -> float | None:
    """Retry-After in seconds (delay-seconds or an HTTP date, RFC 9110 §10.2.3), None if absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        when = parsedate_to_datetime(value)
        when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # "-0000": UTC, source unknown
        return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER)
    return None


class HooksCheck(Check, omit_defaults=True):
    """The `deploy_hooks` entry of /health/ready. A failing build hook does not make the service unready (it
    still serves): the counts say what is pending, retried and given up."""

    pending: int = 0
    retrying: int = 0
    failed_last_24h: int = 0
    waiting_changes: int = 0
    last_delivered_at: Time | None = None
    sender: str | None = None


class HookSender:
    """Sends the outbox's deliveries while this process holds the lease. `watchers` are called once a tick by
    the holder only, with the tick's time, to record changes nobody writes (scheduled times, GitHub data)."""

    def __init__(
        self,
        outbox: DeployOutbox,
        *,
        targets: Sequence[Target],
        secret: str | None,
        debounce: float,
        http: httpx.AsyncClient,
        watchers: Sequence[Watcher] = (),
        on_outcome: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = _now,
        tick: float = TICK,
        lease: float = LEASE,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.outbox = outbox
        self.targets = {target.id: target for target in targets}
        self._secret = secret
        self.debounce = debounce
        self.http = http
        self.watchers = list(watchers)
        self.on_outcome = on_outcome
        self.clock = clock
        self.tick_seconds = tick
        self.lease_seconds = lease
        self.send_timeout = send_timeout
        self._hold = send_timeout + 20  # seconds a delivery being sent is not due for anyone (see DeployOutbox.due)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"
        self.holding = False
        # Its own threads and breaker: a hung database cannot take the requests' threads through it.
        self._runner = BlockingRunner(outbox.database.kind, concurrency=2, breaker=Breaker(retry_after=5), trips=(Exception,))
        self._sending: dict[tuple[str, str], asyncio.Task[tuple[Outcome, str]]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._warned_at = -math.inf
        self._pruned_at: datetime | None = None
        self._status: tuple[float, OutboxStatus] | None = None  # (loop time, reading), see `status`
        self._status_read: asyncio.Future[OutboxStatus] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="deploy-hook-sender")

    async def stop(self) -> None:
        """Stop ticking, give POSTs in flight STOP_WAIT seconds (one cut short stays pending: the next holder sends
        it again, at least once), and hand the lease back so another process, or this one's successor, takes over
        at once."""
        self._stopping.set()
        deadline = asyncio.get_running_loop().time() + STOP_WAIT
        # The loop first: its tick may still start POSTs (it starts none once it sees the stop), then those.
        for running in ([self._loop] if self._loop else [], list(self._sending.values())):
            if running:
                wait = max(0.0, deadline - asyncio.get_running_loop().time())
                _, late = await asyncio.wait(running, timeout=wait)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        self._loop = None
        if self.holding:
            with contextlib.suppress(Exception):
                await self._runner.run(self.outbox.release, self.holder)
            self.holding = False
        await self._runner.drain()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except DatabaseUnavailable as exc:
                self._warn(str(exc.detail))
            except Exception:  # noqa: BLE001 -- the loop must outlive any one failure; it is logged
                logger.exception("deploy hooks: unexpected error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.tick_seconds)

    def _warn(self, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            logger.warning("deploy hooks: the outbox cannot be used now (%s); deliveries wait in the database", reason)

    # -- one tick ------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Renew the lease, and while holding it: run the watchers, gather the changes past the debounce window,
        and start the due POSTs (in the background: the next tick renews the lease while they run)."""
        now = self.clock()
        held = await self._runner.run(
            self.outbox.claim, self.holder, now=now, seconds=self.lease_seconds, targets=self.targets.values()
        )
        if not held:
            if self.holding:
                logger.info("deploy hooks: another process holds the sender lease now")
            self.holding = False
            return
        self.holding = True
        for watch in self.watchers:
            try:
                async with asyncio.timeout(WATCH_TIMEOUT):  # a slow GitHub must not hold the lease's renewal
                    await watch(now)
            except (DatabaseUnavailable, TimeoutError):
                pass  # looked at again next tick; the database's own failures are reported by readiness
            except Exception:  # noqa: BLE001 -- one watcher's failure must not stop deliveries
                logger.exception("deploy hooks: a change watcher failed")
        await self._runner.run(
            self.outbox.gather, self.holder, now=self.clock(), debounce=self.debounce, targets=self.targets.values()
        )
        now = self.clock()
        if self._pruned_at is None or now - self._pruned_at > timedelta(hours=1):
            await self._runner.run(self.outbox.prune, now=now)
            self._pruned_at = now
        room = MAX_AT_ONCE - len(self._sending)
        if room <= 0 or self._stopping.is_set():
            return
        for delivery in await self._runner.run(self.outbox.due, self.holder, now=now, hold=self._hold, limit=room):
            key = (delivery.id, delivery.target)
            if key in self._sending or self._stopping.is_set():
                continue  # taken for `hold` seconds all the same: due again after that
            task = asyncio.create_task(self.send(delivery), name="deploy-hook-post")
            self._sending[key] = task
            task.add_done_callback(functools.partial(self._sent, key))

    def _sent(self, key: tuple[str, str], task: asyncio.Task[tuple[Outcome, str]]) -> None:
        self._sending.pop(key, None)
        failure = None if task.cancelled() else task.exception()
        if isinstance(failure, DatabaseUnavailable):  # its outcome is not written: it stays pending, tried again
            self._warn(str(failure.detail))
        elif failure is not None:
            logger.error("deploy hooks: sending failed", exc_info=failure)

    async def send_due_once(self) -> list[tuple[Delivery, Outcome, str]] | None:
        """Take the lease, gather every waiting change (the debounce window not waited for), send every delivery
        due now (waiting for each POST), and hand the lease back: what `python -m service hooks retry` does. Each
        delivery tried, with what came of it; None, sending nothing, if a running process holds the lease (its
        sender sends them within a tick)."""
        if not await self._runner.run(self.outbox.claim, self.holder, now=self.clock(), seconds=self.lease_seconds):
            return None
        tried: list[tuple[Delivery, Outcome, str]] = []
        try:
            # Rows for every URL the server sends to, too: those this command does not know wait for the server.
            every = {target.id: target for target in await self._runner.run(self.outbox.recorded_targets)} | self.targets
            await self._runner.run(self.outbox.gather, self.holder, now=self.clock(), debounce=0, targets=every.values())
            known = list(self.targets)
            while due := await self._runner.run(self.outbox.due, self.holder, now=self.clock(), hold=self._hold, only=known):
                outcomes = await asyncio.gather(*(self.send(delivery) for delivery in due))
                tried += [(delivery, *outcome) for delivery, outcome in zip(due, outcomes, strict=True)]
        finally:
            await self._runner.run(self.outbox.release, self.holder)
        return tried

    async def send(self, delivery: Delivery) -> tuple[Outcome, str]:
        """One try of one delivery, its outcome written back; what came of it, and the detail ("HTTP 503")."""
        target = self.targets.get(delivery.target)
        now = self.clock()
        if target is None:
            logger.warning(
                "deploy hook to %s given up: its URL is no longer in DEPLOY_HOOK_URLS; the URLs there now get its changes"
                " (delivery %s)", delivery.label, delivery.id,
            )  # fmt: skip
            await self._runner.run(self.outbox.retarget, delivery, targets=self.targets.values(), now=now)
            await self._runner.run(self.outbox.finish, delivery, state="failed", outcome="URL no longer configured", now=now)
            self._count("given_up")
            return "give_up", "URL no longer configured"
        try:
            return await self._try(delivery, target)
        except DatabaseUnavailable:
            raise  # the outcome cannot be written either: it is due again once its hold ends
        except Exception as exc:  # noqa: BLE001 -- counted as a failed try, so it backs off and is given up in time
            logger.exception("deploy hooks: sending to %s failed unexpectedly", target.label)
            detail = f"unexpected error ({type(exc).__name__})"
            return await self._after("retry", detail, None, delivery, target)

    async def _try(self, delivery: Delivery, target: Target) -> tuple[Outcome, str]:
        now = self.clock()
        reasons, omitted, first = await self._runner.run(self.outbox.payload, delivery)
        body = _encoder.encode(
            DeployHookPayload(id=delivery.id, reasons=reasons, omitted_reasons=omitted, first_change_at=first, sent_at=now)
        )
        headers = {"X-Hook-Delivery": delivery.id}
        if self._secret is not None:
            headers["X-Hub-Signature-256"] = signature(self._secret, body)
        outcome, detail, asked = await self._post(target, body, headers)
        return await self._after(outcome, detail, asked, delivery, target)

    async def _after(
        self, outcome: Outcome, detail: str, asked: float | None, delivery: Delivery, target: Target
    ) -> tuple[Outcome, str]:
        """Write down what one try came to: delivered, tried again after the back-off, or given up."""
        now = self.clock()
        tries = delivery.attempts + 1
        if outcome == "delivered":
            await self._runner.run(self.outbox.finish, delivery, state="delivered", outcome=detail, now=now)
            changes = f"{delivery.changes} change{'' if delivery.changes == 1 else 's'}"
            logger.info("deploy hook delivered to %s (%s, %s, try %d)", target.label, detail, changes, tries)
            self._count("delivered")
            return outcome, detail
        next_at = now + timedelta(seconds=backoff(tries, retry_after=asked))
        if outcome == "retry" and next_at < delivery.created_at + GIVE_UP_AFTER:
            await self._runner.run(
                self.outbox.finish, delivery, state="pending", outcome=detail, now=now, next_attempt_at=next_at
            )
            wait = (next_at - now).total_seconds()
            logger.info("deploy hook to %s failed (%s, try %d); next try in %.0f s", target.label, detail, tries, wait)
            self._count("retried")
            return outcome, detail
        if outcome == "retry":
            why = "no more tries within 24 hours"
        elif detail.startswith("HTTP 3"):
            why = "a redirect, not followed: is the build hook's URL still the one its host gives?"
        else:
            why = "an answer not worth trying again"
        logger.warning(
            "deploy hook to %s given up after %d tr%s: %s (%s; delivery %s)",
            target.label, tries, "y" if tries == 1 else "ies", detail, why, delivery.id,
        )  # fmt: skip
        await self._runner.run(self.outbox.finish, delivery, state="failed", outcome=detail, now=now)
        self._count("given_up")
        return "give_up", detail

    async def _post(self, target: Target, body: bytes, headers: dict[str, str]) -> tuple[Outcome, str, float | None]:
        """What one POST came to, its detail ("HTTP 503"), and the seconds a Retry-After asked for. The detail
        never names the URL, whose path and query are the hook's secret. `send_timeout` bounds the whole POST
        (httpx's timeout bounds each phase: connecting, writing, each read)."""
        try:
            async with (
                asyncio.timeout(self.send_timeout),
                self.http.stream("POST", target.url, content=body, headers=headers) as response,
            ):
                status = response.status_code  # the body is not read: only the status and Retry-After count
                if 200 <= status < 300:
                    return "delivered", f"HTTP {status}", None
                if status == 429 or status >= 500:
                    return "retry", f"HTTP {status}", _retry_after(response, self.clock())
                return "give_up", f"HTTP {status}", None
        except (TimeoutError, httpx.TimeoutException):
            return "retry", f"no answer within {self.send_timeout:g} s", None
        except httpx.HTTPError as exc:
            return "retry", f"network error ({type(exc).__name__})", None

    def _count(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    # -- what people look at -----------------------------------------------------------------

    async def status(self) -> OutboxStatus:
        """The outbox's state, read at most once a second however many ask (readiness probes are anonymous):
        callers within the second share the last reading, or the one in flight."""
        loop = asyncio.get_running_loop()
        if self._status is not None and loop.time() - self._status[0] < STATUS_MAX_AGE:
            return self._status[1]
        if self._status_read is None or self._status_read.done():
            self._status_read = asyncio.ensure_future(self._read_status())
        return await asyncio.shield(self._status_read)

    async def _read_status(self) -> OutboxStatus:
        status = await self._runner.look(lambda: self.outbox.status(now=self.clock()))
        self._status = (asyncio.get_running_loop().time(), status)
        return status

    async def readiness(self) -> HooksCheck:
        try:
            status = await self.status()
        except Exception as exc:  # noqa: BLE001 -- readiness reports, it does not fail
            return HooksCheck("ok", f"deploy hooks: outbox unreadable now ({type(exc).__name__}); the database entry says more")
        parts = [f"{len(self.targets)} URL{'s' if len(self.targets) != 1 else ''}", f"{status.pending} pending"]
        if status.waiting_changes:
            parts.append(
                f"{status.waiting_changes} change{'s' if status.waiting_changes != 1 else ''} waiting for the debounce window"
            )
        if status.retrying:
            parts.append(f"{status.retrying} being retried")
        if status.failed:
            parts.append(f"{status.failed} given up in the last 24 h")
        if status.last_problem and (status.retrying or status.failed):
            parts.append(f"last failure {status.last_problem}")
        return HooksCheck(
            "ok",
            "; ".join(parts),
            pending=status.pending,
            retrying=status.retrying,
            failed_last_24h=status.failed,
            waiting_changes=status.waiting_changes,
            last_delivered_at=status.last_delivered_at,
            sender=status.sender,
        )
