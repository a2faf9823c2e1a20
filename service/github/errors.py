"""What goes wrong between this service and GitHub (its API and its webhooks), as problems a route
can raise as they are.

    ApiError (service.errors)
    ├── UpstreamFailure         GitHub could not answer usefully; a cached copy may stand in for it
    │   ├── UpstreamTimeout         504  no answer within GITHUB_TIMEOUT
    │   ├── UpstreamBroken          502  refused or reset connection, a 5xx, or a body GitHub does not document
    │   ├── UpstreamRateLimited     503  rate limit used up; Retry-After says until when
    │   ├── CredentialsRejected     503  GITHUB_TOKEN refused (401)
    │   ├── OwnerNotConfigured      503  GITHUB_OWNER unset
    │   └── OwnerNotFound           502  no such user or organisation
    ├── WebhookRejected         401  a webhook delivery without a valid X-Hub-Signature-256
    └── WebhookMalformed        400  a signed delivery without an event name, or a payload that is not an event
"""

from __future__ import annotations

from service.errors import ApiError


class UpstreamFailure(ApiError):
    """The upstream could not answer usefully; a cached copy may stand in for it."""


class UpstreamTimeout(UpstreamFailure):
    status = 504
    slug = "upstream-timeout"


class UpstreamBroken(UpstreamFailure):
    """Connection refused or reset, a 5xx, or a body that is not what GitHub documents."""

    status = 502
    slug = "upstream-failed"


class UpstreamRateLimited(UpstreamFailure):
    status = 503
    slug = "upstream-rate-limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"GitHub's rate limit is used up; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
            title="GitHub rate limit reached",
        )


class CredentialsRejected(UpstreamFailure):
    status = 503
    slug = "github-credentials-rejected"

    def __init__(self) -> None:
        super().__init__("GitHub rejected the configured GITHUB_TOKEN.", title="GitHub credentials rejected")


class OwnerNotConfigured(UpstreamFailure):
    status = 503
    slug = "github-owner-not-configured"

    def __init__(self) -> None:
        super().__init__("Set GITHUB_OWNER to serve a GitHub owner's repositories.", title="GitHub owner not configured")


class OwnerNotFound(UpstreamFailure):
    status = 502
    slug = "github-owner-not-found"

    def __init__(self, owner: str) -> None:
        super().__init__(f"GitHub has no user or organisation named {owner!r}.", title="GitHub owner not found")


class WebhookRejected(ApiError):
    status = 401
    slug = "invalid-signature"

    def __init__(self, detail: str) -> None:
        # 401 names a scheme: here, GitHub's signature header.
        challenge = {"WWW-Authenticate": 'X-Hub-Signature-256 realm="github-webhook"'}
        super().__init__(detail, headers=challenge, title="Invalid signature")


class WebhookMalformed(ApiError):
    status = 400
    slug = "malformed-webhook"
