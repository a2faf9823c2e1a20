"""What uvicorn runs for each connection (service.connections): the bound on request heads, driven in process
through uvicorn's own protocol with HEAD_TIMEOUT made short (tests/test_faults_server.py checks the same over
real sockets), and the quick response heads, checked against uvicorn's own request cycle."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
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
    monkeypatch.setattr(connections, "CHECK_EVERY", 0.05)
    return 0.4


def connection(answer_after: float, keep_alive: float = 5) -> tuple[connections.BoundedHeadProtocol, Transport]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await asyncio.sleep(30)
            return
        await asyncio.sleep(answer_after)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = Config(
        app=app, http="service.connections:BoundedHeadProtocol", lifespan="off", log_level="warning",
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
    assert protocol.timeout_keep_alive_task is None  # no timer of uvicorn's own, armed and cancelled per answer
    await asyncio.sleep(0.3)  # idle for 0.5 s since the last answer: closed after 0.3 s, at most 0.1 s later
    assert transport.closed


async def test_a_later_head_gets_the_whole_timeout_even_when_the_first_was_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first head's clock starts with the connection; a later one's when it is first seen."""
    monkeypatch.setattr(connections, "HEAD_TIMEOUT", 0.4)
    monkeypatch.setattr(connections, "CHECK_EVERY", 0.3)
    protocol, transport = connection(answer_after=0)
    await asyncio.sleep(0.25)
    protocol.data_received(HEAD + HEAD[:20])  # answered at once; the next head begins 0.25 s after the opening
    await asyncio.sleep(0.5)
    # Timed from the opening it was cut off at the check at 0.6 s, only 0.35 s into it.
    assert transport.written.startswith(b"HTTP/1.1 200") and not transport.closed
    await asyncio.sleep(0.35)
    assert transport.closed


# Response heads: QuickHeadCycle against uvicorn's own RequestResponseCycle.

DATE = [(b"date", b"Tue, 24 Nov 2026 19:00:00 GMT")]
header_names = st.sampled_from(
    [b"content-type", b"Content-Type", b"x-request-id", b"content-length", b"Content-Length", b"transfer-encoding",
     b"Connection", b"cache-control", b"bad name", b"x\x00y", b"", b"vary"]
) | st.binary(max_size=6)  # fmt: skip
header_values = st.sampled_from(
    [b"0", b"2", b"5", b"-1", b" 3", b"1_0", b"abc", b"chunked", b"close", b"keep-alive, Close", b"nosniff",
     b"a\r\nb", b"\tok", b"\x7f", "é".encode()]
) | st.binary(max_size=6)  # fmt: skip
# What the ASGI spec lets an app send, beyond bytes in tuples: lists, one-shot iterables, other bytes-likes.
shapes = st.sampled_from([tuple, tuple, tuple, list, iter])
def as_text(data: bytes) -> str:
    return data.decode("latin-1")


kinds = st.sampled_from([bytes, bytes, bytes, bytes, memoryview, bytearray, type("Bytes", (bytes,), {}), as_text])
starts = st.fixed_dictionaries(
    {"type": st.just("http.response.start"),
     "status": st.sampled_from([200, 204, 304, 404, 599, 600, 99, "200"]),
     "headers": st.lists(st.tuples(shapes, kinds, header_names, kinds, header_values), max_size=6)}
)  # fmt: skip
bodies = st.fixed_dictionaries(
    {"type": st.sampled_from(["http.response.body", "http.response.body", "http.response.start"]),
     "body": st.tuples(kinds, st.binary(max_size=6)) | st.none()},
    optional={"more_body": st.sampled_from([True, False, 0, None])},
)  # fmt: skip


def made(start: dict[str, Any], rest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fresh messages from their description (a one-shot iterable serves one cycle only)."""
    headers = [shape((name_kind(name), value_kind(value))) for shape, name_kind, name, value_kind, value in start["headers"]]
    bodies = [{**body, "body": body["body"] and body["body"][0](body["body"][1])} for body in rest]
    return [{**start, "headers": headers}, *bodies]


def written_by(
    cycle_class: type[RequestResponseCycle],
    method: str,
    keep_alive: bool,
    defaults: list[tuple[bytes, bytes]],
    messages: list[dict[str, Any]],
    expect_100: bool = False,
) -> list[Any]:
    """What a cycle writes and becomes, message by message, with the error each message raised."""
    transport = Transport()
    completed: list[bool] = []
    cycle = cycle_class(
        scope={"type": "http", "method": method},  # type: ignore[typeddict-item]  # all that send reads
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=defaults,
        message_event=asyncio.Event(),
        expect_100_continue=expect_100,
        keep_alive=keep_alive,
        on_response=lambda: completed.append(True),
    )
    seen: list[Any] = []
    for message in messages:
        sending = cycle.send(message)  # type: ignore[arg-type]
        try:
            sending.send(None)
            raise AssertionError("send waited, with the transport never paused")
        except StopIteration:
            error = None
        except Exception as exc:
            error = (type(exc), str(exc))
        seen.append((error, transport.written, transport.closed, len(completed), cycle.response_started,
                     cycle.response_complete, cycle.chunked_encoding, cycle.expected_content_length, cycle.keep_alive,
                     cycle.waiting_for_100_continue))  # fmt: skip
    return seen


@settings(max_examples=600, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    keep_alive=st.booleans(),
    expect_100=st.booleans(),
    defaults=st.sampled_from([[], DATE, [(b"Date", b"x"), (b"server", b"uvicorn")], [(b"content-length", b"0")],
                              [(b"x-bad", b"a\nb")], tuple(DATE), [[b"date", b"x"]]]),  # fmt: skip
    start=starts,
    rest=st.lists(bodies, max_size=3),
)
def test_a_quick_head_writes_what_uvicorn_writes_and_fails_where_it_fails(
    method: str, keep_alive: bool, expect_100: bool, defaults: list[tuple[bytes, bytes]], start: dict[str, Any],
    rest: list[dict[str, Any]],
) -> None:
    ours = written_by(connections.QuickHeadCycle, method, keep_alive, defaults, made(start, rest), expect_100)
    assert ours == written_by(RequestResponseCycle, method, keep_alive, defaults, made(start, rest), expect_100)


def test_a_header_equal_to_a_checked_one_but_not_bytes_reaches_uvicorn() -> None:
    class Shouting(bytes):
        def lower(self) -> bytes:
            return self.upper()

    def sent(name: Any) -> list[dict[str, Any]]:
        return [{"type": "http.response.start", "status": 200, "headers": [(name, b"1"), (b"content-length", b"0")]}]

    written_by(connections.QuickHeadCycle, "GET", True, DATE, sent(b"x-a"))  # the bytes twin, now remembered
    for name in (memoryview(b"x-a"), Shouting(b"x-a")):
        ours = written_by(connections.QuickHeadCycle, "GET", True, DATE, sent(name))
        assert ours == written_by(RequestResponseCycle, "GET", True, DATE, sent(name))
    assert ours[0][0] is None and b"X-A: 1\r\n" in ours[0][1]


def test_default_headers_changed_in_place_are_written_anew() -> None:
    defaults = list(DATE)
    messages: list[dict[str, Any]] = [{"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}]
    written_by(connections.QuickHeadCycle, "GET", True, defaults, messages)
    defaults.append((b"x-added", b"1"))
    ours = written_by(connections.QuickHeadCycle, "GET", True, defaults, messages)
    assert ours == written_by(RequestResponseCycle, "GET", True, defaults, messages)
    assert b"x-added: 1\r\n" in ours[0][1]


def test_headers_given_as_an_iterator_reach_uvicorn_whole() -> None:
    def messages() -> list[dict[str, Any]]:
        headers = iter([(b"x-a", b"b"), (b"x-b", b"a\nb")])  # read once: uvicorn must see the bad one too
        return [{"type": "http.response.start", "status": 200, "headers": headers}]

    ours = written_by(connections.QuickHeadCycle, "GET", True, DATE, messages())
    assert ours == written_by(RequestResponseCycle, "GET", True, DATE, messages())
    assert ours[0][0] == (RuntimeError, "Invalid HTTP header value.")


def test_the_plain_response_takes_the_quick_path_and_others_reach_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property above holds trivially if every message went to uvicorn; this is the check it does not."""
    reached: list[str] = []

    async def uvicorns_send(self: RequestResponseCycle, message: Any) -> None:
        reached.append(message["type"])

    monkeypatch.setattr(RequestResponseCycle, "send", uvicorns_send)
    plain: list[dict[str, Any]] = [
        {"type": "http.response.start", "status": 200, "headers": [(b"Content-Length", b"2"), (b"x-a", b"b")]},
        {"type": "http.response.body", "body": b"ok"},
    ]
    assert written_by(connections.QuickHeadCycle, "GET", True, DATE, plain)[-1][1] == (
        b"HTTP/1.1 200 OK\r\ndate: Tue, 24 Nov 2026 19:00:00 GMT\r\ncontent-length: 2\r\nx-a: b\r\n\r\nok"
    )
    assert reached == []
    streamed: list[dict[str, Any]] = [
        {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"b")]},
        {"type": "http.response.body", "body": b"o", "more_body": True},
    ]
    written_by(connections.QuickHeadCycle, "GET", True, DATE, streamed)
    assert reached == ["http.response.body"]  # chunked: the head is quick, the body uvicorn's
    written_by(connections.QuickHeadCycle, "GET", True, DATE, [{**plain[0], "headers": [(b"x-a", b"a\nb")]}])
    assert reached == ["http.response.body", "http.response.start"]


def test_the_headers_remembered_as_checked_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "_KNOWN_HEADERS", 3)
    monkeypatch.setattr(connections, "_checked", {})
    long = (b"x-long", b"v" * (connections._KNOWN_VALUE_BYTES + 1))
    for n in range(10):
        headers = [(b"x-request-id", str(n).encode()), (b"content-length", b"0"), long]
        messages: list[dict[str, Any]] = [{"type": "http.response.start", "status": 200, "headers": headers}]
        assert written_by(connections.QuickHeadCycle, "GET", True, DATE, messages) == written_by(
            RequestResponseCycle, "GET", True, DATE, messages
        )
        assert 0 < len(connections._checked) <= 3
    assert (b"x-request-id", b"9") in connections._checked and long not in connections._checked


async def test_the_protocol_answers_through_the_quick_cycle() -> None:
    protocol, transport = connection(answer_after=0)
    protocol.data_received(HEAD)
    await asyncio.sleep(0.05)
    assert type(protocol.cycle) is connections.QuickHeadCycle
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n") and transport.written.endswith(b"\r\n\r\nok")
