"""Command line: `python -m service [serve | check-config | migrate | announcements …]`."""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from service.logs import logging_config
from service.settings import Settings, mask_url_password, settings_or_exit

if TYPE_CHECKING:
    from service.announcements.store import AnnouncementStore


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """How the web process runs on Heroku: behind its router, inside its shutdown window."""
    from service.connections import UVICORN_HTTP

    return {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.web_concurrency,
        "proxy_headers": True,
        "forwarded_allow_ips": "*",  # only Heroku's router can reach a dyno
        "timeout_keep_alive": 100,  # above the router's 90 s idle timeout, so the router closes first
        "http": UVICORN_HTTP,  # closes connections that never finish a request head
        "timeout_graceful_shutdown": 20,  # in-flight requests get 20 s of Heroku's 30 s before SIGKILL
        "server_header": False,  # no "Server: uvicorn": what runs the service is nobody else's business
        "access_log": False,  # the service writes its own JSON access line
        "log_level": settings.log_level,
        "log_config": logging_config(settings.log_level),  # uvicorn's own lines as JSON too, in every process
    }


def serve(settings: Settings) -> None:
    import uvicorn

    from service.tracing import otel_or_exit

    otel_or_exit(check_only=True)  # a missing extra stops start-up here, before any worker starts
    made = None
    if settings.metrics_token:  # one scrape covers every worker: their metric files go to one directory
        directory, created = prepare_multiprocess_directory(os.environ)
        made = directory if created else None
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again once it is done; that
    # second one lands here and becomes a clean exit 0 instead of "killed by SIGTERM".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    options = uvicorn_options(settings)
    try:
        if settings.web_concurrency == 1:
            uvicorn.run("service.app:app", **options)  # type: ignore[arg-type]
            return
        from service.workers import Workers

        config = uvicorn.Config("service.app:app", **options)  # type: ignore[arg-type]
        Workers(config, sockets=[config.bind_socket()]).run()
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def prepare_multiprocess_directory(environ: MutableMapping[str, str]) -> tuple[str, bool]:
    """Before the workers start (they inherit `environ`, and prometheus_client reads it on import): an
    empty directory for their metric files, so totals start from zero with each start of the server.
    Returns it, and whether it was made here (a temporary directory) rather than given."""
    given = environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    directory = given or tempfile.mkdtemp(prefix="website-api-metrics-")
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)
    environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory, not given


# Read by the libraries they configure (OpenTelemetry's SDK, prometheus_client) or by Heroku's runtime, not by
# Settings; printed too, so check-config shows every variable the service reads.
PASSED_ON = (
    "PROMETHEUS_MULTIPROC_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED", "DYNO",
)  # fmt: skip
PASSED_ON_SECRETS = ("OTEL_EXPORTER_OTLP_HEADERS",)  # an exporter's API key travels here


def check_config(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    environ = os.environ if environ is None else environ
    view = settings.public_view()
    for name in PASSED_ON:
        value = environ.get(name) or None
        view[name] = "***" if value is not None and name in PASSED_ON_SECRETS else mask_url_password(value) if value else None
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(view)).decode() + "\n")


def migrate(settings: Settings) -> None:
    """Every package's migrations not yet applied (`service.database.SCHEMA_PACKAGES`)."""
    from service.database import open_database
    from service.errors import ApiError

    database = open_database(settings.database_url, pool_size=1)
    database.open()
    try:
        applied = database.migrate()
    except ApiError as exc:  # e.g. the database is unreachable: one line in the release log, exit 1
        raise SystemExit(f"migration failed: {exc.detail or exc.title}") from None
    finally:
        database.close()
    print(f"applied migrations {applied}" if applied else "schema already up to date")


def announcements(settings: Settings, args: argparse.Namespace) -> None:
    from service.announcements.models import NewAnnouncement
    from service.errors import ApiError

    store = _opened_store(settings)
    try:
        if args.action == "list":
            now = datetime.now(UTC)
            for item in store.list(now=now, limit=10_000, tag=None, include_all=True, after=None):
                sys.stdout.write(msgspec.json.encode(item).decode() + "\n")
        elif args.action == "add":
            fields = {"title": args.title, "body": args.body, "tags": args.tag or [], "pinned": args.pinned}
            fields.update({k: v for k, v in (("published_at", args.published_at), ("expires_at", args.expires_at)) if v})
            created = store.create(msgspec.convert(fields, NewAnnouncement), now=datetime.now(UTC))
            sys.stdout.write(msgspec.json.encode(created).decode() + "\n")
        elif args.action == "delete":
            store.delete(args.id, if_match=None)
            print(f"deleted announcement {args.id}")
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid announcement: {exc}") from None
    except ApiError as exc:
        raise SystemExit(f"{exc.title}: {exc.detail or ''}") from None
    finally:
        store.close()


def _opened_store(settings: Settings) -> AnnouncementStore:
    from service.announcements.store import open_store

    store = open_store(settings.database_url, pool_size=1)
    store.open()
    return store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP server on $PORT (the default)")
    commands.add_parser("check-config", help="print the effective settings, secrets masked; exit 2 if invalid")
    commands.add_parser("migrate", help="apply pending database migrations (Heroku's release phase)")
    manage = commands.add_parser("announcements", help="list, add or delete announcements from a shell")
    actions = manage.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every announcement, drafts and expired included, as JSON lines")
    add = actions.add_parser("add", help="publish an announcement")
    add.add_argument("--title", required=True)
    add.add_argument("--body", required=True)
    add.add_argument("--tag", action="append", help="repeat for several tags")
    add.add_argument("--pinned", action="store_true")
    add.add_argument("--published-at", help="RFC 3339 time; default now (a future time schedules it)")
    add.add_argument("--expires-at", help="RFC 3339 time")
    delete = actions.add_parser("delete", help="delete an announcement")
    delete.add_argument("id", type=int)
    args = parser.parse_args(argv)

    settings = settings_or_exit()
    if args.command == "check-config":
        check_config(settings)
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "announcements":
        announcements(settings, args)
    else:
        serve(settings)


if __name__ == "__main__":
    main()
