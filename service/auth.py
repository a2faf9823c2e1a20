"""`BearerToken`: one secret checked against `Authorization: Bearer …`, in constant time (admin and metrics)."""

from __future__ import annotations

import hashlib
import hmac


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class BearerToken:
    """A configured token. Digests are compared, so neither the token nor its length leaks through timing;
    the token itself is not kept."""

    __slots__ = ("_digest",)

    def __init__(self, token: str) -> None:
        self._digest = _digest(token)

    def __repr__(self) -> str:
        return "BearerToken(***)"

    def matches(self, authorization: str | None) -> bool:
        """Whether an Authorization header value carries this token with the Bearer scheme (any case)."""
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(_digest(given.strip()), self._digest)


def is_bearer(authorization: str | None) -> bool:
    """Whether the header uses the Bearer scheme at all (other schemes, like a preview's Basic, are not ours)."""
    return authorization is not None and authorization.partition(" ")[0].lower() == "bearer"
