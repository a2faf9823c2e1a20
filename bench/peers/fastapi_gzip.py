"""The FastAPI peer with compression the usual way: Starlette's GZipMiddleware (defaults: gzip level 9,
bodies of 500 bytes or more), which compresses every answer on every request."""

from starlette.middleware.gzip import GZipMiddleware

from bench.peers.fastapi_app import app

app.add_middleware(GZipMiddleware)
