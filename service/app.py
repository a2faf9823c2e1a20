"""ASGI app assembly: `create_app(settings)` wires routes, middleware, error handlers and the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Lifespan

from service import docs, health, metrics, tracing
from service.announcements import routes as announcement_routes
from service.announcements.access import Announcements
from service.announcements.store import SqlStore, open_store
from service.errors import EXCEPTION_HANDLERS
from service.github import routes as github_routes
from service.github.cache import UpstreamCache
from service.github.client import GitHubClient, build_http_client
from service.github.shared import SharedTier
from service.github.webhook import WEBHOOK_MAX_BODY_BYTES, WebhookReceiver
from service.http import StaticFirstRouter
from service.middleware import EdgeMiddleware
from service.readiness import ReadinessProbe
from service.settings import Settings, load_settings, settings_or_exit
from service.tracing import OpenTelemetry, otel_or_exit

logger = logging.getLogger("service.app")
CORS_EXPOSED = ["ETag", "Location", "Link", "Retry-After", "X-Request-ID", "X-Cache", "Age"]


def create_app(
    settings: Settings | None = None,
    *,
    announcements_class: type[Announcements] = Announcements,
    otel: OpenTelemetry | None = None,
) -> Starlette:
    """The service. `announcements_class` lets the bench swap in a variant that misbehaves on purpose;
    `otel` exports traces (built from the OTEL_* variables by the module-level `app`)."""
    settings = settings if settings is not None else load_settings()
    series = metrics.configure(settings.metrics_token is not None)
    tracing.active = otel

    @contextlib.asynccontextmanager
    async def lifespan(app: Service) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as resources:
            if otel is not None:  # closed last: exports every span, the shutdown's included
                resources.push_async_callback(run_in_threadpool, otel.shutdown)
            http = await resources.enter_async_context(build_http_client(api_url=settings.github_api_url, token=settings.github_token))
            _observe_github_calls(http, otel, series)
            app.announcements = announcements = announcements_class(
                open_store(settings.database_url, pool_size=settings.database_pool_size),
                admin_token=settings.admin_token,
                concurrency=settings.database_pool_size,
            )
            await announcements.start()
            resources.push_async_callback(announcements.stop)
            # GitHub answers are shared by every process through the same database (with an owner to serve).
            store, shared = announcements.store, None
            if isinstance(store, SqlStore) and settings.github_owner:
                shared = SharedTier(store, token=settings.github_token)
            cache = UpstreamCache(
                ttl=settings.github_cache_ttl, stale_ttl=settings.github_stale_ttl, timeout=settings.github_timeout, shared=shared
            )
            app.github = github = GitHubClient(http, owner=settings.github_owner, cache=cache)
            app.github_webhook = WebhookReceiver(github, secret=settings.github_webhook_secret)
            cache.start()
            resources.push_async_callback(cache.close)
            app.readiness = {"database": announcements.readiness, "github": github.readiness}
            logger.info("started: %s database, GitHub owner %s", announcements.store.kind, settings.github_owner or "(not configured)")
            yield
        logger.info("stopped: GitHub client and database connections closed")

    cors = None
    if settings.cors_origins:
        cors = {
            "allow_origins": list(settings.cors_origins),
            "allow_methods": ["GET", "HEAD", "POST", "PATCH", "DELETE"],
            "allow_headers": ["Authorization", "Content-Type", "If-Match", "If-None-Match", "X-Request-ID"],
            "expose_headers": CORS_EXPOSED,
            "max_age": 600,
        }
    edge = Middleware(
        EdgeMiddleware,
        access_log=settings.access_log,
        metrics=series,
        otel=otel,
        timeout=settings.request_timeout,
        max_body_bytes=settings.max_body_bytes,
        body_limits={"/github/webhook": WEBHOOK_MAX_BODY_BYTES},
        cors=cors,
        handlers=EXCEPTION_HANDLERS,
    )
    app = Service(
        routes=[
            *health.routes,
            *github_routes.routes,
            *announcement_routes.routes,
            *docs.build_routes(),
            Route("/metrics", metrics.MetricsEndpoint(settings.metrics_token, series), methods=["GET"]),
        ],
        middleware=[edge],
        lifespan=lifespan,
    )
    return app


class Service(Starlette):
    """Starlette, less the two layers it puts around the routes, ServerErrorMiddleware outside and
    ExceptionMiddleware inside: EdgeMiddleware is the outermost layer and answers every error itself,
    through the exception handlers it is given, so those two would only cost time on every request
    (about 1.6 µs of a 14 µs /health, bench scenario 11).

    What the lifespan builds is kept in typed attributes, which routes read as
    `request.scope["app"].github`: `app.state.github` would cost half a microsecond a read (Starlette's
    State answers through __getattr__, after a failed lookup), on every GitHub and announcements read.
    Routes are found by service.http.StaticFirstRouter."""

    announcements: Announcements
    github: GitHubClient
    github_webhook: WebhookReceiver
    readiness: dict[str, ReadinessProbe]

    def __init__(self, *, routes: list[BaseRoute], lifespan: Lifespan[Service], middleware: list[Middleware]) -> None:
        super().__init__(routes=routes, lifespan=lifespan, middleware=middleware)
        self.router = StaticFirstRouter(routes, lifespan=lifespan)

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = self.router
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


def _observe_github_calls(http: httpx.AsyncClient, otel: OpenTelemetry | None, series: metrics.Series | None) -> None:
    """GitHub calls carry the request's trace (as OpenTelemetry client spans when exporting) and report
    the rate limit left."""
    if otel is not None:
        otel.instrument(http)
    else:
        http.event_hooks["request"].append(tracing.send_traceparent)
    if series is not None:
        http.event_hooks["response"].append(metrics.github_response)


def __getattr__(name: str) -> Any:
    """`service.app:app` for uvicorn, built on first access so importing this module reads no environment."""
    if name != "app":
        raise AttributeError(name)
    from service.logs import configure_logging

    settings = settings_or_exit()
    configure_logging(settings.log_level)
    globals()["app"] = application = create_app(settings, otel=otel_or_exit())
    return application

