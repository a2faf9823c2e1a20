"""What uvicorn runs for each connection (service.connections): the bounds on request heads in time and size,
driven in process through uvicorn's own protocol with HEAD_TIMEOUT made short (tests/test_faults_server.py
checks the same over real sockets)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import msgspec
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service import connections

pytestmark = pytest.mark.anyio
HEAD = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def resume_reading(self) -> None:
        pass


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(connections, "HEAD_TIMEOUT", 0.4)
    return 0.4


def connection(answer_after: float, keep_alive: float = 5, app: Any = None) -> tuple[connections.BoundedHeadProtocol, Transport]:
    async def default_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await asyncio.sleep(30)
            return
        await asyncio.sleep(answer_after)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = Config(
        app=app or default_app, http="service.connections:BoundedHeadProtocol", lifespan="off", log_level="warning",
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]  # any number of seconds works
    )  # fmt: skip
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    assert isinstance(protocol, connections.BoundedHeadProtocol)
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_connection_that_sends_nothing_or_part_of_a_head_is_closed_after_the_timeout(short_timeout: float) -> None:
    silent, silent_transport = connection(answer_after=0)
    partial, partial_transport = connection(answer_after=0)
    partial.data_received(HEAD[:20])
    await asyncio.sleep(short_timeout * 0.75)
    assert not silent_transport.closed and not partial_transport.closed  # not before the timeout
    await asyncio.sleep(short_timeout * 0.75)
    assert silent_transport.closed and partial_transport.closed
    assert silent_transport.written == partial_transport.written == b""  # closed without an answer


async def test_after_an_answer_idle_keep_alive_stays_open_and_the_next_head_is_bounded_again(short_timeout: float) -> None:
    protocol, transport = connection(answer_after=0)
    protocol.data_received(HEAD)
    await asyncio.sleep(short_timeout * 2)  # answered at once, then idle: uvicorn's keep-alive applies
    assert transport.written.startswith(b"HTTP/1.1 200") and not transport.closed
    protocol.data_received(HEAD[:20])  # the next request's head begins, and stalls
    await asyncio.sleep(short_timeout * 1.5)
    assert transport.closed


async def test_a_pipelined_head_waiting_on_a_slow_answer_is_not_the_clients_delay(short_timeout: float) -> None:
    protocol, transport = connection(answer_after=short_timeout * 3)
    protocol.data_received(HEAD + HEAD[:20])  # a request, and the start of the next while the first is answered
    await asyncio.sleep(short_timeout * 2.5)
    assert not transport.closed and transport.written == b""
    await asyncio.sleep(short_timeout * 2)  # answered at 3 timeouts; the second head is the client's from then on
    assert transport.written.startswith(b"HTTP/1.1 200") and transport.closed


async def test_the_first_head_is_timed_from_the_opening_not_from_its_first_byte(short_timeout: float) -> None:
    protocol, transport = connection(answer_after=0)
    await asyncio.sleep(short_timeout * 0.75)
    protocol.data_received(HEAD[:1])  # a byte just before the time is up does not buy another HEAD_TIMEOUT
    await asyncio.sleep(short_timeout * 0.6)
    assert transport.closed


async def test_an_upgraded_connection_is_no_longer_bounded(short_timeout: float) -> None:
    protocol, transport = connection(answer_after=0)
    transport.set_protocol(protocol)
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
    protocol.data_received(upgrade)
    await asyncio.sleep(short_timeout * 2)
    assert transport.written.startswith(b"HTTP/1.1 101") and transport.get_protocol() is not protocol
    assert not transport.closed


async def test_a_connection_idle_after_its_answers_is_closed_after_the_keep_alive_timeout(short_timeout: float) -> None:
    protocol, transport = connection(answer_after=0, keep_alive=0.3)
    for _ in range(3):  # requests closer together than the keep-alive timeout keep the connection
        protocol.data_received(HEAD)
        await asyncio.sleep(0.2)
        assert not transport.closed
    assert transport.written.count(b"HTTP/1.1 200") == 3
    await asyncio.sleep(0.3)  # idle for 0.5 s since the last answer: uvicorn closed it after 0.3 s
    assert transport.closed


async def test_a_later_head_gets_the_whole_timeout_even_when_the_first_was_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first head's clock starts with the connection; a later one's when it is first seen."""
    monkeypatch.setattr(connections, "HEAD_TIMEOUT", 0.4)
    protocol, transport = connection(answer_after=0)
    await asyncio.sleep(0.25)
    protocol.data_received(HEAD + HEAD[:20])  # answered at once; the next head begins 0.25 s after the opening
    await asyncio.sleep(0.3)
    # Timed from the opening it was cut off at 0.4 s, only 0.15 s into it.
    assert transport.written.startswith(b"HTTP/1.1 200") and not transport.closed
    await asyncio.sleep(0.2)  # 0.5 s after it began
    assert transport.closed


async def test_a_head_over_the_size_limit_is_answered_431_and_the_connection_closed() -> None:
    protocol, transport = connection(answer_after=0)
    protocol.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk = b"a" * 16384
    sent = 0
    while not transport.closed and sent < 50 * 1024 * 1024:  # a client that would push 50 MB
        protocol.data_received(chunk)
        sent += len(chunk)
    assert transport.closed
    assert sent <= connections.MAX_HEAD_BYTES + len(chunk), "the head was read far past the limit"
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"content-type: application/problem+json" in head
    assert msgspec.json.decode(body)["status"] == 431


async def test_a_head_just_under_the_limit_and_a_large_body_in_one_chunk_are_served() -> None:
    """The size bound is the head's: a body arriving with it in one read does not count."""
    received: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        received.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    protocol, transport = connection(answer_after=0, app=app)
    filler = b"a" * (connections.MAX_HEAD_BYTES - 200)
    body = b"b" * 100_000
    protocol.data_received(
        b"POST /x HTTP/1.1\r\nHost: x\r\nX-Fill: " + filler + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    await asyncio.sleep(0.05)
    assert transport.written.startswith(b"HTTP/1.1 200"), transport.written[:200]
    assert received == [body]


def test_uvicorn_still_has_the_hooks_the_head_bound_extends() -> None:
    """BoundedHeadProtocol extends seven methods of uvicorn's HttpToolsProtocol and uses eight of its
    attributes; a uvicorn release that renames one breaks the bound, and this test says so by name."""
    for name in (
        "connection_made", "connection_lost", "data_received", "on_message_begin", "on_headers_complete",
        "on_response_complete", "on_message_complete",
    ):  # fmt: skip
        assert callable(getattr(HttpToolsProtocol, name, None)), (
            f"uvicorn {uvicorn.__version__}: HttpToolsProtocol.{name} is gone"
        )
    source = inspect.getsource(HttpToolsProtocol)
    for attribute in (
        "self.cycle", "self.connections", "self.transport", "self.loop", "self.timeout_keep_alive_task",
        "self.timeout_keep_alive", "def timeout_keep_alive_handler", "self.pipeline",
    ):  # fmt: skip
        assert attribute in source, f"uvicorn {uvicorn.__version__}: HttpToolsProtocol no longer keeps {attribute}"


async def test_the_rest_of_a_body_answered_early_must_arrive_within_the_timeout(short_timeout: float) -> None:
    """A 401 or 405 is answered before the body is read; a client trickling the declared body a byte at a time
    held the connection for as long as the body took (~100 s). Now the rest has HEAD_TIMEOUT."""
    protocol, transport = connection(answer_after=0)  # answers without reading the body
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a")
    for _ in range(int(short_timeout * 1.5 / 0.05)):
        await asyncio.sleep(0.05)
        if transport.closed:
            break
        protocol.data_received(b"a")  # a byte every 50 ms: each would have reset uvicorn's keep-alive timer
    assert transport.written.startswith(b"HTTP/1.1 200") and transport.closed


async def test_a_body_that_arrives_whole_after_an_early_answer_keeps_the_connection(short_timeout: float) -> None:
    protocol, transport = connection(answer_after=0)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n" + b"ab")
    await asyncio.sleep(short_timeout / 4)
    protocol.data_received(b"cd")
    await asyncio.sleep(short_timeout * 1.5)
    assert not transport.closed
    protocol.data_received(HEAD)
    await asyncio.sleep(0.05)
    assert transport.written.count(b"HTTP/1.1 200") == 2


async def test_a_connection_idle_after_a_body_answered_early_is_closed_after_the_keep_alive_timeout(
    short_timeout: float,
) -> None:
    """The body's bytes cancel uvicorn's keep-alive timer, which the early answer had armed: idle afterwards,
    the connection stayed open for ever."""
    protocol, transport = connection(answer_after=0, keep_alive=0.3)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n" + b"ab")
    await asyncio.sleep(0.1)
    protocol.data_received(b"cd")  # the whole body, within HEAD_TIMEOUT
    await asyncio.sleep(0.2)
    assert not transport.closed, "idle for less than the keep-alive timeout"
    await asyncio.sleep(0.3)
    assert transport.closed, "idle for longer than the keep-alive timeout"


async def test_a_busy_keep_alive_connection_keeps_one_timer_rather_than_one_a_request(short_timeout: float) -> None:
    """The head bound arms a timer when a connection opens and looks at the time owed when it fires; requests
    that come and go before then arm none of their own."""
    protocol, transport = connection(answer_after=0)
    timer = protocol.owed_timer
    for _ in range(20):
        protocol.data_received(HEAD)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert transport.written.count(b"HTTP/1.1 200") == 20 and not transport.closed
    assert protocol.owed_timer is timer and timer is not None and not timer.cancelled()
    await asyncio.sleep(short_timeout * 1.25)  # it fired with nothing owed: stopped, until a head begins
    assert protocol.owed_timer is None and not transport.closed
    protocol.data_received(HEAD[:20])
    assert protocol.owed_timer is not None
    await asyncio.sleep(short_timeout * 1.25)
    assert transport.closed


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip


async def test_a_connection_upgraded_after_a_request_is_not_closed_by_the_keep_alive_timeout(short_timeout: float) -> None:
    """uvicorn makes no new cycle for an upgrade, so the one the connection answered before is still there,
    complete: that is not an early answer whose body ended, and no keep-alive timer is armed again."""
    protocol, transport = connection(answer_after=0, keep_alive=0.2)
    transport.set_protocol(protocol)
    protocol.data_received(HEAD)
    await asyncio.sleep(0.05)
    protocol.data_received(UPGRADE)
    await asyncio.sleep(0.6)  # past the keep-alive time-out and a head time-out
    assert b"HTTP/1.1 101" in transport.written and transport.get_protocol() is not protocol
    assert not transport.closed


async def test_an_upload_queued_behind_a_slow_answer_is_not_taken_for_an_early_answer(short_timeout: float) -> None:
    """A POST pipelined behind a GET is the protocol's cycle when the GET's answer ends; its body is still
    arriving, but nothing has answered it: it is the app's to read, not a body owed after an answer."""
    uploads: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(short_timeout / 2)
        else:
            size, more = 0, True
            while more:
                message = await receive()
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
            uploads.append(size)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    protocol, transport = connection(answer_after=0, app=app)
    protocol.data_received(HEAD + b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n" + b"a")
    for _ in range(39):  # a byte every 30 ms: three head time-outs in all, the app reading each
        await asyncio.sleep(0.03)
        assert not transport.closed
        protocol.data_received(b"a")
    await asyncio.sleep(0.05)
    assert uploads == [40] and transport.written.count(b"HTTP/1.1 200") == 2 and not transport.closed


async def test_a_stray_crlf_between_requests_does_not_keep_an_idle_connection_open(short_timeout: float) -> None:
    """The parser skips an empty line before a request (RFC 9112 §2.2) without beginning one, and the bytes
    cancelled uvicorn's keep-alive time-out: the idle connection is still closed after it."""
    protocol, transport = connection(answer_after=0, keep_alive=0.3)
    protocol.data_received(HEAD)
    await asyncio.sleep(0.05)
    protocol.data_received(b"\r\n")
    await asyncio.sleep(0.2)
    assert not transport.closed, "idle for less than the keep-alive timeout"
    await asyncio.sleep(0.3)
    assert transport.closed and transport.written.count(b"HTTP/1.1 200") == 1
