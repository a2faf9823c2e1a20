"""POST /github/webhook: GitHub reports that something the service shows has changed, and every process
serves the new data within seconds instead of within GITHUB_CACHE_TTL.

Enabled by GITHUB_WEBHOOK_SECRET (404 without it). X-Hub-Signature-256, the HMAC-SHA256 of the raw
body under that secret, is checked in constant time before anything in the body is read. The change
goes to every process through the shared tier; a delivery id already acted on is acknowledged only.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
from typing import Literal, NamedTuple
from urllib.parse import parse_qs

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.errors import ApiError, NotFound, ServiceUnavailable, UnsupportedMediaType
from service.github.client import GitHubClient
from service.github.errors import WebhookMalformed, WebhookRejected
from service.github.models import is_valid_repository_name
from service.responses import BytesResponse
from service.telemetry import Telemetry

# GitHub caps a delivery at 25 MB; a push of many commits runs to hundreds of KB. This route alone may
# receive that much (MAX_BODY_BYTES still bounds every other route).
WEBHOOK_MAX_BODY_BYTES = 25 * 1024 * 1024
IN_MEMORY_BYTES = 1024 * 1024  # a body is held in memory up to this while it is verified; beyond, in a temporary file
MAX_BODIES_AT_ONCE = 4  # deliveries read at the same time by one worker; more get 503 + Retry-After (GitHub redelivers)


class Affects(NamedTuple):
    """Beyond the repository list: whether an event may change the owner's profile (its count of public
    repositories), and the showcase (pinned repositories' stars and languages, the owner's languages)."""

    profile: bool
    showcase: bool


# The events that change what the service shows. Pins themselves have no event: they refresh by TTL.
CHANGING_EVENTS = {
    "push": Affects(profile=False, showcase=True),
    "create": Affects(profile=False, showcase=False),
    "delete": Affects(profile=False, showcase=False),
    "release": Affects(profile=False, showcase=False),
    "star": Affects(profile=False, showcase=True),
    "fork": Affects(profile=False, showcase=False),
    "repository": Affects(profile=True, showcase=True),
    "public": Affects(profile=True, showcase=True),
}


class _Account(msgspec.Struct):
    login: str


class _Repository(msgspec.Struct):
    name: str
    owner: _Account


class _OldName(msgspec.Struct):
    from_: str = msgspec.field(name="from")


class _RepositoryChanges(msgspec.Struct):
    name: _OldName | None = None


class _Changes(msgspec.Struct):
    repository: _RepositoryChanges | None = None


class Payload(msgspec.Struct):
    """The fields of a delivery this service uses; GitHub sends many more."""

    repository: _Repository | None = None
    changes: _Changes | None = None  # a "repository" event with action "renamed" names the old name here


class Receipt(msgspec.Struct, omit_defaults=True):
    event: str
    outcome: Literal["pong", "refreshing", "ignored", "duplicate"]
    detail: str
    delivery: str | None = None


_payload_decoder = msgspec.json.Decoder(Payload)
_encoder = msgspec.json.Encoder()


class WebhookReceiver:
    """Built in the lifespan with the GitHub client it tells about changes."""

    def __init__(self, github: GitHubClient, *, secret: str | None, telemetry: Telemetry | None = None) -> None:
        self.github = github
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self._key = secret.encode() if secret else None
        self._reading = 0  # bodies being read now

    async def receive(self, request: Request) -> BytesResponse:
        """Answer one delivery, and count it; only a delivery whose signature checked out names its event."""
        event = request.headers.get("x-github-event", "none")
        try:
            body = await self._verified_body(request)
        except ApiError as exc:  # off (404) or refused (401): counted, then answered as a problem
            self.telemetry.webhook_delivery(event, _outcome(exc), verified=False)
            raise
        try:
            receipt, status = await self._act(request, body)
        except ApiError as exc:  # 400, 415, 503
            self.telemetry.webhook_delivery(event, _outcome(exc), verified=True)
            raise
        self.telemetry.webhook_delivery(receipt.event, receipt.outcome, verified=True)
        return BytesResponse.of(_encoder.encode(receipt), status=status)

    async def _verified_body(self, request: Request) -> bytes:
        """The body, once its signature checks out. The HMAC is computed over the bytes as they arrive, which
        are held in memory only up to IN_MEMORY_BYTES (then in a temporary file), and at most
        MAX_BODIES_AT_ONCE bodies are read at once: an unsigned 25 MiB flood costs a worker little memory. Only
        a verified body is read back whole."""
        key = self._key
        if key is None:
            raise NotFound("No webhook receiver here: GITHUB_WEBHOOK_SECRET is not configured.")
        given = request.headers.get("x-hub-signature-256")
        if given is None:
            raise WebhookRejected("X-Hub-Signature-256 is missing.")
        if self._reading >= MAX_BODIES_AT_ONCE:
            raise ServiceUnavailable("Too many deliveries are being received at once; redeliver it later.", retry_after=5)
        self._reading += 1
        try:
            mac = hmac.new(key, digestmod=hashlib.sha256)
            with tempfile.SpooledTemporaryFile(max_size=IN_MEMORY_BYTES) as spool:
                size = 0
                async for chunk in request.stream():  # at most WEBHOOK_MAX_BODY_BYTES (the route's max_body_size)
                    mac.update(chunk)
                    size += len(chunk)
                    if size > IN_MEMORY_BYTES:  # on disk by now: written from a worker thread
                        await run_in_threadpool(spool.write, chunk)
                    else:
                        spool.write(chunk)
                expected = b"sha256=" + mac.hexdigest().encode()
                # Exact bytes, compared in constant time: no prefix, no other case, no padding is accepted.
                if not hmac.compare_digest(expected, given.encode("latin-1")):
                    raise WebhookRejected("X-Hub-Signature-256 does not match the body under GITHUB_WEBHOOK_SECRET.")
                spool.seek(0)
                body: bytes = await run_in_threadpool(spool.read) if size > IN_MEMORY_BYTES else spool.read()
                return body
        finally:
            self._reading -= 1

    async def _act(self, request: Request, body: bytes) -> tuple[Receipt, int]:
        event = request.headers.get("x-github-event")
        if not event:
            raise WebhookMalformed("X-GitHub-Event is missing.")
        delivery = request.headers.get("x-github-delivery") or None
        if event == "ping":
            return Receipt(event, "pong", "Webhook set up: the signature checks out.", delivery), 200
        if event not in CHANGING_EVENTS:
            return Receipt(event, "ignored", "This event does not change what the service shows.", delivery), 200
        payload = _payload(request.headers.get("content-type", ""), body)
        repository = payload.repository
        owner = self.github.owner
        if repository is None or owner is None or repository.owner.login.lower() != owner.lower():
            return Receipt(event, "ignored", f"Not about a repository of {owner or 'the configured owner'}.", delivery), 200
        names = [repository.name]
        if payload.changes and payload.changes.repository and payload.changes.repository.name:
            names.append(payload.changes.repository.name.from_)  # renamed: the old name's answer goes too
        if not all(is_valid_repository_name(name) for name in names):
            # Signed, yet no repository of GitHub's could have this name (a NUL, a slash): permanent, so a
            # 400, never a 503 that asks GitHub to redeliver, and nothing reaches the database.
            raise WebhookMalformed("The delivery names a repository no GitHub repository could be called.")
        affects = CHANGING_EVENTS[event]
        shared = await self.github.upstream_changed(
            delivery, repositories=names, profile=affects.profile, showcase=affects.showcase
        )
        if shared is False:
            return Receipt(event, "duplicate", "This delivery was acted on before.", delivery), 200
        if shared is None:
            raise ServiceUnavailable(
                "The change could not be passed to the other processes (database unavailable); redeliver it later.",
                retry_after=10,
            )
        return Receipt(event, "refreshing", f"Refreshing {', '.join(names)} and the repository list.", delivery), 202


def _outcome(exc: ApiError) -> str:
    return (exc.slug or str(exc.status)).replace("-", "_")


def _payload(content_type: str, body: bytes) -> Payload:
    """The delivery's JSON, sent as the body (content type application/json) or as the `payload` form
    field (application/x-www-form-urlencoded), as the webhook's settings choose."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
        except ValueError:  # more fields than a delivery has
            raise WebhookMalformed("The form is not a GitHub delivery.") from None
        if "payload" not in form:
            raise WebhookMalformed("The form has no payload field.")
        body = form["payload"][0].encode()
    elif media_type != "application/json":
        raise UnsupportedMediaType("Deliveries are application/json or application/x-www-form-urlencoded.")
    try:
        return _payload_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WebhookMalformed(f"The payload is not a GitHub event this service can read ({exc}).") from None


async def receive_webhook(request: Request) -> BytesResponse:
    receiver: WebhookReceiver = request.app.state.webhook
    return await receiver.receive(request)
