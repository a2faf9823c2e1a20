"""Service configuration: one struct, read from the environment once at start-up."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

# A GitHub login: alphanumerics and single hyphens, at most 39 characters.
GITHUB_LOGIN = r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$"
DEFAULT_DATABASE_URL = "sqlite:///data/service.db"

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class Settings(msgspec.Struct, rename="upper", frozen=True, kw_only=True):
    host: Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Za-z.:-]{1,255}$")] = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = True
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=100 * 1024 * 1024)] = 65536
    request_timeout: Seconds = 10.0
    web_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    github_owner: Annotated[str, msgspec.Meta(pattern=GITHUB_LOGIN)] | None = None
    github_token: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    github_api_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")] = "https://api.github.com"
    github_timeout: Annotated[float, msgspec.Meta(gt=0, le=29)] = 10.0
    github_cache_ttl: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 300.0
    github_stale_ttl: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 86400.0
    github_webhook_secret: Annotated[str, msgspec.Meta(min_length=16, max_length=512)] | None = None
    database_url: Annotated[str, msgspec.Meta(pattern=r"^(sqlite|postgres|postgresql)://")] = DEFAULT_DATABASE_URL
    database_pool_size: Annotated[int, msgspec.Meta(ge=1, le=40)] = 5
    admin_token: Annotated[str, msgspec.Meta(min_length=16, max_length=512)] | None = None

    def public_view(self) -> dict[str, object]:
        """The settings as printable values, secrets masked."""
        view: dict[str, object] = msgspec.to_builtins(self)
        for name in SECRETS:
            if view.get(name) is not None:
                view[name] = "***"
        view["DATABASE_URL"] = mask_url_password(self.database_url)
        return view


SECRETS = ("GITHUB_TOKEN", "ADMIN_TOKEN", "GITHUB_WEBHOOK_SECRET")

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
    "GITHUB_OWNER": "a GitHub user or organisation login (letters, digits, single hyphens, at most 39)",
    "GITHUB_TOKEN": "a GitHub token of 1 to 512 characters",
    "GITHUB_API_URL": "an http(s) URL such as https://api.github.com",
    "GITHUB_TIMEOUT": "a number of seconds above 0 and at most 29 (Heroku's router gives up at 30)",
    "GITHUB_CACHE_TTL": "a number of seconds from 0 to 86400",
    "GITHUB_STALE_TTL": "a number of seconds from 0 to 2592000",
    "GITHUB_WEBHOOK_SECRET": "the webhook's secret as set on GitHub, 16 to 512 characters",
    "DATABASE_URL": "sqlite:///path/to/file.db, postgres://user:password@host:port/dbname or postgresql://…",
    "DATABASE_POOL_SIZE": "an integer from 1 to 40 (connections per worker process)",
    "ADMIN_TOKEN": "a secret of 16 to 512 characters",
}

_ERROR_PATH = re.compile(r"^(?P<reason>.*) - at `\$\.(?P<name>[A-Z_]+)`")


class SettingsError(ValueError):
    """A variable has a value the service cannot use; the message is one readable line."""


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every known variable from `environ` (default: os.environ); unknown ones are ignored."""
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for name in Settings.__struct_encode_fields__:
        value = environ.get(name)
        if value is None or value.strip() == "":
            continue  # unset and empty both mean "use the default"
        value = value.strip()
        if name == "CORS_ORIGINS":
            raw[name] = [origin.strip() for origin in value.split(",") if origin.strip()]
        elif name == "LOG_LEVEL":
            raw[name] = value.lower()
        else:
            raw[name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _readable(exc, raw) from None


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
    shown = "***" if name in SECRETS else repr(raw.get(name))
    reason = match["reason"].replace("`", "")
    if "matching regex" in reason:
        reason = "not of the accepted form"
    reason = reason[:1].lower() + reason[1:]
    return SettingsError(f"invalid {name}={shown}: {reason}; expected {EXPECTED[name]}")


def mask_url_password(url: str) -> str:
    """postgres://user:secret@host/db -> postgres://user:***@host/db"""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)
