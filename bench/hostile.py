"""Scenario 12, the hostile mix: what a stranger can make a worker hold (issue 25).

Each pattern a hostile-input probe found is replayed against one running server of this service (one
worker, then two), and each worker's RSS is read from /proc/<pid>/status before the pattern, every
50 ms while it runs (the peak) and after it, once the connections are gone. Nothing is asserted here:
the report says what the code of the day does, and its two goals (peak under 160 MB, back within 20 MB)
say whether issue 25 is done.

Every pattern is bounded in requests, bytes and seconds, and talks to 127.0.0.1 only. The raw-socket
patterns stop sending as soon as the server answers or closes, and give up at their time bound.
"""

from __future__ import annotations

import contextlib
import select
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from bench import harness
from bench.harness import Server, server
from bench.scenarios import ADMIN_TOKEN, SMOKE, Goal, Outcome, Profile

WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
MiB = 1024 * 1024
PEAK_GOAL_MB = 160.0  # issue 25: a worker's RSS at peak under any pattern
RETURN_GOAL_MB = 20.0  # ... and back within this much of where it started


@dataclass(frozen=True)
class Sizes:
    """How hard each pattern pushes: the issue's figures, or a few seconds' worth for --smoke."""

    announcements: int = 100
    cursor_requests: int = 1_100
    cursor_seconds: float = 60.0
    webhooks: int = 16
    webhook_bytes: int = 25 * MiB  # GitHub's cap on a delivery, and the service's on this route
    header_bytes: int = 50_000_000
    head_connections: int = 4
    head_bytes: int = 150_000_000
    head_seconds: float = 20.0  # the service cuts a slow head at 10 s
    long_ids: int = 20
    slow_read_seconds: float = 20.0  # the 1.5 MB bundle alone takes about 15 s: past the 10 s request deadline
    settle: float = 2.0  # seconds after a pattern before "after" is read
    workers: tuple[int, ...] = (1, 2)


SMOKE_SIZES = Sizes(
    announcements=10,
    cursor_requests=50,
    cursor_seconds=10.0,
    webhooks=2,
    webhook_bytes=2 * MiB,
    header_bytes=2_000_000,
    head_connections=1,
    head_bytes=4_000_000,
    head_seconds=5.0,
    long_ids=2,
    slow_read_seconds=2.0,
    settle=0.5,
    workers=(1,),
)


# -- watching the workers ----------------------------------------------------------------------


class Watch:
    """Each worker's RSS, sampled every 50 ms on a thread of its own from start() to stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = {pid: harness.rss_kib(pid) for pid in pids}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.05):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], harness.rss_kib(pid))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _mb(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def _statuses(seen: Counter[str]) -> str:
    return ", ".join(f"{status} ×{count}" for status, count in seen.most_common())


# -- raw sockets ------------------------------------------------------------------------------------


def _port(target: Server) -> int:
    return int(target.url.rsplit(":", 1)[1])


def _exchange(port: int, head: bytes, rest: Iterable[bytes] = (), *, seconds: float) -> str:
    """Send `head`, then `rest` chunk by chunk until the server answers or closes or `seconds` pass;
    then the status line's code, or what became of the connection."""
    stop_at = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        try:
            sock.sendall(head)
            for chunk in rest:
                if time.monotonic() > stop_at or select.select([sock], [], [], 0)[0]:
                    break  # out of time, or the server has answered (or closed): stop pushing
                sock.settimeout(max(0.1, stop_at - time.monotonic()))
                sock.sendall(chunk)
        except TimeoutError:
            pass  # the server stopped reading; see whether it says anything
        except OSError:
            pass  # closed or reset while we were sending: an answer may still be there to read
        return _status_line(sock, stop_at)


def _status_line(sock: socket.socket, stop_at: float) -> str:
    received = b""
    try:
        while b"\r\n" not in received and len(received) < 65536:
            sock.settimeout(max(0.1, stop_at - time.monotonic()))
            part = sock.recv(4096)
            if not part:
                break
            received += part
    except TimeoutError:
        return "no answer in time" if not received else "cut off"
    except OSError:
        if not received:
            return "reset"
    if not received:
        return "closed, no answer"
    line = received.split(b"\r\n", 1)[0].split()
    return line[1].decode("latin-1") if len(line) > 1 and line[0].startswith(b"HTTP/") else "not HTTP"


def _parallel(count: int, work: Callable[[int], str]) -> Counter[str]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return Counter(pool.map(work, range(count)))


# -- the patterns ------------------------------------------------------------------------------


def cursor_flood(target: Server, sizes: Sizes) -> Counter[str]:
    """(a) Forged cursors, each a new query string: `0.<18 nines>.<10^17 + i>`, 100 items a page."""
    stop_at = time.monotonic() + sizes.cursor_seconds
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(i: int) -> str:
        if time.monotonic() > stop_at:
            return "not sent (time bound)"
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=target.url, timeout=30)
            clients.append(client)
        try:
            response = client.get(f"/announcements?limit=100&cursor=0.999999999999999999.{10**17 + i}")
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return str(response.status_code)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return Counter(pool.map(one, range(sizes.cursor_requests)))
    finally:
        for client in clients:
            client.close()


def webhook_flood(target: Server, sizes: Sizes) -> Counter[str]:
    """(b) Concurrent deliveries with a wrong signature, each body as large as GitHub may send."""
    body = memoryview(b"a" * sizes.webhook_bytes)
    head = (
        b"POST /github/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-GitHub-Event: push\r\nX-GitHub-Delivery: hostile\r\nX-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    chunks = [body[i : i + MiB] for i in range(0, len(body), MiB)]
    return _parallel(sizes.webhooks, lambda _: _exchange(_port(target), head, chunks, seconds=60))


def _filler(total: int, piece: bytes) -> Iterator[bytes]:
    """`total` bytes of `piece` repeated, about a mebibyte a chunk (one buffer, sent again and again)."""
    chunk = piece * max(1, MiB // len(piece))
    for _ in range(-(-total // len(chunk))):
        yield chunk


def huge_header(target: Server, sizes: Sizes) -> Counter[str]:
    """(c) One GET /health whose one header field is `header_bytes` long."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: "
    rest = [*_filler(sizes.header_bytes, b"a" * 1024), b"\r\n\r\n"]
    return Counter([_exchange(_port(target), head, rest, seconds=sizes.head_seconds)])


def huge_heads(target: Server, sizes: Sizes) -> Counter[str]:
    """(c) Several connections each pushing a head of `head_bytes` in many 1 KiB header lines."""
    line = b"X-Filler: " + b"a" * 1012 + b"\r\n"
    rest = [*_filler(sizes.head_bytes, line), b"\r\n"]
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    return _parallel(sizes.head_connections, lambda _: _exchange(_port(target), head, rest, seconds=sizes.head_seconds))


def long_ids(target: Server, sizes: Sizes) -> Counter[str]:
    """(d) An id of 5,000 digits, past Python's 4,300-digit limit on int()."""
    with httpx.Client(base_url=target.url, timeout=10) as client:
        return Counter(str(client.get("/announcements/" + "9" * 5000).status_code) for _ in range(sizes.long_ids))


def slow_reader(target: Server, sizes: Sizes) -> Counter[str]:
    """(e) A small receive buffer, two large /docs assets and /health pipelined, read 4 KiB every 40 ms."""
    requests = b"".join(
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path
        for path in (b"/docs/swagger-ui-bundle.js", b"/docs/swagger-ui.css", b"/health")
    )
    stop_at = time.monotonic() + sizes.slow_read_seconds
    stream = bytearray()
    closed = False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", _port(target)))
        sock.sendall(requests)
        while time.monotonic() < stop_at and len(_responses(bytes(stream))[0]) < 3:
            try:
                part = sock.recv(4096)
            except OSError:
                closed = True
                break
            if not part:
                closed = True
                break
            stream += part
            time.sleep(0.04)
    seen, complete = _responses(bytes(stream))
    statuses = Counter(seen)
    if len(seen) < 3:
        statuses["closed before all 3 answers" if closed else "time bound (reader gave up)"] += 1
    if not complete and seen:
        statuses[f"last answer cut off ({seen[-1]})"] += 1
    return statuses


def _responses(stream: bytes) -> tuple[list[str], bool]:
    """Status codes of the responses in a pipelined stream (with Content-Length), and whether the last is complete."""
    statuses, at = [], 0
    while True:
        end = stream.find(b"\r\n\r\n", at)
        if end < 0:
            return statuses, at == len(stream)
        lines = stream[at:end].split(b"\r\n")
        status = lines[0].split()
        if len(status) < 2 or not status[0].startswith(b"HTTP/"):
            statuses.append("not HTTP")
            return statuses, False
        statuses.append(status[1].decode("latin-1"))
        length = next((int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.strip().lower() == b"content-length"), 0)
        at = end + 4 + length
        if at > len(stream):
            return statuses, False


PATTERNS: list[tuple[str, Callable[[Server, Sizes], Counter[str]]]] = [
    # (a) runs last: today it leaves a worker near 2 GB, which would hide what the others do.
    ("(d) GET /announcements/<5,000 digits>", long_ids),
    ("(e) slow reader: 2 large /docs assets + /health pipelined", slow_reader),
    ("(c) one GET /health with a 50 MB header", huge_header),
    ("(c) 4 connections pushing 150 MB heads", huge_heads),
    ("(b) 16 concurrent POST /github/webhook, 25 MiB, wrong signature", webhook_flood),
    ("(a) 1,100 GET /announcements?limit=100&cursor=<forged>", cursor_flood),
]


def _seed(target: Server, count: int) -> None:
    """`count` published announcements of 20,000 characters: 100 make a 2 MB page."""
    body = ("Hostile **Markdown** text, long enough to weigh. " * 400)[:20_000]
    with httpx.Client(base_url=target.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        for i in range(count):
            client.post("/announcements", json={"title": f"Long {i}", "body": body, "tags": ["news"]}).raise_for_status()


def _label(title: str, sizes: Sizes) -> str:
    """The pattern's title, with the smoke run's smaller figures where they differ."""
    if sizes == Sizes():
        return title
    return title + " (smoke: smaller)"


def hostile_mix(profile: Profile) -> list[Outcome]:
    """Scenario 12: every pattern, against one server with one worker, then one with two."""
    sizes = SMOKE_SIZES if profile is SMOKE else Sizes()
    rows: list[tuple[str, ...]] = []
    peaks, returns = [0.0], [0.0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="website-api-hostile-") as scratch:
        for workers in sizes.workers:
            env = {
                "GITHUB_OWNER": "octo-dev",
                "GITHUB_API_URL": "http://127.0.0.1:9",  # no GitHub: no pattern here needs one, none is called
                "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "DATABASE_URL": f"sqlite:///{Path(scratch) / f'hostile-{workers}.db'}",
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "ACCESS_LOG": "true",
                "LOG_LEVEL": "warning",
                "BENCH_CWD": scratch,
                **harness.PROCFILE_ENV,
                "WEB_CONCURRENCY": str(workers),
            }
            with server(f"ours, {workers} worker(s)", harness.PROCFILE, env) as target:
                _seed(target, sizes.announcements)
                pids = _wait_for_workers(target, workers)
                for title, pattern in PATTERNS:
                    before = {pid: harness.rss_kib(pid) for pid in pids}
                    with Watch(pids) as watch:
                        seen = pattern(target, sizes)
                        time.sleep(sizes.settle)
                    after = {pid: harness.rss_kib(pid) for pid in pids}
                    peaks.append(max(watch.peak.values()) / 1024)
                    returns.append(max(after[pid] - before[pid] for pid in pids) / 1024)
                    rows.append(
                        (
                            f"{_label(title, sizes)}, {workers} worker{'s' if workers > 1 else ''}",
                            " / ".join(_mb(before[pid]) for pid in pids),
                            " / ".join(_mb(watch.peak[pid]) for pid in pids),
                            " / ".join(_mb(after[pid]) for pid in pids),
                            _statuses(seen),
                        )
                    )
    return [
        Outcome(
            "12. Hostile mix: each worker's RSS under the patterns of issue 25 (one server, 1 and 2 workers)",
            table=[("Pattern", "before MB", "peak MB", "after MB", "statuses seen"), *rows],
            goals=[
                Goal("worker RSS at peak, worst pattern", max(peaks), PEAK_GOAL_MB, higher_is_better=False, unit=" MB"),
                Goal(
                    "worker RSS after − before, worst pattern", max(returns), RETURN_GOAL_MB, higher_is_better=False, unit=" MB"
                ),
            ],
            notes=[
                (
                    "Patterns run one after another against the same server, in the order shown; each row's before is "
                    "where the previous pattern left the worker. With 2 workers the kernel spreads the connections, and "
                    "each figure is given per worker."
                ),
                (
                    f"Peak: the largest VmRSS read every 50 ms while the pattern ran and {sizes.settle:g} s after; after: "
                    f"VmRSS {sizes.settle:g} s after the pattern's last connection ended."
                ),
                (
                    "(a) runs last: it fills the public read cache with one page per forged cursor, and what it leaves "
                    "would hide the others. Its announcements (100 of 20,000 characters) are created with the admin token "
                    "before the first pattern."
                ),
                (
                    "(c) and (e) speak raw HTTP/1.1 over sockets and stop sending once the server answers or closes; "
                    "'closed, no answer' means the server closed the connection without a status line."
                ),
                f"The whole scenario took {time.monotonic() - started:.0f} s.",
            ],
        )
    ]


def _wait_for_workers(target: Server, workers: int) -> list[int]:
    """The worker processes, once all of them have started (a supervisor spawns them one by one)."""
    deadline = time.monotonic() + 20
    pids = target.workers()
    while len(pids) < workers and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = target.workers()
    with contextlib.suppress(httpx.HTTPError):  # one request each, so every worker has imported what it serves
        for _ in range(4 * workers):
            httpx.get(f"{target.url}/health", timeout=5)
    return pids
