"""`Breaker`: store calls refused at once while the database is known to be down, one probe to find it back."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from service.announcements.store import RETRY_AFTER, StoreUnavailable


class Breaker:
    """A circuit breaker in front of the store, used only from the event loop.

    Closed, every call goes through. A call that finds the database unusable (StoreUnavailable, or no
    answer within the call timeout) opens it: for `retry_after` seconds every call is refused at once
    with the same problem, instead of each waiting out a pool or call timeout. Then one call is let
    through as a probe (half-open) while the others are still refused; the probe's failure opens it
    again, and any success closes it.
    """

    def __init__(self, *, retry_after: float = RETRY_AFTER, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self.clock = clock
        self._failure: StoreUnavailable | None = None  # None while closed
        self._probe_at = 0.0
        self._probing = False

    @property
    def closed(self) -> bool:
        """The database is not known to be down."""
        return self._failure is None

    def check(self) -> None:
        """Raise at once if a call now would be refused."""
        if self._failure is not None and (self._probing or self.clock() < self._probe_at):
            wait = max(1, math.ceil(self._probe_at - self.clock()))
            raise StoreUnavailable(str(self._failure.detail), retry_after=wait)

    def admit(self) -> bool:
        """Let a call through, or raise at once. True if the call is the probe."""
        self.check()
        if self._failure is None:
            return False
        self._probing = True
        return True

    def succeeded(self, probe: bool) -> None:
        self._failure = None
        self._probing = False

    def failed(self, probe: bool, failure: StoreUnavailable) -> None:
        self._failure = failure
        self._probe_at = self.clock() + self.retry_after
        if probe:
            self._probing = False

    def abandoned(self, probe: bool) -> None:
        """The call ended without telling anything about the database (a bug, a cancelled request)."""
        if probe:
            self._probing = False
