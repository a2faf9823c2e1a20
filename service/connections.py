"""What uvicorn runs for each connection: its own httptools HTTP/1.1 protocol, with the request head bounded in
time and in size.

uvicorn waits for ever on a connection that trickles its request head (slowloris; its issue #157) and lets
httptools gather a head of any size. `BoundedHeadProtocol` adds both bounds as a thin subclass: it keeps a
timer and a byte count beside uvicorn's own state and calls `super()` for everything else, so uvicorn's
parsing, response writing and keep-alive run as shipped.
"""

from __future__ import annotations

import asyncio

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT = 10.0  # seconds a connection has to send a complete request head
MAX_HEAD_BYTES = 64 * 1024  # a request head (request line and header fields) larger than this is refused


class _Problem(msgspec.Struct):
    type: str
    title: str
    status: int
    detail: str


_HEAD_TOO_LARGE_BODY = msgspec.json.encode(
    _Problem(
        "about:blank",
        "Request Header Fields Too Large",
        431,
        f"The request head exceeds the limit of {MAX_HEAD_BYTES} bytes.",
    )
)
# Written by hand: the head never reached the app (nor its error handlers), and the connection ends here.
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n" % len(_HEAD_TOO_LARGE_BODY)
) + _HEAD_TOO_LARGE_BODY


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, where a request head must be complete within HEAD_TIMEOUT seconds of the
    connection opening (the first request) or of its first byte (later ones), and within MAX_HEAD_BYTES.

    Too slow: the connection is closed without an answer (nobody is reading one). The rest of a body that the
    app answered without reading (a 401, a 405) is bounded the same way: it must arrive within HEAD_TIMEOUT
    of the answer. Too large: 431 problem+json when no response is under way, then the connection is closed;
    nothing more of the head is read or kept. The size is counted per chunk the transport delivers, so a head
    is cut at most one read (256 KiB) past the limit, never after gathering megabytes. A body is the app's to
    bound (max_body_size, the deadline).

    One timer per connection, not one per request: `owed_since` says from when the client owes bytes (a head,
    or the rest of a body answered early), and the timer, when it fires, looks at it and either closes the
    connection, waits for what is left of the time, or stops until the next head begins. A busy keep-alive
    connection arms about one timer per HEAD_TIMEOUT instead of one per request.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own
        super().connection_made(transport)
        self.head_bytes: int | None = 0  # bytes of the unfinished head; None between heads
        self.owed_since: float | None = self.loop.time()  # the first head is timed from the opening
        self.owed_timer: asyncio.TimerHandle | None = self.loop.call_later(HEAD_TIMEOUT, self.check_owed)

    def data_received(self, data: bytes) -> None:
        if self.head_bytes is not None:
            self.head_bytes += len(data)
        super().data_received(data)
        # Counted after parsing: a chunk that finishes the head may carry a body too. An unfinished head is
        # held by the parser, so it is cut after the chunk that takes it past the limit.
        if self.head_bytes is not None:
            if self.head_bytes > MAX_HEAD_BYTES:
                self.refuse_head()
        elif (cycle := self.cycle) is not None and cycle.response_complete and self.timeout_keep_alive_task is None:
            self.keep_alive_if_idle()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_bytes is None:  # a later request: counted from the next chunk, timed from now
            self.head_bytes = 0
        if self.owed_since is None:
            self.owed_since = self.loop.time()
        if self.owed_timer is None:
            self.owed_timer = self.loop.call_later(HEAD_TIMEOUT, self.check_owed)

    def on_headers_complete(self) -> None:
        self.head_bytes = self.owed_since = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.head_bytes is not None:  # a pipelined head waited on this answer: it is the client's from now
            self.owed_since = self.loop.time()
            return
        cycle = self.cycle  # (a request queued behind this answer is the cycle now, not yet answered)
        if cycle is not None and cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            # Answered before its body arrived (a 401 without a token, a 405): the rest of the body must come
            # within HEAD_TIMEOUT too, or a client trickling it a byte a second would hold the connection.
            self.owed_since = self.loop.time()
            if self.owed_timer is None:
                self.owed_timer = self.loop.call_later(HEAD_TIMEOUT, self.check_owed)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.head_bytes is None:  # the body's end, not a head in progress: nothing is owed
            self.owed_since = None

    def keep_alive_if_idle(self) -> None:
        """uvicorn cancels its keep-alive time-out whenever bytes arrive, and arms it when an answer ends. Bytes
        that arrive after the answer and leave the connection idle (the rest of a body answered early, or a
        stray CRLF between requests, which the parser skips) would leave it open for ever: the time-out is
        armed again, as uvicorn would. Not while a head or a body is owed or a request is queued, nor once the
        connection was handed over (a WebSocket) or is closing."""
        if self.owed_since is None and not self.pipeline and self in self.connections and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owed_timer is not None:
            self.owed_timer.cancel()
            self.owed_timer = None
        super().connection_lost(exc)

    def check_owed(self) -> None:
        """The timer: closes a connection whose client is late, else waits for what is left of its time."""
        self.owed_timer = None
        since = self.owed_since
        if since is None or self not in self.connections or self.transport.is_closing():  # nothing owed, or gone
            return  # (a connection handed over to a WebSocket has left `connections`)
        now = self.loop.time()
        if self.head_bytes is not None and self.cycle is not None and not self.cycle.response_complete:
            since = self.owed_since = now  # a pipelined head waits on our answer, not on the client
        if now - since < HEAD_TIMEOUT:
            self.owed_timer = self.loop.call_later(since + HEAD_TIMEOUT - now, self.check_owed)
            return
        self.transport.close()

    def refuse_head(self) -> None:
        self.owed_since = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no answer of the app is being written
            self.transport.write(HEAD_TOO_LARGE)
        self.transport.close()


# How uvicorn is told to use it (its `http` option), by service.__main__ and the bench.
UVICORN_HTTP = f"{__name__}:{BoundedHeadProtocol.__name__}"
