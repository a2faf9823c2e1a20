"""Async GitHub client for one owner, REST and GraphQL on one connection pool: typed decoding, rate-limit
respect, failures as named errors."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, NoReturn, TypeVar

import anyio
import httpx
import msgspec

from service import API_NAME
from service.errors import ApiError, NotFound
from service.github import graphql
from service.github.cache import NOT_MODIFIED, Codec, Entry, Fetched, Lookup, NotModified, Source, UpstreamCache
from service.github.errors import (
    CredentialsRejected,
    OwnerNotConfigured,
    OwnerNotFound,
    UpstreamBroken,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from service.github.models import (
    Language,
    Languages,
    Owner,
    Pinned,
    Repository,
    ShowcaseRepository,
    primary_languages,
    top_starred,
)
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
VIEWS_EVERY = 10.0  # seconds between two `refresh_views` when the cache's TTL is shorter
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


class Page(msgspec.Struct, array_like=True, frozen=True):
    """One page of the repository list as last fetched: enough to revalidate it with its ETag."""

    url: str
    etag: str
    next: str | None
    count: int  # its repositories, in order, in the list's value


# How each kind of answer is kept in the shared tier: the value, and the validators to revalidate it.
_OWNER = Codec(Owner, str | None)
_REPOSITORIES = Codec(list[Repository], list[Page])
_REPOSITORY = Codec(Repository, str | None)
# GraphQL answers (POST) have no ETag: each refresh is one query, at most one per TTL for the deployment.
_PINNED = Codec(list[ShowcaseRepository], None)
_LANGUAGES = Codec(list[Language], None)
_encoder = msgspec.json.Encoder()


class Lease(msgspec.Struct):
    key: str
    holder: str
    expires_at: str


class GitHubCheck(Check, omit_defaults=True):
    """Readiness of GitHub, with what the shared tier knows (any process of the deployment)."""

    worker: str | None = None  # this process, as lease holders are named
    last_refresh: str | None = None  # when GitHub last confirmed the repository list, for any process
    last_pinned_refresh: str | None = None  # the pinned repositories (GraphQL, with a token), likewise
    last_languages_refresh: str | None = None  # the languages (GraphQL, with a token), likewise
    leases: list[Lease] = msgspec.field(default_factory=list)  # keys being refreshed now, and by whom
    rate_limited_until: str | None = None  # no process calls GitHub before then


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _time_if(seconds: float | None) -> str | None:
    return None if seconds is None else _time(seconds)


class View(NamedTuple):
    """One answer: the cached entry it is made from, its key among that entry's views, and what it shows."""

    lookup: Lookup
    key: Hashable
    render: Callable[[], msgspec.Struct]


_WHOLE = "whole"


class GitHubClient:
    """`authenticated`: a GITHUB_TOKEN is set, so GraphQL can be used (it refuses anonymous calls)."""

    def __init__(self, http: httpx.AsyncClient, *, owner: str | None, cache: UpstreamCache, authenticated: bool = False) -> None:
        self.http = http
        self.telemetry = cache.telemetry
        self.owner = owner
        self.authenticated = authenticated
        self.cache = cache
        self.timeout = cache.timeout
        self.clock = cache.clock
        self._blocked_until = 0.0  # clock time before which GitHub is not called (rate limit)
        self._config_problem: str | None = None if owner else "GitHub owner not configured (GITHUB_OWNER)"
        self._last_outcome: tuple[bool, str, float] | None = None
        self._warned: dict[str, float] = {}  # kind of failure -> when it was last logged
        self._host = http.base_url.host or "the GitHub API"
        # Shared keys name the owner: a deploy with another GITHUB_OWNER does not adopt the old one's data.
        prefix = (owner or "").lower()
        self._owner_key, self._list_key, self._repository_prefix = (
            f"{prefix}/owner",
            f"{prefix}/repositories",
            f"{prefix}/repository/",
        )
        self._pinned_key, self._languages_key = f"{prefix}/pinned", f"{prefix}/languages"
        self._owner_source = Source(self._fetch_owner, _OWNER)
        self._pinned_source = Source(self._fetch_pinned, _PINNED)
        self._languages_source = Source(self._fetch_languages, _LANGUAGES)
        self._list_source = Source(self._fetch_repositories, _REPOSITORIES)
        self._unlisted_lookups = TokenBucket(UNLISTED_LOOKUP_BURST, UNLISTED_LOOKUP_EVERY, self.clock)  # without a shared tier
        self._no_lookups_until = 0.0  # the shared budget is spent until then: not asked again before
        self._listed: tuple[Entry | None, dict[str, Repository]] = (None, {})
        self._views_due = 0.0  # `refresh_views` looks again from then
        self._views_failures = 0

    # -- what the routes ask for -----------------------------------------------------------

    async def profile(self) -> Lookup:
        """The owner's profile (also tells whether the owner is a user or an organisation)."""
        return await self.cache.get(self._owner_key, self._owner_source)

    async def repositories(self) -> Lookup:
        """Every public repository of the owner, all pages."""
        return await self.cache.get(self._list_key, self._list_source)

    async def repository(self, name: str) -> tuple[Lookup, Repository]:
        """One repository of the owner (`name` must already be validated), and the entry it comes from.

        A listed name is answered from the repository list, which is fetched first if there is none
        (one call for every name asked for meanwhile). Only a name not on the list (renamed, made up)
        is looked up on its own, within the unknown-name budget; one timeout covers both steps."""
        since = self.clock()
        listing = await self.cache.get(self._list_key, self._list_source, since=since)
        found = self._by_name(listing.entry).get(name.lower())
        if found is not None:
            return listing, found
        key = self._repository_prefix + name.lower()
        if self.cache.peek(key) is None and not await self._take_unlisted_lookup():
            raise NotFound(f"{self._require_owner()} has no public repository named {name!r} among those listed.")
        lookup = await self.cache.get(key, Source(lambda entry: self._fetch_repository(name, entry), _REPOSITORY), since=since)
        repository: Repository = lookup.entry.value
        return lookup, repository

    async def pinned(self) -> View:
        """The owner's pinned repositories in the owner's order (GraphQL); without a token, or with nothing
        pinned, the most starred repositories of the cached list (no call of its own)."""
        since = self.clock()
        if self.authenticated:
            lookup = await self.cache.get(self._pinned_key, self._pinned_source)
            pins: list[ShowcaseRepository] = lookup.entry.value
            if pins:
                return View(lookup, _WHOLE, lambda: Pinned("pinned", pins))
        listing = await self.cache.get(self._list_key, self._list_source, since=since)
        repositories: list[Repository] = listing.entry.value
        return View(listing, ("showcase", "pinned"), lambda: top_starred(repositories))

    async def languages(self) -> View:
        """The owner's languages by bytes (GraphQL); without a token, by primary language over the cached list."""
        if self.authenticated:
            lookup = await self.cache.get(self._languages_key, self._languages_source)
            items: list[Language] = lookup.entry.value
            return View(lookup, _WHOLE, lambda: Languages("bytes", items))
        listing = await self.cache.get(self._list_key, self._list_source)
        repositories: list[Repository] = listing.entry.value
        return View(listing, ("showcase", "languages"), lambda: primary_languages(repositories))

    async def refresh_views(self) -> None:
        """Deploy hooks with `github` chosen: the owner's views kept no older than the cache's TTL even when no
        visitor asks (a statically built site asks only when it builds), so new data is noticed and the shared
        tier records it. A fresh copy costs no call; a failure is the client's to log, and is tried next time."""
        now = self.clock()
        if self.owner is None or now < self._views_due:
            return
        failed = False
        for view in (self.profile, self.repositories, self.pinned, self.languages):
            try:
                await view()
            except ApiError:
                failed = True
        # After a failure (no copy to serve, a refused token, GitHub down) each view would call GitHub on every
        # look: wait 5 s, doubling to 10 minutes. A TTL under VIEWS_EVERY would too: at most one look per VIEWS_EVERY.
        self._views_failures = self._views_failures + 1 if failed else 0
        if failed:
            self._views_due = now + min(600.0, 5.0 * 2 ** min(self._views_failures - 1, 10))
        elif self.cache.ttl < VIEWS_EVERY:
            self._views_due = now + VIEWS_EVERY

    async def upstream_changed(
        self, delivery: str | None, *, repositories: list[str], profile: bool, showcase: bool = False
    ) -> bool | None:
        """A webhook reports a change: the list, these repositories (the profile, the pinned repositories
        and the languages) are refreshed in every process. False for a delivery acted on before; None if
        other processes could not be told."""
        keys = [self._list_key, *(self._repository_prefix + name.lower() for name in repositories)]
        if profile:
            keys.append(self._owner_key)
        if showcase and self.authenticated:  # without a token both are views of the list
            keys += [self._pinned_key, self._languages_key]
        return await self.cache.mark_changed(delivery, keys)

    def _by_name(self, listing: Entry) -> dict[str, Repository]:
        """The listed repositories by lower-case name, built once per list entry."""
        if self._listed[0] is not listing:
            self._listed = (listing, {repo.name.lower(): repo for repo in listing.value})
        return self._listed[1]

    async def _take_unlisted_lookup(self) -> bool:
        """One upstream lookup of the deployment's unknown-name budget (this process's own without a
        shared tier). Once the budget is spent, the database is not asked again until a token is back."""
        now = self.clock()
        if now < self._no_lookups_until:
            return False
        shared = self.cache.shared
        taken = await shared.take_lookup(burst=UNLISTED_LOOKUP_BURST, every=UNLISTED_LOOKUP_EVERY) if shared else None
        if taken is None:
            return self._unlisted_lookups.take()
        ok, wait = taken
        if not ok:
            self._no_lookups_until = now + wait
        return ok

    async def readiness(self) -> GitHubCheck:
        check = self._own_readiness()
        shared = self.cache.shared
        if shared is None:
            return check
        status = await shared.status(keys=[self._list_key, self._pinned_key, self._languages_key])
        if status is None:
            return GitHubCheck(
                check.status, f"{check.detail}; shared tier unavailable: serving this process's copies", worker=shared.holder
            )
        return GitHubCheck(
            check.status,
            check.detail,
            worker=shared.holder,
            last_refresh=_time_if(status.refreshed.get(self._list_key)),
            last_pinned_refresh=_time_if(status.refreshed.get(self._pinned_key)),
            last_languages_refresh=_time_if(status.refreshed.get(self._languages_key)),
            leases=[Lease(lease.key, lease.holder, _time(lease.until)) for lease in status.leases],
            rate_limited_until=_time_if(status.rate_limited_until),
        )

    def _own_readiness(self) -> GitHubCheck:
        if self._config_problem:
            return GitHubCheck("failing", self._config_problem)
        if self._last_outcome is None:
            return GitHubCheck("ok", f"owner {self.owner}; GitHub not called yet by this process")
        ok, detail, at = self._last_outcome
        ago = f"{self.clock() - at:.0f} s ago"
        if ok:
            return GitHubCheck("ok", f"owner {self.owner}; last GitHub call succeeded {ago}")
        cached = self.cache.peek(self._list_key) is not None
        status: Literal["ok", "failing"] = "ok" if cached else "failing"
        serving = "serving cached copies" if cached else "no cached copy to serve"
        return GitHubCheck(status, f"owner {self.owner}; last GitHub call failed {ago} ({detail}); {serving}")

    # -- fetchers the cache calls --------------------------------------------------------------

    async def _fetch_owner(self, entry: Entry | None) -> Fetched | NotModified:
        owner = self._require_owner()
        try:
            result = await self._fetch_one(f"/users/{owner}", _OWNER, entry)
        except _UpstreamMissing:
            self._config_problem = f"GitHub owner {owner!r} does not exist"
            raise OwnerNotFound(owner) from None
        self._config_problem = None
        return result

    async def _fetch_repository(self, name: str, entry: Entry | None) -> Fetched | NotModified:
        owner = self._require_owner()
        try:
            result = await self._fetch_one(f"/repos/{owner}/{name}", _REPOSITORY, entry)
        except _UpstreamMissing:
            raise NotFound(f"{owner} has no public repository named {name!r}.") from None
        if isinstance(result, Fetched) and not result.value.full_name.lower().startswith(owner.lower() + "/"):
            raise NotFound(f"{owner} has no public repository named {name!r} (it moved to another owner).")
        return result

    async def _fetch_repositories(self, entry: Entry | None) -> Fetched | NotModified:
        owner = self._require_owner()
        # Revalidate page by page with each page's ETag; only when every page is unchanged is the whole list.
        known: dict[str, tuple[Page, list[Repository]]] = {}
        if entry is not None and entry.validators:
            offset = 0
            for page in entry.validators:
                known[page.url] = (page, entry.value[offset : offset + page.count])
                offset += page.count
        pages: list[Page] = []
        repositories: list[Repository] = []
        changed = False

        async def walk() -> None:
            nonlocal changed
            # The first page's URL depends on whether the owner is a user or an organisation: known from
            # the last walk, else from the profile (of any age: that does not change).
            url: str | None = entry.validators[0].url if entry is not None and entry.validators else await self._first_page()
            while url is not None and len(pages) < MAX_PAGES:
                previous = known.get(url)
                response = await self._get(url, etag=previous[0].etag if previous else None)
                if isinstance(response, NotModified):
                    if previous is None:
                        raise UpstreamBroken("GitHub answered 304 to a request without an ETag.")
                    pages.append(previous[0])
                    repositories.extend(previous[1])
                    url = previous[0].next
                    continue
                items = self._decode(_REPOSITORIES, response)
                next_url = self._next_page(response)
                pages.append(Page(url, response.headers.get("etag", ""), next_url, len(items)))
                repositories.extend(items)
                changed = True
                url = next_url

        try:
            # One GITHUB_TIMEOUT for the whole refresh, the profile it may need included.
            await self._within_deadline(walk)
        except _UpstreamMissing:
            self._config_problem = f"GitHub owner {owner!r} does not exist"
            raise OwnerNotFound(owner) from None
        if not changed and entry is not None and [p.url for p in pages] == [p.url for p in entry.validators]:
            return NOT_MODIFIED
        return Fetched(repositories, pages)

    async def _fetch_pinned(self, entry: Entry | None) -> Fetched:
        owner = self._require_owner()
        data: graphql.PinnedData = await self._within_deadline(
            lambda: self._query(graphql.PINNED, {"login": owner}, graphql.PINNED_ANSWER)
        )
        if data.repository_owner is None:
            raise self._owner_missing(owner)
        return Fetched([graphql.showcase_repository(node) for node in data.repository_owner.pinned_items.nodes], None)

    async def _fetch_languages(self, entry: Entry | None) -> Fetched:
        owner = self._require_owner()
        nodes: list[graphql.LanguagesNode] = []

        async def walk() -> None:
            after: str | None = None
            for _ in range(MAX_PAGES):
                data: graphql.LanguagesData = await self._query(
                    graphql.LANGUAGES, {"login": owner, "after": after}, graphql.LANGUAGES_ANSWER
                )
                if data.repository_owner is None:
                    raise self._owner_missing(owner)
                page = data.repository_owner.repositories
                nodes.extend(page.nodes)
                if not page.page_info.has_next_page or not page.page_info.end_cursor:
                    return
                after = page.page_info.end_cursor

        await self._within_deadline(walk)  # one GITHUB_TIMEOUT for every page
        return Fetched(graphql.owner_languages(nodes), None)

    def _owner_missing(self, owner: str) -> OwnerNotFound:
        self._config_problem = f"GitHub owner {owner!r} does not exist"
        return OwnerNotFound(owner)

    async def _first_page(self) -> str:
        owner_entry = self.cache.peek(self._owner_key) or (await self.profile()).entry
        owner: Owner = owner_entry.value
        if owner.type == "Organization":
            return f"/orgs/{owner.login}/repos?type=public&per_page={PER_PAGE}"
        return f"/users/{owner.login}/repos?type=owner&per_page={PER_PAGE}"

    # -- HTTP --------------------------------------------------------------------------------

    def _require_owner(self) -> str:
        if not self.owner:
            raise OwnerNotConfigured()
        return self.owner

    async def _fetch_one(self, url: str, codec: Codec, entry: Entry | None) -> Fetched | NotModified:
        etag = entry.validators if entry else None

        async def fetch() -> Fetched | NotModified:
            response = await self._get(url, etag=etag)
            if isinstance(response, NotModified):
                if etag is None:
                    raise UpstreamBroken("GitHub answered 304 to a request without an ETag.")
                return response
            return Fetched(self._decode(codec, response), response.headers.get("etag"))

        return await self._within_deadline(fetch)

    async def _within_deadline(self, work: Callable[[], Awaitable[T]]) -> T:
        """One upstream operation, all its pages and redirects included, gets GITHUB_TIMEOUT in total."""
        try:
            with anyio.fail_after(self.timeout):
                return await work()
        except TimeoutError:
            self._record(False, "timeout")
            raise UpstreamTimeout(f"GitHub did not answer within {self.timeout:g} s.") from None

    async def _check_rate_limit(self) -> None:
        """No call while this process, or any other, knows the rate limit is used up."""
        shared = self.cache.shared
        wait = max(self._blocked_until, shared.blocked_until if shared else 0.0) - self.clock()
        if wait > 0:
            raise UpstreamRateLimited(math.ceil(wait))

    async def _block(self, retry_after: int) -> None:
        self._blocked_until = self.clock() + retry_after
        logger.warning("GitHub rate limit reached; no upstream call for %d s", retry_after)
        shared = self.cache.shared
        if shared is not None:
            await shared.block(self._blocked_until)  # and none from any other process either

    async def _rate_limited(self, retry_after: int) -> NoReturn:
        retry_after = min(retry_after, MAX_RATE_LIMIT_WAIT)
        self._record(False, "rate limited")
        await self._block(retry_after)
        raise UpstreamRateLimited(retry_after)

    async def _refused(self, response: httpx.Response) -> NoReturn:
        """A status that is not an answer: credentials rejected, rate limited, or broken."""
        status = response.status_code
        if status == 401:
            self._record(False, "credentials rejected")
            self._config_problem = "GitHub credentials rejected (GITHUB_TOKEN)"
            logger.error("GitHub answered 401: the configured GITHUB_TOKEN is invalid or expired")
            raise CredentialsRejected()
        if status in (403, 429):
            retry_after = self._rate_limit_wait(response)
            if retry_after is not None:
                await self._rate_limited(retry_after)
        self._record(False, f"HTTP {status}")
        raise UpstreamBroken(f"GitHub answered HTTP {status}.")

    async def _get(self, url: str, *, etag: str | None) -> httpx.Response | NotModified:
        await self._check_rate_limit()
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
        await self._refused(response)

    async def _query(self, query: str, variables: dict[str, Any], decoder: msgspec.json.Decoder[graphql.Answer[T]]) -> T:
        """One GraphQL query (POST /graphql). Only `data` without `errors` is an answer: errors (a renamed
        owner, a missing permission), RATE_LIMITED and a body that is not the documented JSON are upstream
        failures, as a REST call's would be."""
        await self._check_rate_limit()
        try:
            response = await self.http.post(
                "/graphql",
                content=_encoder.encode({"query": query, "variables": variables}),
                headers={"Content-Type": "application/json"},
            )
        except (httpx.TransportError, httpx.TooManyRedirects) as exc:
            self._record(False, type(exc).__name__)
            raise UpstreamBroken(f"Could not reach GitHub ({type(exc).__name__}).") from None
        self._log_points(response)
        if response.status_code != 200:
            await self._refused(response)
        try:
            answer = decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            self._record(False, "malformed answer")
            raise UpstreamBroken(f"GitHub sent a GraphQL answer this service cannot read ({exc}).") from None
        errors = answer.errors or []
        if any(error.type == "RATE_LIMITED" for error in errors) or (
            answer.data is None and response.headers.get("x-ratelimit-remaining") == "0"
        ):
            await self._rate_limited(self._raw_rate_limit_wait(response) or 60)
        if errors or answer.data is None:
            self._record(False, "graphql errors")
            first = errors[0].message[:200] if errors else "no data"
            raise UpstreamBroken(f"GitHub answered the GraphQL query with errors: {first}")
        self._record(True, "ok")
        if response.headers.get("x-ratelimit-remaining") == "0":
            # A good answer that spent the last point: keep it, and call no more before the reset.
            await self._block(self._rate_limit_wait(response) or 60)
        return answer.data

    def _log_points(self, response: httpx.Response) -> None:
        """GraphQL's budget is points; its headers (also in /metrics, by resource) are logged per call."""
        headers = response.headers
        logger.info(
            "GitHub GraphQL: %s points used of %s, %s left, resets at %s",
            headers.get("x-ratelimit-used", "?"),
            headers.get("x-ratelimit-limit", "?"),
            headers.get("x-ratelimit-remaining", "?"),
            _time(int(reset)) if (reset := headers.get("x-ratelimit-reset", "")).isdigit() else "?",
        )

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
                return max(1, math.ceil(int(reset) - self.clock()))
            return 60
        return 60 if response.status_code == 429 else None

    def _decode(self, codec: Codec, response: httpx.Response) -> Any:
        try:
            return codec.decode_value(response.content)
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
        self._last_outcome = (ok, detail, self.clock())
        self.telemetry.github_outcome(detail)
        if not ok and detail not in _LOGGED_ELSEWHERE:
            self._warn(detail)

    def _warn(self, detail: str) -> None:
        """One warning line per kind of failure and minute, naming the upstream host (never a token or a
        path): visitors may get stale copies or 502s for a while, and operators need to know why."""
        now = self.clock()
        kind = detail.split(" ", 1)[0] if detail.startswith("HTTP") else detail
        if now - self._warned.get(kind, -math.inf) < WARN_EVERY:
            return
        if len(self._warned) >= 64:  # kinds are few (a status class, an exception name); bounded all the same
            self._warned.clear()
        self._warned[kind] = now
        logger.warning("GitHub call to %s failed: %s; answers are served stale while a copy lasts", self._host, detail)


WARN_EVERY = 60.0  # seconds between two warning lines about the same kind of GitHub failure
_LOGGED_ELSEWHERE = frozenset({"credentials rejected", "rate limited"})  # those have their own lines


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
