"""What uvicorn runs for each connection: its httptools HTTP/1.1 protocol, plus a bound on the request head."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT = 10.0  # seconds a connection has to send a complete request head


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn closes a keep-alive connection left idle after a response (`timeout_keep_alive`), but waits
    for ever on one that has sent nothing yet or trickles its request head (slowloris). Here a connection
    must deliver a whole head within HEAD_TIMEOUT seconds of opening, or of the first byte of each later
    request, or it is closed without an answer. The body is the app's to bound (REQUEST_TIMEOUT, 408).

    One timer per connection, re-armed only when it fires: a request costs a clock read, not a timer.
    """

    _head_since: float | None = None  # when the head now awaited began; None between requests
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own
        super().connection_made(transport)
        self._head_began()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # the first request's clock started with the connection
            self._head_began()

    def on_headers_complete(self) -> None:
        self._head_since = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_began(self) -> None:
        self._head_since = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._check_head)

    def _check_head(self) -> None:
        self._head_timer = None
        if self._head_since is None:
            return  # between requests: uvicorn's keep-alive timeout applies
        now = self.loop.time()
        if self.cycle is not None and not self.cycle.response_complete:
            self._head_since = now  # a pipelined head waits on our answer, not on the client
        waited = now - self._head_since
        if waited >= HEAD_TIMEOUT:
            self.transport.close()
        else:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT - waited, self._check_head)
