"""What uvicorn runs for each connection: its httptools HTTP/1.1 protocol, plus a bound on the request head."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT = 10.0  # seconds a connection has to send a complete request head
CHECK_EVERY = HEAD_TIMEOUT / 4  # so a head is cut off between HEAD_TIMEOUT and 1.25 times that

_NOTHING_YET = object()  # a new connection that has not begun a request


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn closes a keep-alive connection left idle after a response (`timeout_keep_alive`), but waits
    for ever on one that has sent nothing yet or trickles its request head (slowloris). Here a connection
    must deliver a whole head within HEAD_TIMEOUT seconds of opening, or of the first byte of each later
    request, or it is closed without an answer (at most CHECK_EVERY later). The body is the app's to bound
    (REQUEST_TIMEOUT, 408).

    Nothing runs per request: one timer per connection wakes every CHECK_EVERY seconds for as long as the
    connection is this protocol's, looks at what uvicorn already keeps, and closes the connection if the
    same unfinished head has been waiting for HEAD_TIMEOUT. (Hooks on the parser's per-request callbacks
    cost 7,500 instructions a request, 4% of a /health, bench scenario 11.) A head is unfinished when
    uvicorn has begun a request (`scope`) that no request cycle has taken yet; while a response is being
    written, a pipelined head waits on us, not on the client, and is not counted.
    """

    # Slots, not instance attributes: three more keys in uvicorn's instance dict made its own attribute
    # reads slower on every request (1,800 instructions, callgrind).
    __slots__ = ("_waiting", "_waiting_since", "_head_timer")
    _waiting: Any  # the unfinished head seen at the last look (its scope, or _NOTHING_YET), or None
    _waiting_since: float
    _head_timer: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own
        super().connection_made(transport)
        self._waiting, self._waiting_since = _NOTHING_YET, self.loop.time()
        self._head_timer = self.loop.call_later(CHECK_EVERY, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _check_head(self) -> None:
        if self not in self.connections:  # handed over (a WebSocket upgrade) or gone: not ours to bound
            self._head_timer = None
            return
        now = self.loop.time()
        cycle, scope = self.cycle, getattr(self, "scope", None)  # uvicorn sets `scope` when a head begins
        if cycle is not None and (not cycle.response_complete or cycle.scope is scope):
            waiting = None  # answering (a pipelined head waits on us), or idle after a response (keep-alive)
        else:
            waiting = _NOTHING_YET if scope is None else scope
        if waiting is None:
            self._waiting = None
        elif waiting is not self._waiting:
            # A later head, first seen now, began at most CHECK_EVERY ago; the first head's clock (no cycle
            # yet) runs from the opening.
            if cycle is not None:
                self._waiting_since = now
            self._waiting = waiting
        elif now - self._waiting_since >= HEAD_TIMEOUT:
            self._head_timer = None
            self.transport.close()
            return
        self._head_timer = self.loop.call_later(CHECK_EVERY, self._check_head)


# How uvicorn is told to use it (its `http` option), by service.__main__ and the bench.
UVICORN_HTTP = f"{__name__}:{BoundedHeadProtocol.__name__}"
