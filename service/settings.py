"""Service configuration: one struct, read from the environment once at start-up."""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

# A GitHub login: alphanumerics and single hyphens, at most 39 characters.
GITHUB_LOGIN = r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$"
DEFAULT_DATABASE_URL = "sqlite:///data/service.db"
# A build hook's URL; its path (and query) are the secret that starts builds, so only its host is ever shown.
# The host is a name, IPv4 or a bracketed IPv6 address, so nothing of the secret can pass for it.
_HOOK_HOST = r"(?P<origin>https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?)"
HookUrl = Annotated[str, msgspec.Meta(max_length=2048, pattern=rf"^{_HOOK_HOST}([/?][^\s#]*)?$")]
_HOOK_ORIGIN = re.compile(rf"{_HOOK_HOST}(?=[/?]|$)")

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
# Tokens travel in HTTP headers (ours or GitHub's), which carry visible ASCII only.
HEADER_SAFE = r"^[!-~]+$"

# The connection budget (PostgreSQL): one connection each for the release phase's `migrate` and one
# `heroku run` shell stay free; the web workers share the rest, up to DEFAULT_POOL_SIZE each.
RESERVED_CONNECTIONS = 2
DEFAULT_POOL_SIZE = 5
HEROKU_POSTGRES = "heroku addons:create heroku-postgresql:essential-0"


class Settings(msgspec.Struct, rename="upper", frozen=True, kw_only=True):
    host: Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Za-z.:-]{1,255}$")] = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = True
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=100 * 1024 * 1024)] = 65536
    request_timeout: Seconds = 10.0
    web_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    web_dynos: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    github_owner: Annotated[str, msgspec.Meta(pattern=GITHUB_LOGIN)] | None = None
    github_token: Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=HEADER_SAFE)] | None = None
    github_api_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")] = "https://api.github.com"
    github_timeout: Annotated[float, msgspec.Meta(gt=0, le=29)] = 10.0
    github_cache_ttl: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 300.0
    github_stale_ttl: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 86400.0
    database_url: Annotated[str, msgspec.Meta(pattern=r"^(sqlite|postgres|postgresql)://")] = DEFAULT_DATABASE_URL
    database_pool_size: Annotated[int, msgspec.Meta(ge=1, le=40)] = DEFAULT_POOL_SIZE
    database_max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 20
    allow_ephemeral_database: bool = False
    admin_token: Annotated[str, msgspec.Meta(min_length=16, max_length=512, pattern=HEADER_SAFE)] | None = None
    github_webhook_secret: Annotated[str, msgspec.Meta(min_length=16, max_length=512, pattern=HEADER_SAFE)] | None = None
    metrics_token: Annotated[str, msgspec.Meta(min_length=16, max_length=512, pattern=HEADER_SAFE)] | None = None
    site_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")] | None = None
    announcement_path: Annotated[str, msgspec.Meta(pattern=r"^/[^\s?#]*\{(slug|id)\}[^\s]*$")] = "/announcements/{slug}"
    site_title: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")] = "Announcements"
    deploy_hook_urls: Annotated[tuple[HookUrl, ...], msgspec.Meta(max_length=10)] = ()
    deploy_hook_secret: Annotated[str, msgspec.Meta(min_length=16, max_length=512, pattern=HEADER_SAFE)] | None = None
    deploy_hook_debounce: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    deploy_hook_events: Annotated[tuple[Literal["announcements", "github"], ...], msgspec.Meta(min_length=1)] = ("announcements",)

    def public_view(self) -> dict[str, object]:
        """The settings as printable values, secrets masked."""
        view: dict[str, object] = msgspec.to_builtins(self)
        for name in SECRETS:
            if view.get(name) is not None:
                view[name] = "***"
        view["DATABASE_URL"] = mask_url_password(self.database_url)
        view["GITHUB_API_URL"] = mask_url_password(self.github_api_url)
        view["DEPLOY_HOOK_URLS"] = [mask_hook_url(url) for url in self.deploy_hook_urls]
        return view


SECRETS = ("GITHUB_TOKEN", "ADMIN_TOKEN", "GITHUB_WEBHOOK_SECRET", "METRICS_TOKEN", "DEPLOY_HOOK_SECRET")

# What a good value looks like, for the one-line start-up error.
EXPECTED = {
    "HOST": "an address to listen on, such as 0.0.0.0 or 127.0.0.1",
    "PORT": "an integer from 1 to 65535",
    "LOG_LEVEL": "one of critical, error, warning, info, debug",
    "ACCESS_LOG": "true or false (or 1/0)",
    "CORS_ORIGINS": "a comma-separated list of origins such as https://example.org, or * for any",
    "MAX_BODY_BYTES": "an integer number of bytes from 1 to 104857600",
    "REQUEST_TIMEOUT": "a number of seconds above 0 and at most 3600",
    "WEB_CONCURRENCY": "an integer from 1 to 64",
    "WEB_DYNOS": "an integer from 1 to 1000 (web dynos sharing the database)",
    "GITHUB_OWNER": "a GitHub user or organisation login (letters, digits, single hyphens, at most 39)",
    "GITHUB_TOKEN": "a GitHub token of 1 to 512 visible ASCII characters (it is sent in an HTTP header)",
    "GITHUB_API_URL": "an http(s) URL such as https://api.github.com",
    "GITHUB_TIMEOUT": "a number of seconds above 0 and at most 29 (Heroku's router gives up at 30)",
    "GITHUB_CACHE_TTL": "a number of seconds from 0 to 86400",
    "GITHUB_STALE_TTL": "a number of seconds from 0 to 2592000",
    "DATABASE_URL": "sqlite:///path/to/file.db, postgres://user:password@host:port/dbname or postgresql://…",
    "DATABASE_POOL_SIZE": "an integer from 1 to 40 (connections per worker process)",
    "DATABASE_MAX_CONNECTIONS": "an integer from 1 to 100000 (the database plan's connection limit)",
    "ALLOW_EPHEMERAL_DATABASE": "true or false (or 1/0)",
    "ADMIN_TOKEN": "a secret of 16 to 512 visible ASCII characters (it is sent in an HTTP header)",
    "GITHUB_WEBHOOK_SECRET": "the webhook's secret as set on GitHub, 16 to 512 visible ASCII characters",
    "METRICS_TOKEN": "a secret of 16 to 512 visible ASCII characters (the Bearer token Prometheus sends to GET /metrics)",
    "SITE_URL": "the website's http(s) address, such as https://example.com (the feeds link to its pages)",
    "ANNOUNCEMENT_PATH": "a path starting with / that holds {slug} or {id}, such as /announcements/{slug}",
    "SITE_TITLE": "1 to 200 characters, no control characters (the feeds' title)",
    "DEPLOY_HOOK_URLS": "up to 10 comma-separated build-hook URLs, https:// (http:// only to a loopback host)",
    "DEPLOY_HOOK_SECRET": "a secret of 16 to 512 visible ASCII characters (the key of each POST's X-Hub-Signature-256)",
    "DEPLOY_HOOK_DEBOUNCE": "a number of seconds from 0 to 3600 (changes within it make one POST)",
    "DEPLOY_HOOK_EVENTS": "announcements, github, or both, comma-separated",
}

_ERROR_PATH = re.compile(r"^(?P<reason>.*) - at `\$\.(?P<name>[A-Z_]+)(\[\d+\])?`")
LISTS = ("CORS_ORIGINS", "DEPLOY_HOOK_URLS", "DEPLOY_HOOK_EVENTS")  # comma-separated


class SettingsError(ValueError):
    """A variable has a value the service cannot use; the message is one readable line."""


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every known variable from `environ` (default: os.environ); unknown ones are ignored.

    Beyond each variable's own form, this checks what only the combination can show: that PostgreSQL
    can parse DATABASE_URL, that a Heroku dyno (DYNO is set) does not keep data on its throw-away
    filesystem, and that the web workers' pools fit the database's connection limit.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for name in Settings.__struct_encode_fields__:
        value = environ.get(name)
        if value is None or value.strip() == "":
            continue  # unset and empty both mean "use the default"
        value = value.strip()
        if name in LISTS:
            raw[name] = [item.strip() for item in value.split(",") if item.strip()]
        elif name == "LOG_LEVEL":
            raw[name] = value.lower()
        else:
            raw[name] = value
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _readable(exc, raw) from None
    _check_hook_urls(settings.deploy_hook_urls)
    if settings.deploy_hook_urls and "github" in settings.deploy_hook_events and settings.github_owner is None:
        raise SettingsError(
            "DEPLOY_HOOK_EVENTS names github but GITHUB_OWNER is not set: there is no GitHub data to watch;"
            " set GITHUB_OWNER, or DEPLOY_HOOK_EVENTS=announcements"
        )
    # The same URL twice would be one target (its hash) shown as two.
    settings = msgspec.structs.replace(settings, deploy_hook_urls=tuple(dict.fromkeys(settings.deploy_hook_urls)))
    if settings.database_url.startswith("sqlite:"):
        if "DYNO" in environ and not settings.allow_ephemeral_database:
            raise SettingsError(_ephemeral_database(given="DATABASE_URL" in raw))
        return settings
    _check_postgres_url(settings.database_url)
    return _within_connection_budget(settings, pool_size_given="DATABASE_POOL_SIZE" in raw)


def settings_or_exit() -> Settings:
    """Settings from the environment, or one readable line on stderr and exit status 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _readable(exc: msgspec.ValidationError, raw: Mapping[str, object]) -> SettingsError:
    match = _ERROR_PATH.match(str(exc))
    if match is None:
        return SettingsError(f"invalid configuration: {exc}")
    name = match["name"]
    value = raw.get(name)
    if name in SECRETS:
        shown = "***"
    elif name == "DEPLOY_HOOK_URLS" and isinstance(value, list):
        shown = repr([mask_hook_url(str(url)) for url in value])
    elif name.endswith("_URL") and isinstance(value, str):
        shown = repr(mask_url_password(value))
    else:
        shown = repr(value)
    reason = match["reason"].replace("`", "")
    if "matching regex" in reason:
        reason = "not of the accepted form"
    reason = reason[:1].lower() + reason[1:]
    return SettingsError(f"invalid {name}={shown}: {reason}; expected {EXPECTED[name]}")


def _check_hook_urls(urls: tuple[str, ...]) -> None:
    """https:// only: a build hook's URL is its secret, not to be sent in clear; http:// to this machine is for
    development and tests."""
    for url in urls:
        try:
            parts = urlsplit(url)
            hostname = parts.hostname or ""
        except ValueError:
            raise SettingsError(f"invalid DEPLOY_HOOK_URLS entry {mask_hook_url(url)!r}: not a URL") from None
        if parts.scheme == "http" and not _is_loopback(hostname):
            raise SettingsError(
                f"invalid DEPLOY_HOOK_URLS entry {mask_hook_url(url)!r}: http:// would send the hook's secret URL in clear;"
                " use its https:// address (http:// is accepted only for a loopback host such as 127.0.0.1)"
            )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask_hook_url(url: str) -> str:
    """https://api.netlify.com/build_hooks/5c23… -> https://api.netlify.com/***; anything that is not plainly a
    host before the path (a backslash, an escape, a space: a malformed entry) shows nothing of the URL."""
    match = _HOOK_ORIGIN.match(url)
    if match is None:
        return "***"
    return f"{match['origin']}/***"


def _ephemeral_database(*, given: bool) -> str:
    what = "DATABASE_URL names an SQLite file" if given else "DATABASE_URL is not set (the default is an SQLite file)"
    return (
        f"{what} on a Heroku dyno, whose filesystem is thrown away at every restart and deploy, so announcements "
        f"would be lost; add PostgreSQL with `{HEROKU_POSTGRES}` (it sets DATABASE_URL), "
        "or set ALLOW_EPHEMERAL_DATABASE=true to accept losing every write"
    )


def _check_postgres_url(url: str) -> None:
    """Parse the URL as the store will (libpq's own parser), so a malformed one stops start-up here
    in one line, password masked, instead of in a traceback that quotes it."""
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise SettingsError(
            f"invalid DATABASE_URL={mask_url_password(url)!r}: PostgreSQL cannot parse it; expected "
            "postgres://user:password@host:port/dbname with reserved characters percent-encoded "
            "(%40 for @, %25 for %) and an IPv6 host in brackets"
        ) from None


def _within_connection_budget(settings: Settings, *, pool_size_given: bool) -> Settings:
    """Size each worker's pool so dynos × workers × pool + reserved <= DATABASE_MAX_CONNECTIONS, or say why not.

    An explicit DATABASE_POOL_SIZE is kept as given; otherwise each worker gets an equal share of what
    is left after RESERVED_CONNECTIONS, at most DEFAULT_POOL_SIZE and at least 1.
    """
    workers = settings.web_dynos * settings.web_concurrency
    limit = settings.database_max_connections
    pool = settings.database_pool_size
    if not pool_size_given:
        pool = max(1, min(DEFAULT_POOL_SIZE, (limit - RESERVED_CONNECTIONS) // workers))
    needed = workers * pool + RESERVED_CONNECTIONS
    if needed > limit:
        advice = "lower WEB_CONCURRENCY" if pool == 1 else "lower DATABASE_POOL_SIZE or WEB_CONCURRENCY"
        raise SettingsError(
            f"the database connection budget does not fit: WEB_DYNOS={settings.web_dynos} × "
            f"WEB_CONCURRENCY={settings.web_concurrency} workers × {pool} connection{'s' if pool > 1 else ''} "
            f"{'(DATABASE_POOL_SIZE) ' if pool_size_given else ''}+ {RESERVED_CONNECTIONS} reserved for the release phase "
            f"and heroku run = {needed} > DATABASE_MAX_CONNECTIONS={limit}; {advice}, "
            "or set DATABASE_MAX_CONNECTIONS to the plan's limit if it is higher"
        )
    return msgspec.structs.replace(settings, database_pool_size=pool)


_PASSWORD_PARAMETER = re.compile(r"([?&][^=&?]*password=)[^&]*", re.IGNORECASE)


def mask_url_password(url: str) -> str:
    """postgres://user:secret@host/db?sslpassword=x -> postgres://user:***@host/db?sslpassword=***

    Errs towards masking too much: the userinfo ends at the last "@" before the query (or anywhere,
    when a stray "?" sits inside an unencoded password).
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return _PASSWORD_PARAMETER.sub(r"\1***", url)
    head = rest.split("?", 1)[0]
    at = head.rfind("@") if "@" in head else rest.rfind("@")
    if at > 0 and ":" in rest[:at]:
        rest = rest[:at].split(":", 1)[0] + ":***" + rest[at:]
    return scheme + separator + _PASSWORD_PARAMETER.sub(r"\1***", rest)
