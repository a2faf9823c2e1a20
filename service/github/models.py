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


# -- the showcase: pinned repositories and languages ---------------------------------------------

SHOWCASE_SIZE = 6  # GitHub lets an owner pin six; the top-starred fallback shows as many


class Language(msgspec.Struct, omit_defaults=True):
    """A language's part of the owner's (or one repository's) code: `bytes` when GitHub measured it, else
    `repositories`, the count of repositories whose primary language it is."""

    name: str
    color: str | None  # as GitHub gives it; always sent, null where GitHub has none
    share: float  # of the whole: the items' shares add up to 1
    bytes: int | msgspec.UnsetType = msgspec.UNSET
    repositories: int | msgspec.UnsetType = msgspec.UNSET


class ShowcaseRepository(Repository):
    """A repository as /github/repos shows it, plus its languages, largest first."""

    languages: list[Language] = msgspec.field(default_factory=list)


class Pinned(msgspec.Struct):
    """GET /github/pinned: the owner's pins in the owner's order, or else the most starred repositories."""

    source: Literal["pinned", "top-starred"]
    items: list[ShowcaseRepository]


class Languages(msgspec.Struct):
    """GET /github/languages: the owner's languages over non-fork, non-archived repositories, largest first."""

    source: Literal["bytes", "primary-language"]
    items: list[Language]


def _shown(repository: Repository) -> bool:
    return not repository.fork and not repository.archived


def top_starred(repositories: list[Repository]) -> Pinned:
    """The fallback for pins: the six non-fork, non-archived repositories with the most stars (ties by name),
    each with its primary language (the list has no bytes)."""
    chosen = sorted(filter(_shown, repositories), key=lambda r: (-(r.stargazers_count or 0), r.name.lower()))
    items = [
        ShowcaseRepository(**msgspec.structs.asdict(r), languages=[Language(r.language, None, 1.0)] if r.language else [])
        for r in chosen[:SHOWCASE_SIZE]
    ]
    return Pinned("top-starred", items)


def primary_languages(repositories: list[Repository]) -> Languages:
    """The fallback for languages: how many non-fork, non-archived repositories have each primary language."""
    counts: dict[str, int] = {}
    for repository in filter(_shown, repositories):
        if repository.language:
            counts[repository.language] = counts.get(repository.language, 0) + 1
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0].lower()))
    return Languages("primary-language", [Language(name, None, count / total, repositories=count) for name, count in ranked])


def byte_languages(sizes: dict[str, tuple[str | None, int]]) -> list[Language]:
    """Languages by bytes (name -> (color, bytes)), largest first, with their shares of the whole."""
    total = sum(size for _, size in sizes.values())
    ranked = sorted(sizes.items(), key=lambda item: (-item[1][1], item[0].lower()))
    return [Language(name, color, size / total, bytes=size) for name, (color, size) in ranked if size > 0]


def is_valid_repository_name(name: str) -> bool:
    """Checked on the decoded path segment before any upstream call, so nothing can steer GitHub's URL."""
    return _NAME.fullmatch(name) is not None and name not in (".", "..") and not name.lower().endswith(".git")
