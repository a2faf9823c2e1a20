"""Async GitHub REST client for one owner: typed decoding, rate-limit respect, failures as named errors."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import anyio
import httpx
import msgspec

from service import API_NAME, metrics
from service.errors import NotFound
from service.github.cache import NOT_MODIFIED, Entry, Fetched, Lookup, NotModified, UpstreamCache
from service.github.errors import (
    CredentialsRejected,
    OwnerNotConfigured,
    OwnerNotFound,
    UpstreamBroken,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from service.github.models import Owner, Repository
from service.readiness import Check

logger = logging.getLogger("service.github")
T = TypeVar("T")

PER_PAGE = 100
MAX_RATE_LIMIT_WAIT = 3600  # GitHub's rate-limit window; a reset further off is not believed
MAX_PAGES = 50  # 5,000 repositories; a Link chain longer than that is not followed
# Names that are not among the owner's listed repositories (misspelt, made up, or an old name GitHub
# still redirects) are looked up upstream only within this budget, so requests for random names cannot
# spend the rate limit (60 calls an hour without a token) that refreshing the list needs.
UNLISTED_LOOKUP_BURST = 5
UNLISTED_LOOKUP_EVERY = 120.0  # seconds to regain one lookup: at most 30 an hour once the burst is spent


class _UpstreamMissing(Exception):
    """GitHub answered 404."""


def build_http_client(*, api_url: str, token: str | None) -> httpx.AsyncClient:
    """The process's one connection pool to GitHub; owned and closed by the app's lifespan. It has no
    timeout of its own: `GitHubClient` gives each whole operation GITHUB_TIMEOUT, pages included."""
    headers = {
        "User-Agent": f"{API_NAME} (+https://github.com)",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(
        base_url=api_url.rstrip("/"),
        headers=headers,
        timeout=None,
        # Enough to overlap every waiting request when answers are slow; idle ones are dropped after a minute.
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=60),
        follow_redirects=True,  # a renamed repository answers 301 to its new location
        max_redirects=3,
    )


_owner_decoder = msgspec.json.Decoder(Owner)
_repositories_decoder = msgspec.json.Decoder(list[Repository])
_repository_decoder = msgspec.json.Decoder(Repository)


class GitHubClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        owner: str | None,
        cache: UpstreamCache,
        timeout: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.owner = owner
        self.cache = cache
        self.timeout = timeout
        self.wall_clock = wall_clock
        self._blocked_until = 0.0  # wall-clock time before which GitHub is not called (rate limit)
        self._config_problem: str | None = None if owner else "GitHub owner not configured (GITHUB_OWNER)"
        self._last_outcome: tuple[bool, str, float] | None = None
        self._unlisted_lookups = TokenBucket(UNLISTED_LOOKUP_BURST, UNLISTED_LOOKUP_EVERY, cache.clock)
        self._listed: tuple[Entry | None, frozenset[str]] = (None, frozenset())

    # -- what the routes ask for -----------------------------------------------------------

    async def profile(self) -> Lookup:
        """The owner's profile (also tells whether the owner is a user or an organisation)."""
        return await self.cache.get("owner", self._fetch_owner)

    async def repositories(self) -> Lookup:
        """Every public repository of the owner, all pages."""
        return await self.cache.get("repositories", self._fetch_repositories)

    async def repository(self, name: str) -> Lookup:
        """One repository of the owner; `name` must already be validated."""
        key = ("repository", name.lower())
        if self.cache.peek(key) is None and not self._is_listed(name) and not self._unlisted_lookups.take():
            raise NotFound(f"{self._require_owner()} has no public repository named {name!r} among those listed.")
        return await self.cache.get(key, lambda entry: self._fetch_repository(name, entry))

    def _is_listed(self, name: str) -> bool:
        """Whether the cached repository list (of any age) has this name; False while there is no list."""
        entry = self.cache.peek("repositories")
        if entry is None:
            return False
        if self._listed[0] is not entry:
            self._listed = (entry, frozenset(repo.name.lower() for repo in entry.value))
        return name.lower() in self._listed[1]

    async def readiness(self) -> Check:
        if self._config_problem:
            return Check("failing", self._config_problem)
        if self._last_outcome is None:
            return Check("ok", f"owner {self.owner}; GitHub not called yet")
        ok, detail, at = self._last_outcome
        ago = f"{self.wall_clock() - at:.0f} s ago"
        if ok:
            return Check("ok", f"owner {self.owner}; last GitHub call succeeded {ago}")
        cached = self.cache.peek("repositories") is not None
        status: Literal["ok", "failing"] = "ok" if cached else "failing"
        serving = "serving cached copies" if cached else "no cached copy to serve"
        return Check(status, f"owner {self.owner}; last GitHub call failed {ago} ({detail}); {serving}")

    # -- fetchers the cache calls --------------------------------------------------------------

    async def _fetch_owner(self, entry: Entry | None) -> Fetched | NotModified:
        owner = self._require_owner()
        try:
            result = await self._fetch_one(f"/users/{owner}", _owner_decoder, entry)
        except _UpstreamMissing:
            self._config_problem = f"GitHub owner {owner!r} does not exist"
            raise OwnerNotFound(owner) from None
        self._config_problem = None
        return result

    async def _fetch_repository(self, name: str, entry: Entry | None) -> Fetched | NotModified:
        owner = self._require_owner()
        try:
            result = await self._fetch_one(f"/repos/{owner}/{name}", _repository_decoder, entry)
        except _UpstreamMissing:
            raise NotFound(f"{owner} has no public repository named {name!r}.") from None
        if isinstance(result, Fetched) and not result.value.full_name.lower().startswith(owner.lower() + "/"):
            raise NotFound(f"{owner} has no public repository named {name!r} (it moved to another owner).")
        return result

    async def _fetch_repositories(self, entry: Entry | None) -> Fetched | NotModified:
        # Only the owner's type is needed here (user or organisation), and it does not change: a cached
        # profile of any age will do, so a refresh of the list costs one upstream round trip, not two.
        owner_entry = self.cache.peek("owner") or (await self.profile()).entry
        owner: Owner = owner_entry.value
        if owner.type == "Organization":
            first = f"/orgs/{owner.login}/repos?type=public&per_page={PER_PAGE}"
        else:
            first = f"/users/{owner.login}/repos?type=owner&per_page={PER_PAGE}"
        # Revalidate page by page with each page's ETag; only when every page is unchanged is the whole list.
        known: dict[str, tuple[str, list[Repository], str | None]] = entry.validators if entry else {}
        pages: dict[str, tuple[str, list[Repository], str | None]] = {}
        changed = False

        async def walk() -> None:
            nonlocal changed
            url: str | None = first
            while url is not None and len(pages) < MAX_PAGES:
                previous = known.get(url)
                response = await self._get(url, etag=previous[0] if previous else None)
                if response is NOT_MODIFIED and previous is not None:
                    pages[url] = previous
                    url = previous[2]
                    continue
                assert isinstance(response, httpx.Response)
                items = self._decode(_repositories_decoder, response)
                next_url = self._next_page(response)
                pages[url] = (response.headers.get("etag", ""), items, next_url)
                changed = True
                url = next_url

        try:
            await self._within_deadline(walk)
        except _UpstreamMissing:
            self._config_problem = f"GitHub owner {owner.login!r} does not exist"
            raise OwnerNotFound(owner.login) from None
        if not changed and entry is not None and pages.keys() == known.keys():
            return NOT_MODIFIED
        repositories = [repo for _, items, _ in pages.values() for repo in items]
        return Fetched(repositories, pages)

    # -- HTTP --------------------------------------------------------------------------------

    def _require_owner(self) -> str:
        if not self.owner:
            raise OwnerNotConfigured()
        return self.owner

    async def _fetch_one(self, url: str, decoder: msgspec.json.Decoder[Any], entry: Entry | None) -> Fetched | NotModified:
        etag = entry.validators if entry else None

        async def fetch() -> Fetched | NotModified:
            response = await self._get(url, etag=etag)
            if isinstance(response, NotModified):
                return response
            return Fetched(self._decode(decoder, response), response.headers.get("etag"))

        return await self._within_deadline(fetch)

    async def _within_deadline(self, work: Callable[[], Awaitable[T]]) -> T:
        """One upstream operation, all its pages and redirects included, gets GITHUB_TIMEOUT in total."""
        try:
            with anyio.fail_after(self.timeout):
                return await work()
        except TimeoutError:
            self._record(False, "timeout")
            raise UpstreamTimeout(f"GitHub did not answer within {self.timeout:g} s.") from None

    async def _get(self, url: str, *, etag: str | None) -> httpx.Response | NotModified:
        wait = self._blocked_until - self.wall_clock()
        if wait > 0:
            raise UpstreamRateLimited(math.ceil(wait))
        try:
            response = await self.http.get(url, headers={"If-None-Match": etag} if etag else None)
        except (httpx.TransportError, httpx.TooManyRedirects) as exc:
            self._record(False, type(exc).__name__)
            raise UpstreamBroken(f"Could not reach GitHub ({type(exc).__name__}).") from None
        status = response.status_code
        if status == 304:
            self._record(True, "not modified")
            return NOT_MODIFIED
        if status == 200:
            self._record(True, "ok")
            return response
        if status == 404:
            self._record(True, "not found")
            raise _UpstreamMissing()
        if status == 401:
            self._record(False, "credentials rejected")
            self._config_problem = "GitHub credentials rejected (GITHUB_TOKEN)"
            logger.error("GitHub answered 401: the configured GITHUB_TOKEN is invalid or expired")
            raise CredentialsRejected()
        if status in (403, 429):
            retry_after = self._rate_limit_wait(response)
            if retry_after is not None:
                self._blocked_until = self.wall_clock() + retry_after
                self._record(False, "rate limited")
                logger.warning("GitHub rate limit reached; no upstream call for %d s", retry_after)
                raise UpstreamRateLimited(retry_after)
        self._record(False, f"HTTP {status}")
        raise UpstreamBroken(f"GitHub answered HTTP {status}.")

    def _rate_limit_wait(self, response: httpx.Response) -> int | None:
        """Seconds until GitHub will serve us again (at most an hour, GitHub's window), or None if
        this 403/429 is not a rate limit."""
        wait = self._raw_rate_limit_wait(response)
        return None if wait is None else min(wait, MAX_RATE_LIMIT_WAIT)

    def _raw_rate_limit_wait(self, response: httpx.Response) -> int | None:
        retry_after = response.headers.get("retry-after")
        if retry_after is not None and retry_after.strip().isdigit():
            return max(1, int(retry_after))
        if response.headers.get("x-ratelimit-remaining") == "0":
            reset = response.headers.get("x-ratelimit-reset", "")
            if reset.strip().isdigit():
                return max(1, math.ceil(int(reset) - self.wall_clock()))
            return 60
        return 60 if response.status_code == 429 else None

    def _decode(self, decoder: msgspec.json.Decoder[T], response: httpx.Response) -> T:
        try:
            return decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            self._record(False, "malformed answer")
            raise UpstreamBroken(f"GitHub sent an answer this service cannot read ({exc}).") from None

    def _next_page(self, response: httpx.Response) -> str | None:
        url = response.links.get("next", {}).get("url")
        if not url:
            return None
        base = str(self.http.base_url).rstrip("/")
        # Only follow pages on the configured API host: the Authorization header goes with them.
        return url[len(base) :] if url.startswith(base + "/") else None

    def _record(self, ok: bool, detail: str) -> None:
        self._last_outcome = (ok, detail, self.wall_clock())
        metrics.github_outcome(detail)


class TokenBucket:
    """`burst` tokens, one regained every `every` seconds of `clock`."""

    def __init__(self, burst: int, every: float, clock: Callable[[], float]) -> None:
        self.burst = burst
        self.every = every
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) / self.every)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
