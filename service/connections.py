"""What uvicorn runs for each connection: its httptools HTTP/1.1 protocol, plus a bound on the request head and
a quicker writer of response heads."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

HEAD_TIMEOUT = 10.0  # seconds a connection has to send a complete request head
CHECK_EVERY = HEAD_TIMEOUT / 4  # so a head is cut off between HEAD_TIMEOUT and 1.25 times that

_NOTHING_YET = object()  # a new connection that has not begun a request

_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))  # they change how uvicorn frames
_KNOWN_HEADERS = 1024  # headers remembered as checked; then all are forgotten (a request id is new every time)
_KNOWN_VALUE_BYTES = 128  # a longer value is checked every time rather than held
_checked: dict[tuple[bytes, bytes], bytes] = {}  # a header (name, value) that passed uvicorn's checks -> its line
_written_defaults: tuple[object, bytes] = (None, b"")  # uvicorn's default headers (its Date), and as written


class QuickHeadCycle(RequestResponseCycle):
    """uvicorn's request cycle, with the common response written for less. uvicorn checks every response
    header against two regular expressions and lower-cases its name, on every response: one header more on
    a /health cost 5,600 instructions (callgrind, bench scenario 11), and a /health sends seven. Here a
    header is checked once and its line remembered, so that only new ones (a request id, a length) are
    checked on each response, and uvicorn's Date header is written once a second, when uvicorn renews it.
    A /health went from 176.9 k to 166.0 k instructions (with a Date header; bare Starlette 154.4 k). What
    is written is always a line that passed uvicorn's checks.

    Only the plain case takes this path: bytes headers in tuples or lists, at most a Content-Length among
    those that frame the body (no Transfer-Encoding or Connection from the app), and a body that ends in
    one bytes message of exactly that length. Anything else, and anything this path would reject, goes to
    uvicorn's own `send` untouched, so errors and edge cases are uvicorn's to the byte; tests/
    test_connections.py checks that both write the same bytes, raise the same errors and reach the same
    state for generated messages, bytes-likes and one-shot iterables included.
    """

    async def send(self, message: Any) -> None:
        if self.disconnected or self.flow.write_paused or self.access_log:
            pass
        elif not self.response_started:
            if message["type"] == "http.response.start":
                head = self._plain_head(message)
                if head is not None:
                    self.response_started = True
                    self.waiting_for_100_continue = False
                    self.transport.write(head)
                    return
        elif (
            self.chunked_encoding is False
            and not self.response_complete
            and message["type"] == "http.response.body"
            and message.get("more_body", False) is False
            and self.scope["method"] != "HEAD"
        ):
            body = message.get("body", b"")
            if type(body) is bytes and len(body) == self.expected_content_length:
                self.expected_content_length = 0
                self.transport.write(body)
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()
                return
        await super().send(message)

    def _plain_head(self, message: Any) -> bytes | None:
        """The head uvicorn would write, or None where uvicorn's own path must run (it alone raises)."""
        global _written_defaults
        try:
            status = message["status"]
            content = [STATUS_LINE[status]]
            defaults = self.default_headers
            if type(defaults) is not list:
                return None
            snapshot = tuple(defaults)  # compared by content: a list changed in place is written anew
            seen, written = _written_defaults
            if snapshot != seen:
                written = b"".join([_plain_header(header) for header in snapshot])
                _written_defaults = snapshot, written
            content.append(written)
            length = None
            headers = message.get("headers", ())
            if type(headers) is not list and type(headers) is not tuple:
                return None  # read once only: a generator must reach uvicorn whole
            for header in headers:
                # A header seen before is written as it was then, if it is still plain bytes in a tuple (a
                # memoryview or a subclass of bytes may compare equal to bytes and yet differ).
                line = _checked.get(header) if type(header) is tuple else None
                if line is not None and type(header[0]) is bytes and type(header[1]) is bytes:
                    content.append(line)
                    continue
                # Otherwise only bytes in a tuple or a list: a one-shot iterable must reach uvicorn whole.
                if type(header) is not tuple and type(header) is not list:
                    return None
                name, value = header
                if type(name) is not bytes or type(value) is not bytes:
                    return None
                if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                    return None
                lower = name.lower()
                line = b"".join((lower, b": ", value, b"\r\n"))
                if lower in _FRAMING:
                    if lower != b"content-length" or length is not None:
                        return None
                    length = int(value.decode())
                elif type(header) is tuple and len(value) <= _KNOWN_VALUE_BYTES:
                    if len(_checked) >= _KNOWN_HEADERS:
                        _checked.clear()
                    _checked[header] = line
                content.append(line)
        except Exception:
            return None
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        if length is not None:
            self.expected_content_length = length
            self.chunked_encoding = False
        elif self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)


def _plain_header(header: tuple[bytes, bytes]) -> bytes:
    """One of uvicorn's default headers as written, if it is plain bytes that frame nothing."""
    if type(header) is not tuple or len(header) != 2 or type(header[0]) is not bytes or type(header[1]) is not bytes:
        raise ValueError("not a plain header")
    name, value = header
    lower = name.lower()
    if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value) or lower in _FRAMING:
        raise ValueError("not a plain header")
    return b"".join((lower, b": ", value, b"\r\n"))


def _building(cycle_class: type[RequestResponseCycle]) -> Callable[[HttpToolsProtocol], None]:
    """uvicorn's `on_headers_complete`, its own code run as written, building `cycle_class` where it builds
    its RequestResponseCycle (it names the class directly, with no hook to pass another). It runs with a
    copy of uvicorn's module globals taken at import: what is patched into that module later (in a test, by
    an instrumentation) does not reach it."""
    method = HttpToolsProtocol.on_headers_complete
    if "RequestResponseCycle" not in method.__code__.co_names:  # a uvicorn that builds its cycle elsewhere
        raise RuntimeError(f"uvicorn's on_headers_complete no longer builds its request cycle: {method}")
    built = types.FunctionType(
        method.__code__, {**vars(httptools_impl), "RequestResponseCycle": cycle_class}, method.__name__
    )
    built.__qualname__ = method.__qualname__
    return built


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

    The same timer closes a connection idle after a response for `timeout_keep_alive` (at most twice
    CHECK_EVERY later), in place of the timer uvicorn arms and cancels around every response (6,300
    instructions a /health, callgrind).
    """

    # Slots, not instance attributes: three more keys in uvicorn's instance dict made its own attribute
    # reads slower on every request (1,800 instructions, callgrind).
    __slots__ = ("_waiting", "_waiting_since", "_head_timer")
    _waiting: Any  # at the last look: the unfinished head (its scope, or _NOTHING_YET), the idle cycle, or None
    _waiting_since: float
    _head_timer: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own
        super().connection_made(transport)
        self._waiting, self._waiting_since = _NOTHING_YET, self.loop.time()
        self._head_timer = self.loop.call_later(CHECK_EVERY, self._check_head)

    on_headers_complete = _building(QuickHeadCycle)  # every request, pipelined or not, gets the quick cycle

    def on_response_complete(self) -> None:
        """uvicorn's, without arming its keep-alive timer: _check_head closes idle connections."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # pipelined requests start one after another
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)

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
        limit: float = HEAD_TIMEOUT
        waiting: object = None  # what the connection waits on (see _waiting), if anything
        if cycle is not None and not cycle.response_complete:
            pass  # answering (a pipelined head waits on us)
        elif cycle is not None and cycle.scope is scope:
            waiting, limit = cycle, self.timeout_keep_alive  # idle after a response (keep-alive)
        else:
            waiting = _NOTHING_YET if scope is None else scope
        if waiting is None:
            self._waiting = None
        elif waiting is not self._waiting:
            # A later head or an idle spell, first seen now, began at most CHECK_EVERY ago; the first
            # head's clock (no cycle yet) runs from the opening.
            if cycle is not None:
                self._waiting_since = now
            self._waiting = waiting
        elif now - self._waiting_since >= limit:
            self._head_timer = None
            self.transport.close()
            return
        self._head_timer = self.loop.call_later(CHECK_EVERY, self._check_head)


# How uvicorn is told to use it (its `http` option), by service.__main__ and the bench.
UVICORN_HTTP = f"{__name__}:{BoundedHeadProtocol.__name__}"
