"""The framework's own floor: Starlette with one route answering /health with the raw floor's fixed
bytes; no middleware, no exception handlers. What any Starlette service pays before its own code runs."""

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bench.peers.raw_asgi import BODY, START


class FixedHealth:
    """A class instance, so Route passes requests to it as they are (no request/response wrapper)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": BODY})


app = Starlette(routes=[Route("/health", FixedHealth(), methods=["GET"])])
