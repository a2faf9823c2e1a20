"""The hand-written contract, served as YAML and JSON, and Swagger UI from assets shipped with the service."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import msgspec
import swagger_ui
import yaml
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from service.errors import NotFound
from service.http import BytesResponse, etag_for, not_modified

_PACKAGE_DIR = Path(__file__).resolve().parent
_SWAGGER_STATIC = Path(swagger_ui.__file__).resolve().parent / "static"

# name -> media type; the only files under /docs/ the service serves.
_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "init.js": "text/javascript; charset=utf-8",
}

_INIT_JS = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - API documentation</title>
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

# Swagger UI needs inline styles; everything else comes from this origin.
_DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
}


def spec_path() -> Path:
    """openapi.yaml sits inside the package when installed from a wheel, at the project root otherwise."""
    packaged = _PACKAGE_DIR / "openapi.yaml"
    return packaged if packaged.exists() else _PACKAGE_DIR.parent / "openapi.yaml"


@functools.cache
def load_spec() -> tuple[bytes, dict[str, Any]]:
    raw = spec_path().read_bytes()
    return raw, yaml.safe_load(raw)


@functools.cache
def _load_assets() -> dict[str, tuple[bytes, str]]:
    """Every asset with its ETag, read once before serving: no file I/O on the event loop."""
    assets = {}
    for name in _ASSETS:
        body = _INIT_JS if name == "init.js" else (_SWAGGER_STATIC / name).read_bytes()
        assets[name] = (body, etag_for(body))
    return assets


def build_routes() -> list[Route]:
    raw_yaml, spec = load_spec()
    assets = _load_assets()
    json_body = msgspec.json.encode(spec)
    page = _PAGE.format(title=spec["info"]["title"])

    async def openapi_yaml(request: Request) -> Response:
        return Response(raw_yaml, media_type="application/yaml")

    async def openapi_json(request: Request) -> Response:
        return Response(json_body, media_type="application/json")

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(page, headers=_DOCS_HEADERS)

    async def docs_asset(request: Request) -> BytesResponse:
        name = request.path_params["asset"]
        if name not in assets:
            raise NotFound(f"No documentation asset named {name!r}.")
        body, etag = assets[name]
        headers = [(b"etag", etag.encode()), (b"cache-control", b"public, max-age=86400")]
        if not_modified(request.scope, etag):
            return BytesResponse(304, b"", headers)
        return BytesResponse.of(body, headers, media_type=_ASSETS[name].encode())

    return [
        Route("/openapi.yaml", openapi_yaml, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/docs/{asset}", docs_asset, methods=["GET"]),
    ]
