"""ASGI app assembly: `create_app(settings)` wires routes, middleware, error handlers and the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware

from service import docs, health
from service.announcements import routes as announcement_routes
from service.announcements.access import Announcements
from service.announcements.feeds import FeedSite
from service.announcements.store import AnnouncementStore
from service.auth import BearerToken
from service.database import open_database
from service.errors import EXCEPTION_HANDLERS
from service.github import routes as github_routes
from service.github.cache import UpstreamCache
from service.github.client import GitHubClient, build_http_client
from service.github.shared import SharedTier
from service.github.webhook import WebhookReceiver
from service.hooks.outbox import DeployOutbox, Target
from service.hooks.sender import HookSender, Watcher, build_hook_client
from service.logs import AccessLog
from service.metrics_endpoint import metrics_route
from service.middleware import (
    AccessMiddleware,
    CorsMiddleware,
    FallbackMiddleware,
    RequestContextMiddleware,
)
from service.readiness import ReadinessProbe
from service.settings import Settings, load_settings, settings_or_exit
from service.telemetry import Telemetry
from service.tracing import OpenTelemetry, otel_or_exit

logger = logging.getLogger("service.app")
CORS_EXPOSED = ["ETag", "Location", "Link", "Retry-After", "X-Request-ID", "X-Cache", "Age"]


class AppState(Protocol):
    """What the lifespan puts on `app.state`, and routes read from `request.app.state` (Starlette's State)."""

    announcements: Announcements
    github: GitHubClient
    webhook: WebhookReceiver
    hooks: HookSender | None  # None unless DEPLOY_HOOK_URLS is set
    readiness: dict[str, ReadinessProbe]


def feed_site(settings: Settings) -> FeedSite | None:
    """Where the feeds link to, or None without SITE_URL."""
    if settings.site_url is None:
        return None
    return FeedSite(settings.site_url.rstrip("/"), settings.announcement_path, settings.site_title)


def _hook_watchers(outbox: DeployOutbox, announcements: Announcements, github: GitHubClient) -> list[Watcher]:
    """What the deploy-hook sender looks at once a second: changes that no write makes."""
    watchers: list[Watcher] = []
    if outbox.wants("announcements"):
        watchers.append(announcements.record_scheduled)
    if outbox.wants("github") and github.owner is not None:
        watchers.append(lambda now: github.refresh_views())
    return watchers


def create_app(
    settings: Settings | None = None,
    *,
    announcements_class: type[Announcements] = Announcements,
    otel: OpenTelemetry | None = None,
) -> Starlette:
    """The service. `announcements_class` lets the bench swap in a variant that misbehaves on purpose;
    `otel` exports traces (built from the OTEL_* variables by the module-level `app`)."""
    settings = settings if settings is not None else load_settings()
    telemetry = Telemetry(metrics=settings.metrics_token is not None, otel=otel)
    access_log = AccessLog() if settings.access_log else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as resources:
            resources.push_async_callback(telemetry.close)  # closed last: exports every span, the shutdown's included
            if access_log is not None:
                resources.callback(access_log.close)
            http = await resources.enter_async_context(
                build_http_client(api_url=settings.github_api_url, token=settings.github_token)
            )
            telemetry.instrument(http)
            state: AppState = app.state
            database = open_database(settings.database_url, pool_size=settings.database_pool_size)
            # Deploy hooks on: writes (and GitHub refreshes, if chosen) record why the site should rebuild.
            outbox = DeployOutbox(database, events=settings.deploy_hook_events) if settings.deploy_hook_urls else None
            state.announcements = announcements = announcements_class(
                AnnouncementStore(database, outbox=outbox),
                admin_token=settings.admin_token,
                concurrency=settings.database_pool_size,
                telemetry=telemetry,
                site=feed_site(settings),
            )
            await announcements.start()  # opens the database (and migrates SQLite); its stop closes it
            resources.push_async_callback(announcements.stop)
            # GitHub answers are shared by every process through the same database (with an owner to serve).
            shared = SharedTier(database, token=settings.github_token, outbox=outbox) if settings.github_owner else None
            cache = UpstreamCache(
                ttl=settings.github_cache_ttl,
                stale_ttl=settings.github_stale_ttl,
                timeout=settings.github_timeout,
                shared=shared,
                telemetry=telemetry,
            )
            state.github = github = GitHubClient(
                http, owner=settings.github_owner, cache=cache, authenticated=settings.github_token is not None
            )
            state.webhook = WebhookReceiver(github, secret=settings.github_webhook_secret, telemetry=telemetry)
            cache.start()
            resources.push_async_callback(cache.close)
            state.readiness = {"database": announcements.readiness, "github": github.readiness}
            state.hooks = None
            if outbox is not None:
                state.hooks = hooks = HookSender(
                    outbox,
                    targets=[Target.of(url) for url in settings.deploy_hook_urls],
                    secret=settings.deploy_hook_secret,
                    debounce=settings.deploy_hook_debounce,
                    http=await resources.enter_async_context(build_hook_client()),
                    watchers=_hook_watchers(outbox, announcements, github),
                    on_outcome=telemetry.deploy_hook_outcome,
                )
                hooks.start()
                resources.push_async_callback(hooks.stop)  # before the database closes, after requests end
                state.readiness["deploy_hooks"] = hooks.readiness
            logger.info(
                "started: %s database, GitHub owner %s, deploy hooks %s",
                announcements.store.kind,
                settings.github_owner or "(not configured)",
                f"to {len(settings.deploy_hook_urls)} URL(s) on {', '.join(settings.deploy_hook_events)}" if outbox else "off",
            )
            yield
        logger.info("stopped: GitHub client and database connections closed")

    # Outermost first. Starlette puts its ServerErrorMiddleware (and the app's max_body_size) outside these,
    # and its ExceptionMiddleware, which runs EXCEPTION_HANDLERS, inside.
    middleware = [
        Middleware(RequestContextMiddleware, telemetry=telemetry),
        Middleware(AccessMiddleware, telemetry=telemetry, access_log=access_log),
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CorsMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "If-Match", "If-None-Match", "X-Request-ID"],
                expose_headers=CORS_EXPOSED,
                max_age=600,
            )
        )
    middleware.append(
        Middleware(
            FallbackMiddleware,
            seconds=settings.request_timeout,
            max_body_size=settings.max_body_bytes,
            answered_at_once=health.ANSWERED_AT_ONCE,
        )
    )
    metrics_token = BearerToken(settings.metrics_token) if settings.metrics_token else None
    app = Starlette(
        routes=[
            *health.routes,
            *github_routes.routes,
            *announcement_routes.routes,
            *docs.build_routes(),
            metrics_route(metrics_token, telemetry.series),
        ],
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # A path with a trailing slash is a 404, not a redirect: Starlette builds the redirect's absolute Location
    # from the Host header, which a client chooses (Host: evil.example would be repeated, and cached).
    app.router.redirect_slashes = False
    return app


def __getattr__(name: str) -> Any:
    """`service.app:app` for uvicorn, built on first access so importing this module reads no environment."""
    if name != "app":
        raise AttributeError(name)
    from service.logs import configure_logging

    settings = settings_or_exit()
    configure_logging(settings.log_level)
    globals()["app"] = application = create_app(settings, otel=otel_or_exit())
    return application
