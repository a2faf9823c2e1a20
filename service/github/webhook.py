"""POST /github/webhook: GitHub reports that something the service shows has changed, and every process
serves the new data within seconds instead of within GITHUB_CACHE_TTL.

Enabled by GITHUB_WEBHOOK_SECRET (404 without it). X-Hub-Signature-256, the HMAC-SHA256 of the raw
body under that secret, is checked in constant time before anything in the body is read. The change
goes to every process through the shared tier; a delivery id already acted on is acknowledged only.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal
from urllib.parse import parse_qs

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service import metrics
from service.errors import ApiError, NotFound, ServiceUnavailable, UnsupportedMediaType
from service.github.client import GitHubClient
from service.github.errors import WebhookMalformed, WebhookRejected
from service.http import BytesResponse, raw_header

# GitHub caps a delivery at 25 MB; a push of many commits runs to hundreds of KB. This route alone may
# receive that much (MAX_BODY_BYTES still bounds every other route).
WEBHOOK_MAX_BODY_BYTES = 25 * 1024 * 1024
HASH_IN_THREAD_ABOVE = 1024 * 1024  # bytes of body whose signature is checked in the thread pool

# The events that change what the service shows, and whether they may change the owner's profile too
# (its count of public repositories).
CHANGING_EVENTS = {
    "push": False,
    "create": False,
    "delete": False,
    "release": False,
    "star": False,
    "fork": False,
    "repository": True,
    "public": True,
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

    def __init__(self, github: GitHubClient, *, secret: str | None) -> None:
        self.github = github
        self._key = secret.encode() if secret else None

    async def receive(self, request: Request) -> BytesResponse:
        if self._key is None:
            raise NotFound("No webhook receiver here: GITHUB_WEBHOOK_SECRET is not configured.")
        body = await request.body()  # at most WEBHOOK_MAX_BODY_BYTES (EdgeMiddleware)
        await self._verify(raw_header(request.scope, b"x-hub-signature-256"), body)
        event = request.headers.get("x-github-event")
        if not event:
            raise WebhookMalformed("X-GitHub-Event is missing.")
        delivery = request.headers.get("x-github-delivery") or None
        if event == "ping":
            return _answer(200, Receipt(event, "pong", "Webhook set up: the signature checks out.", delivery))
        if event not in CHANGING_EVENTS:
            return _answer(200, Receipt(event, "ignored", "This event does not change what the service shows.", delivery))
        payload = _payload(request.headers.get("content-type", ""), body)
        repository = payload.repository
        owner = self.github.owner
        if repository is None or owner is None or repository.owner.login.lower() != owner.lower():
            return _answer(
                200, Receipt(event, "ignored", f"Not about a repository of {owner or 'the configured owner'}.", delivery)
            )
        names = [repository.name]
        if payload.changes and payload.changes.repository and payload.changes.repository.name:
            names.append(payload.changes.repository.name.from_)  # renamed: the old name's answer goes too
        shared = await self.github.upstream_changed(delivery, repositories=names, profile=CHANGING_EVENTS[event])
        if shared is False:
            return _answer(200, Receipt(event, "duplicate", "This delivery was acted on before.", delivery))
        if shared is None:
            raise ServiceUnavailable(
                "The change could not be passed to the other processes (database unavailable); redeliver it later.",
                retry_after=10,
            )
        return _answer(202, Receipt(event, "refreshing", f"Refreshing {', '.join(names)} and the repository list.", delivery))

    async def _verify(self, signature: bytes | None, body: bytes) -> None:
        key = self._key
        assert key is not None
        if signature is None:
            raise WebhookRejected("X-Hub-Signature-256 is missing.")

        def digest() -> bytes:
            return b"sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest().encode()

        # Hashing a large push (up to 25 MiB, tens of ms) must not hold up the event loop.
        expected = await run_in_threadpool(digest) if len(body) > HASH_IN_THREAD_ABOVE else digest()
        if not hmac.compare_digest(expected, signature.strip()):
            raise WebhookRejected("X-Hub-Signature-256 does not match the body under GITHUB_WEBHOOK_SECRET.")


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


def _answer(status: int, receipt: Receipt) -> BytesResponse:
    metrics.webhook_delivery(receipt.event, receipt.outcome)
    return BytesResponse.of(_encoder.encode(receipt), status=status)


async def receive_webhook(request: Request) -> BytesResponse:
    receiver: WebhookReceiver = request.scope["app"].github_webhook  # service.app.Service
    try:
        return await receiver.receive(request)
    except ApiError as exc:  # refused (401 bad signature, 404 off, 400, 415, 503): counted, then answered as a problem
        metrics.webhook_delivery(request.headers.get("x-github-event", "none"), (exc.slug or str(exc.status)).replace("-", "_"))
        raise
