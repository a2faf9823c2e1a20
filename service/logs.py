"""Every log line as one JSON object on stdout, where Heroku's log router reads it: the service's own,
uvicorn's (start-up, shutdown, errors, warnings) and any library's."""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
from types import TracebackType
from typing import Any

import msgspec

from service import tracing

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

