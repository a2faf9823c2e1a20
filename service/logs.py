"""Every log line as one JSON object on stdout, where Heroku's log router reads it: the service's own,
uvicorn's (start-up, shutdown, errors, warnings) and any library's; and the access line of every request
(`AccessLog`, written by service.middleware.AccessMiddleware)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import logging.config
import os
import sys
import threading
import time
from types import TracebackType
from typing import IO, Any

import msgspec
from starlette.types import Scope

from service import tracing
from service.tracing import RequestIds

_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """ts, level, logger, msg, pid; request_id and trace_id while a request runs; exc with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ids = tracing.current.get()
        request_id = getattr(record, "request_id", None) or (ids.request_id if ids else None)
        if request_id:
            line["request_id"] = request_id
        if ids is not None:
            line["trace_id"] = ids.trace_id
        line["pid"] = record.process
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


def logging_config(level: str) -> dict[str, Any]:
    """A logging.config.dictConfig for the whole process; uvicorn applies it in its supervisor and in
    every worker (`log_config`), so its own lines are JSON too."""
    level = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": handler},
        "loggers": {
            "service": {"handlers": ["stdout"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stdout"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # The service writes its own access line; uvicorn's stays off.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            # httpx names each request's URL at INFO; a build hook's URL is its secret (service.hooks).
            "httpx": {"level": "WARNING"},
        },
        # Libraries (asyncio, psycopg, httpx, Python warnings): warnings and errors only, still JSON.
        "root": {"handlers": ["stdout"], "level": "WARNING"},
    }


def configure_logging(level: str) -> None:
    logging.config.dictConfig(logging_config(level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    logging.getLogger("service").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("service").error("uncaught exception in thread %s", name, exc_info=exc_info)


class AccessLine(msgspec.Struct, gc=False, omit_defaults=True):
    ts: float
    level: str
    logger: str
    msg: str
    method: str
    path: str
    status: int
    duration_ms: float
    request_id: str
    trace_id: str
    client: str | None
    pid: int
    cut_off: bool = False  # the response began but its body did not finish: the connection was closed under it


class AccessLog:
    """One JSON line per request on stdout. With PYTHONUNBUFFERED (Heroku's default) every write to stdout is a
    system call, so lines are gathered and written together, at most FLUSH_EVERY apart (and at exit)."""

    FLUSH_EVERY = 0.05  # seconds a line may wait in the buffer
    FLUSH_AT = 64 * 1024  # bytes that are written at once, however recent

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.encoder = msgspec.json.Encoder()
        self.pid = os.getpid()  # tells the workers of one dyno apart
        self._pending = bytearray()
        atexit.register(self.flush)  # a graceful stop loses no line; `close` takes it back

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)

    def write(self, scope: Scope, status: int, nanoseconds: int, ids: RequestIds, *, cut_off: bool = False) -> None:
        """One request's line; its duration in milliseconds to the microsecond."""
        client = scope.get("client")
        line = AccessLine(
            time.time_ns() // 1_000_000 / 1000,  # to the millisecond
            "info",
            "service.access",
            "request",
            scope["method"],
            scope["path"],
            status,
            nanoseconds // 1000 / 1000,
            ids.request_id,
            ids.trace_id,
            f"{client[0]}:{client[1]}" if client else None,
            self.pid,
            cut_off,
        )
        pending = self._pending
        was_empty = not pending
        self.encoder.encode_into(line, pending, -1)
        pending += b"\n"
        if len(pending) >= self.FLUSH_AT:
            self.flush()
        elif was_empty:
            asyncio.get_running_loop().call_later(self.FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        """Write the gathered lines in one go (also at exit, so a graceful stop loses none)."""
        if not self._pending:
            return
        data = memoryview(bytes(self._pending))
        self._pending.clear()
        with contextlib.suppress(OSError, ValueError):  # stdout closed or gone: nothing to do about it here
            while data:
                written = self.stream.write(data)
                if written is None:  # a non-blocking stream that is full: drop rather than block the loop
                    break
                data = data[written:]
            self.stream.flush()
