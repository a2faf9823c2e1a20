"""GitHub payloads as msgspec structs: the fields the site uses, spelled as GitHub spells them."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

# A repository name as GitHub allows it; "." and ".." and a ".git" suffix are refused separately.
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class License(msgspec.Struct):
    spdx_id: str | None = None
    name: str | None = None


class Repository(msgspec.Struct):
    """One repository. List results may omit or null anything but the core fields."""

    name: str
    full_name: str
    html_url: str
    description: str | None = None
    homepage: str | None = None
    language: str | None = None
    topics: list[str] | None = None
    stargazers_count: int | None = None
    forks_count: int | None = None
    open_issues_count: int | None = None
    fork: bool | None = None
    archived: bool | None = None
    license: License | None = None
    default_branch: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    pushed_at: str | None = None


class Owner(msgspec.Struct):
    """The owner's public profile, for the site's header."""

    login: str
    type: str
    html_url: str
    avatar_url: str | None = None
    name: str | None = None
    bio: str | None = None
    blog: str | None = None
    location: str | None = None
    public_repos: int | None = None
    followers: int | None = None


class RepositoryQuery(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Query parameters of GET /github/repos."""

    sort: Literal["pushed", "updated", "created", "name", "stars"] = "pushed"
    # Unset: name sorts ascending, the rest descending. (Not Optional: lax query coercion turns "null" into None.)
    direction: Literal["asc", "desc"] | msgspec.UnsetType = msgspec.UNSET
    language: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] | None = None
    forks: bool = False
    archived: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 30


_SORT_KEYS = {
    "pushed": lambda r: r.pushed_at or "",
    "updated": lambda r: r.updated_at or "",
    "created": lambda r: r.created_at or "",
    "name": lambda r: r.name.lower(),
    "stars": lambda r: r.stargazers_count or 0,
}


def select(repositories: list[Repository], query: RepositoryQuery) -> list[Repository]:
    """Filter, sort and cut the owner's repositories as the query asks."""
    language = query.language.lower() if query.language else None
    topic = query.topic.lower() if query.topic else None
    chosen = [
        r
        for r in repositories
        if (query.forks or not r.fork)
        and (query.archived or not r.archived)
        and (language is None or (r.language or "").lower() == language)
        and (topic is None or topic in (r.topics or ()))
    ]
    descending = query.sort != "name" if query.direction is msgspec.UNSET else query.direction == "desc"
    chosen.sort(key=_SORT_KEYS[query.sort], reverse=descending)
    return chosen[: query.limit]


def is_valid_repository_name(name: str) -> bool:
    """Checked on the decoded path segment before any upstream call, so nothing can steer GitHub's URL."""
    return _NAME.fullmatch(name) is not None and name not in (".", "..") and not name.lower().endswith(".git")
