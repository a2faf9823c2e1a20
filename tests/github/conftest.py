"""Fixtures of the GitHub tests: an app in process whose GitHub is the stand-in, and a deployment of real
server processes sharing one database."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.github_standin import TOKEN, GitHubStandIn
from tests.support import OpenClient, procfile_server, release_phase, running


@pytest.fixture
def github_client(make_settings: Callable[..., Settings]) -> OpenClient:
    """An app whose GitHub is the given stand-in (or URL); short timeouts so failures are quick."""

    @contextlib.asynccontextmanager
    async def open_client(target: GitHubStandIn | str, **env: str) -> AsyncIterator[httpx.AsyncClient]:
        url = target if isinstance(target, str) else target.url
        base = {"GITHUB_OWNER": "octo-dev", "GITHUB_API_URL": url, "GITHUB_TIMEOUT": "1", "GITHUB_TOKEN": TOKEN}
        async with running(create_app(make_settings(**{**base, **env}))) as client:
            yield client

    return open_client


Server = tuple[str, subprocess.Popen[bytes], Path]  # url, process, log


@pytest.fixture
def deployment(
    tmp_path: Path, standin: GitHubStandIn, database_url: str
) -> Iterator[Callable[..., contextlib.AbstractContextManager[Server]]]:
    """Starts servers that share one database, migrated first as Heroku's release phase does."""
    release_phase(database_url, tmp_path)
    count = iter(range(100))

    @contextlib.contextmanager
    def server(**overrides: str) -> Iterator[Server]:
        log = tmp_path / f"server-{next(count)}.log"
        settings = {
            "DATABASE_URL": database_url, "GITHUB_OWNER": "octo-dev", "GITHUB_API_URL": standin.url, "WEB_CONCURRENCY": "2",
            "GITHUB_TIMEOUT": "3", "ACCESS_LOG": "true", **overrides,
        }  # fmt: skip
        with procfile_server(settings, cwd=tmp_path, log=log) as (url, process):
            yield url, process, log

    yield server
