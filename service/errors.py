"""Errors as RFC 9457 problem details: the typed errors endpoints raise, the handlers that render them, and the
last-resort answer for everything else."""

from __future__ import annotations

import http
import logging
from typing import Annotated

import msgspec
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from service import tracing

PROBLEM_JSON = "application/problem+json"
logger = logging.getLogger("service.errors")


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    title: str
    status: Annotated[int, msgspec.Meta(ge=400, le=599)]
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """An error an endpoint raises on purpose; rendered as a problem with this status."""

    status = 500
    slug: str | None = None  # a specific problem type; None means about:blank

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.title = title or http.HTTPStatus(self.status).phrase


class MalformedJson(ApiError):
    status = 400
    slug = "malformed-json"


class Unauthorized(ApiError):
    status = 401
    slug = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="website-api"'})


class Forbidden(ApiError):
    status = 403
    slug = "forbidden"


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409
    slug = "conflict"


class PreconditionFailed(ApiError):
    status = 412
    slug = "precondition-failed"


class PayloadTooLarge(ApiError):
    status = 413
    slug = "payload-too-large"


class UnsupportedMediaType(ApiError):
    status = 415
    slug = "unsupported-media-type"


class InvalidInput(ApiError):
    status = 422
    slug = "invalid-input"

    def __init__(self, errors: list[FieldError]) -> None:
        fields = ", ".join(dict.fromkeys(e.field for e in errors))
        super().__init__(f"Invalid value for: {fields}", errors=errors, title="Invalid input")


class ServiceUnavailable(ApiError):
    status = 503
    slug = "unavailable"

    def __init__(self, detail: str, *, retry_after: int | None = None, title: str | None = None) -> None:
        headers = {"Retry-After": str(max(1, retry_after))} if retry_after is not None else None
        super().__init__(detail, headers=headers, title=title)


def request_id_of(scope: Scope) -> str | None:
    """The id of the request being answered (service.middleware.RequestContextMiddleware gives every request one)."""
    ids = tracing.current.get()
    return ids.request_id if ids is not None else None


def problem_response(
    scope: Scope,
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    slug: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The one way the service renders an error."""
    problem = Problem(
        type=f"urn:website-api:problem:{slug}" if slug else "about:blank",
        title=title or http.HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=scope.get("path"),
        request_id=request_id_of(scope),
        errors=errors,
    )
    return Response(_encoder.encode(problem), status_code=status, headers=headers, media_type=PROBLEM_JSON)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem_response(
        request.scope, exc.status, title=exc.title, detail=exc.detail, slug=exc.slug, errors=exc.errors, headers=exc.headers
    )


_HTTP_DETAILS = {
    404: "No resource at this path.",
    405: "This method is not allowed here; see the Allow header.",
}


def too_large_detail(limit: int | None) -> str:
    if limit is None:
        return "The request body is too large."
    return f"The request body exceeds the limit of {limit} bytes."


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method, …) in the same problem form."""
    assert isinstance(exc, HTTPException)
    phrase = http.HTTPStatus(exc.status_code).phrase
    detail = exc.detail if exc.detail and exc.detail != phrase else _HTTP_DETAILS.get(exc.status_code)
    if exc.status_code == 413:  # Starlette's max_body_size: the limit in force for this route
        return problem_response(
            request.scope, 413, slug="payload-too-large", detail=too_large_detail(request.scope.get(MAX_BODY_SIZE_SCOPE_KEY))
        )
    headers = dict(exc.headers or {})
    if "Allow" in headers:  # Starlette builds it from a set; give clients a stable order
        methods = {m.strip() for m in headers["Allow"].split(",")}
        headers["Allow"] = ", ".join(sorted(methods, key=lambda m: (_METHOD_ORDER.get(m, 99), m)))
    return problem_response(request.scope, exc.status_code, detail=detail, headers=headers)


_METHOD_ORDER = {m: i for i, m in enumerate(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])}


def unhandled_error(scope: Scope, exc: Exception) -> Response:
    """An exception no handler took: logged once, as JSON with the request id, and answered with a generic
    500 that names the id (the traceback goes to the log only).

    Starlette's own ServerErrorMiddleware answers 500 and then re-raises, so uvicorn logs the error a
    second time, as a plain-text traceback, and drops the client's keep-alive connection; the service's
    FallbackMiddleware (service.middleware) calls this first and lets the error go no further."""
    request_id = request_id_of(scope)
    logger.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return problem_response(
        scope,
        500,
        detail=f"An unexpected error occurred. Quote request id {request_id} when reporting it.",
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Starlette's 500 handler (ServerErrorMiddleware), for an error raised outside FallbackMiddleware."""
    return unhandled_error(request.scope, exc)


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
