"""Command line: `python -m service [serve | check-config | migrate | announcements … | hooks status|retry]`."""

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

from service.logs import configure_logging, logging_config
from service.settings import Settings, mask_url_password, settings_or_exit

if TYPE_CHECKING:
    from service.announcements.models import AnnouncementPatch
    from service.announcements.store import AnnouncementStore
    from service.hooks.outbox import Delivery, DeployOutbox
    from service.hooks.sender import Outcome


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
    limit_malloc_arenas(os.environ)
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


MALLOC_ARENAS = 2  # what Heroku advises for threaded web processes on glibc
# Blocks from 256 KiB up (a page of announcements, an encoded list) come from mmap and go back to the system when
# freed; a fixed threshold also stops glibc raising it after the first large block, which kept them on the heap.
MALLOC_MMAP_THRESHOLD = 256 * 1024


def limit_malloc_arenas(environ: MutableMapping[str, str]) -> None:
    """glibc gives each thread that allocates its own arena (up to 8 a core), and keeps what a burst freed in
    all of them: after 1,100 reads of 2 MB pages in the thread pool a worker stayed 50 MB above where it
    started (bench scenario 12). So: two arenas, as Heroku advises, and large blocks from mmap, for this process
    (mallopt, before its threads start) and for the workers it spawns (MALLOC_ARENA_MAX and
    MALLOC_MMAP_THRESHOLD_, which glibc reads at their start). Values given in the environment are kept;
    without glibc nothing happens. Measured after: at most 14 MB above the start, 93 MB at peak."""
    import ctypes

    environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
    environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MALLOC_MMAP_THRESHOLD))
    arenas = int(environ["MALLOC_ARENA_MAX"]) if environ["MALLOC_ARENA_MAX"].isdigit() else MALLOC_ARENAS
    threshold = environ["MALLOC_MMAP_THRESHOLD_"]
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.mallopt(-3, int(threshold) if threshold.isdigit() else MALLOC_MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


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
    "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED", "DYNO", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
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
            store.delete(args.id, if_match=None, now=datetime.now(UTC))
            print(f"deleted announcement {args.id}")
        elif args.action == "edit":
            updated = store.update(args.id, _edit_patch(args), now=datetime.now(UTC), if_match=None)
            sys.stdout.write(msgspec.json.encode(updated).decode() + "\n")
        elif args.action == "import":
            import_files(store, args.paths, dry_run=args.dry_run)
        elif args.action == "export":
            export_files(store, args.directory)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid announcement: {exc}") from None
    except ApiError as exc:
        raise SystemExit(f"{exc.title}: {exc.detail or ''}") from None
    finally:
        store.close()


def _edit_patch(args: argparse.Namespace) -> AnnouncementPatch:
    from service.announcements.models import AnnouncementPatch

    fields: dict[str, object] = {
        name: value
        for name in ("title", "slug", "summary", "pinned", "published_at", "expires_at")
        if (value := getattr(args, name)) is not None
    }
    if args.no_expiry:
        fields["expires_at"] = None
    if args.tags is not None:
        fields["tags"] = [tag.strip() for tag in args.tags.split(",") if tag.strip()]
    if args.body_file is not None:
        try:
            with open(args.body_file, encoding="utf-8") as file:
                fields["body"] = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"{args.body_file}: cannot be read as UTF-8 text ({exc.__class__.__name__})") from None
    if not fields:
        raise SystemExit("nothing to change: give at least one of --title, --slug, --summary, --body-file, --tags, …")
    return msgspec.convert(fields, AnnouncementPatch)


def import_files(store: AnnouncementStore, paths: list[str], *, dry_run: bool) -> None:
    """Upsert by slug, in one transaction: a bad file, or one the database refuses, writes nothing at all."""
    from service.announcements.files import BadFiles, read_files
    from service.announcements.store import Refused

    try:
        files, drafts = read_files(paths)
    except BadFiles as exc:
        raise SystemExit("\n".join([*exc.problems, "nothing imported"])) from None
    try:
        done = store.upsert([f.announcement for f in files], now=datetime.now(UTC), dry_run=dry_run)
    except Refused as exc:
        file = files[exc.index]
        errors = exc.error.errors or []
        line = file.lines.get(errors[0].field if errors else "slug", 1)
        what = "; ".join(f"{e.field}: {e.message}" for e in errors) or exc.error.detail
        raise SystemExit(f"{file.path}:{line}: {what}\nnothing imported") from None
    for file, (action, item) in zip(files, done, strict=True):
        if dry_run and action != "unchanged":
            print(f"would {action.removesuffix('d')} {item.slug} from {file.path}")
        else:
            print(f"{action} {item.slug} (id {item.id}) from {file.path}")
    for path in drafts:
        print(f"skipped {path}: draft")
    counts = {action: sum(1 for d in done if d.action == action) for action in ("created", "updated", "unchanged")}
    summary = ", ".join(f"{n} {action}" for action, n in counts.items())
    print(f"{summary}{', nothing written (dry run)' if dry_run else ''}")


def export_files(store: AnnouncementStore, directory: str) -> None:
    """One Markdown file per announcement (drafts, scheduled and expired included), named by its slug."""
    from pathlib import Path

    from service.announcements.files import file_name, markdown_file

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    items = store.list(now=datetime.now(UTC), limit=1_000_000, tag=None, include_all=True, after=None)
    for item in items:
        (target / file_name(item)).write_text(markdown_file(item), encoding="utf-8")
    print(f"exported {len(items)} announcement{'' if len(items) == 1 else 's'} to {target}")


def hooks(settings: Settings, action: str) -> None:
    """`status`: the pending and given-up deliveries; `retry`: every one of them, and the changes still inside the
    debounce window, sent now by this command, unless a running server holds the sender lease (then that server
    sends them within a second)."""
    import asyncio

    from service.announcements.store import AnnouncementStore
    from service.database import open_database
    from service.errors import ApiError
    from service.hooks.outbox import DeployOutbox

    if action == "retry" and not settings.deploy_hook_urls:
        raise SystemExit("DEPLOY_HOOK_URLS is not set here: nothing to send to")
    configure_logging(settings.log_level)  # the sender's log lines as JSON, as the server writes them
    database = open_database(settings.database_url, pool_size=1)
    database.open()
    outbox = DeployOutbox(database, events=settings.deploy_hook_events)
    failed = False
    try:
        if action == "retry":
            now = datetime.now(UTC)
            # Scheduled times that passed while no server ran: recorded now (once each, whoever looks first).
            AnnouncementStore(database, outbox=outbox).record_scheduled(now=now)
            moved = outbox.retry_now(now=now)
            print(f"{moved} deliver{'y' if moved == 1 else 'ies'} made due now")
            tried = asyncio.run(_send_due(settings, outbox))
            if tried is None:
                print("a running server holds the sender lease: it sends them within a second (see hooks status)")
            for delivery, outcome, detail in tried or []:
                done = {"delivered": "delivered", "retry": "failed, tried again later", "give_up": "given up"}[outcome]
                print(f"{delivery.id}  {delivery.label}  {done} ({detail})")
                failed = failed or outcome != "delivered"
        _print_hooks_status(outbox)
    except ApiError as exc:
        raise SystemExit(f"{exc.title}: {exc.detail or ''}") from None
    finally:
        database.close()
    if failed:
        raise SystemExit(1)  # a try that did not deliver: scripts can tell


async def _send_due(settings: Settings, outbox: DeployOutbox) -> list[tuple[Delivery, Outcome, str]] | None:
    from service.hooks.outbox import Target
    from service.hooks.sender import HookSender, build_hook_client

    async with build_hook_client() as http:
        sender = HookSender(
            outbox,
            targets=[Target.of(url) for url in settings.deploy_hook_urls],
            secret=settings.deploy_hook_secret,
            debounce=settings.deploy_hook_debounce,
            http=http,
        )
        try:
            return await sender.send_due_once()
        finally:
            await sender.stop()


def _print_hooks_status(outbox: DeployOutbox) -> None:
    now = datetime.now(UTC)
    for d in outbox.deliveries():
        when = (
            f"next try {d.next_attempt_at:%Y-%m-%dT%H:%M:%SZ}"
            if d.state == "pending"
            else f"given up {d.finished_at:%Y-%m-%dT%H:%M:%SZ}"
        )
        print(f"{d.id}  {d.label}  {d.state}  tries={d.attempts}  {when}  last={d.last_outcome or '-'}  changes={d.changes}")
    status = outbox.status(now=now)
    delivered = f"{status.last_delivered_at:%Y-%m-%dT%H:%M:%SZ}" if status.last_delivered_at else "never"
    print(
        f"{status.pending} pending ({status.retrying} being retried), {status.failed} given up in the last 24 h, "
        f"{status.waiting_changes} change{'s' if status.waiting_changes != 1 else ''} waiting for the debounce window; "
        f"last delivered {delivered}; sender {status.sender or 'none running'}"
    )


def _opened_store(settings: Settings) -> AnnouncementStore:
    from service.announcements.store import open_store

    hook_events = settings.deploy_hook_events if settings.deploy_hook_urls else None
    store = open_store(settings.database_url, pool_size=1, hook_events=hook_events)
    store.open()
    return store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP server on $PORT (the default)")
    commands.add_parser("check-config", help="print the effective settings, secrets masked; exit 2 if invalid")
    commands.add_parser("migrate", help="apply pending database migrations (Heroku's release phase)")
    manage = commands.add_parser("announcements", help="list, add, edit, delete, import or export announcements")
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
    edit = actions.add_parser("edit", help="change some fields of an announcement")
    edit.add_argument("id", type=int)
    edit.add_argument("--title")
    edit.add_argument("--slug")
    edit.add_argument("--summary")
    edit.add_argument("--body-file", help="a file holding the new Markdown body")
    edit.add_argument("--tags", help="comma-separated; replaces the tags (an empty string removes them)")
    edit.add_argument("--pinned", action=argparse.BooleanOptionalAction, default=None)
    edit.add_argument("--published-at", help="RFC 3339 time")
    edit.add_argument("--expires-at", help="RFC 3339 time")
    edit.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    into = actions.add_parser("import", help="create or update announcements from Markdown files with front matter")
    into.add_argument("paths", nargs="+", metavar="PATH", help="Markdown files, or directories of them")
    into.add_argument("--dry-run", action="store_true", help="print what would be created, updated or left alone")
    out = actions.add_parser("export", help="write every announcement as a Markdown file with front matter")
    out.add_argument("directory", metavar="DIR")
    hooks_parser = commands.add_parser("hooks", help="deploy hooks: list pending and failed deliveries, or send them now")
    hooks_parser.add_argument("action", choices=["status", "retry"], help="status: list them; retry: send them now")
    args = parser.parse_args(argv)

    settings = settings_or_exit()
    if args.command == "check-config":
        check_config(settings)
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "announcements":
        announcements(settings, args)
    elif args.command == "hooks":
        hooks(settings, args.action)
    else:
        serve(settings)


if __name__ == "__main__":
    main()
