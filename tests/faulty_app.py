"""The service plus one route that fails on purpose, for tests of what a real server process does after an
unexpected error. Never deployed: `python -m tests.faulty_app` runs it under uvicorn with the very options
`python -m service serve` uses, so only the extra route differs from production."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.__main__ import uvicorn_options
from service.app import create_app
from service.logs import configure_logging
from service.settings import settings_or_exit


async def boom(request: Request) -> Response:
    raise RuntimeError("a bug the service did not foresee")


def app() -> Starlette:
    """The factory uvicorn calls in each worker, like `service.app:app`."""
    settings = settings_or_exit()
    configure_logging(settings.log_level)
    application = create_app(settings)
    application.router.routes.append(Route("/_test/boom", boom))
    return application


if __name__ == "__main__":
    import uvicorn

    uvicorn.run("tests.faulty_app:app", factory=True, **uvicorn_options(settings_or_exit()))  # type: ignore[arg-type]
