"""Per-request cost in process: uvicorn's own HTTP/1.1 protocol fed requests through an in-memory transport.

No sockets, no kernel, no load generator: what is left is the Python each contender runs for a request,
uvicorn's parsing and header writing included, with far less noise than a load test on a shared machine.
Scenario 11 uses it to show where the time goes.

    python -m bench.inprocess OUT.json APP PATH [--factory] [--requests N]

runs APP's lifespan, answers PATH once (filling caches), then 64 keep-alive connections ask for PATH in
turn, N requests per repeat, best of 5 repeats; writes {"us": µs per request, "status": ..., "bytes": ...}.
Access lines go to stdout, as in production: run it with stdout sent to /dev/null.

With --instructions it times nothing: run under `valgrind --tool=callgrind --instr-atstart=no`, it switches
callgrind's counting on for one repeat of N requests only (start-up, imports and warm-up are not counted),
so the output file's total divided by N is the instructions a request costs. That count is the same run
after run, whatever else the machine is doing, which no timing on a shared machine is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import ServerState

CONNECTIONS = 64
REQUEST = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


class MemoryTransport(asyncio.Transport):
    """What uvicorn writes to, kept in memory: the last response head and the byte count."""

    def __init__(self) -> None:
        super().__init__()
        self.head = b""
        self.written = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:5]) == b"HTTP/":
            self.head = bytes(data)
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def measure(config: Config, path: str, requests: int, *, instructions: bool = False) -> dict[str, object]:
    state = ServerState()
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(CONNECTIONS):
        protocol = config.http_protocol_class(config=config, server_state=state, app_state={}, _loop=loop)  # type: ignore[call-arg]
        transport = MemoryTransport()
        protocol.connection_made(transport)
        connections.append((protocol, transport))
    request = REQUEST % path.encode()

    async def serve(count: int) -> None:
        for _ in range(max(1, count // CONNECTIONS)):
            for protocol, _ in connections:
                protocol.data_received(request)
            while state.tasks:
                await asyncio.sleep(0)

    connections[0][0].data_received(request)  # the first answer may need GitHub: let it finish
    deadline = time.monotonic() + 30
    while state.tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await serve(requests // 10)
    best = float("inf")
    if instructions:
        _count_instructions(True)
        await serve(requests)
        _count_instructions(False)
    for _ in range(0 if instructions else 5):
        started = time.perf_counter()
        await serve(requests)
        best = min(best, (time.perf_counter() - started) / (max(1, requests // CONNECTIONS) * CONNECTIONS))
    head = connections[0][1].head
    served = max(1, requests // CONNECTIONS) * CONNECTIONS
    return {
        "us": None if instructions else best * 1e6,
        "requests": served,
        "status": int(head.split(b" ", 2)[1]) if head else 0,
        "head": head.decode("latin-1"),
    }


def _count_instructions(on: bool) -> None:
    """Switch callgrind's instrumentation of this process on or off (through its gdb server)."""
    subprocess.run(
        ["callgrind_control", "--instr=" + ("on" if on else "off"), str(os.getpid())], check=True, stdout=subprocess.DEVNULL
    )


async def run(
    app: str, path: str, *, factory: bool, requests: int, instructions: bool = False, http: str = "httptools"
) -> dict[str, object]:
    config = Config(
        app=app, factory=factory, lifespan="on", access_log=False, log_level="warning", server_header=False, http=http
    )
    config.load()
    lifespan = LifespanOn(config)
    await lifespan.startup()
    try:
        return await measure(config, path, requests, instructions=instructions)
    finally:
        await lifespan.shutdown()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.inprocess")
    parser.add_argument("out", type=Path)
    parser.add_argument("app")
    parser.add_argument("path")
    parser.add_argument("--factory", action="store_true")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind instead of timing")
    parser.add_argument("--http", default="httptools", help="uvicorn's HTTP protocol (a class, as in its --http option)")
    args = parser.parse_args()
    options = {"factory": args.factory, "requests": args.requests, "instructions": args.instructions, "http": args.http}
    result = uvloop.run(run(args.app, args.path, **options))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
