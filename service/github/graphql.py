"""GitHub's GraphQL API, as far as the showcase uses it: the two queries, the structs their answers decode
into (GitHub's camelCase names, only the fields asked for), and their mapping to the REST-shaped models.

Points, not calls, are GraphQL's budget: GitHub counts the connections a query may need at most, divided by
100 (at least 1). `PINNED` asks for 6 pins with their topics and languages (1 + 6 + 6 = 13 requests: 1 point);
`LANGUAGES` asks for 100 repositories and each one's languages (1 + 100 = 101: 1 point per page of 100).
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from service.github.models import Language, License, ShowcaseRepository, byte_languages

T = TypeVar("T")

PAGE_SIZE = 100  # repositories per page of LANGUAGES, GitHub's maximum
_LANGUAGES = "languages(first: 100, orderBy: {field: SIZE, direction: DESC}) { edges { size node { name color } } }"

PINNED = f"""
query Pinned($login: String!) {{
  repositoryOwner(login: $login) {{
    ... on ProfileOwner {{
      pinnedItems(first: 6, types: REPOSITORY) {{
        nodes {{
          ... on Repository {{
            name nameWithOwner url description homepageUrl
            primaryLanguage {{ name }}
            repositoryTopics(first: 20) {{ nodes {{ topic {{ name }} }} }}
            stargazerCount forkCount
            issues(states: OPEN) {{ totalCount }}
            isFork isArchived
            licenseInfo {{ spdxId name }}
            defaultBranchRef {{ name }}
            createdAt updatedAt pushedAt
            {_LANGUAGES}
          }}
        }}
      }}
    }}
  }}
}}
"""

LANGUAGES = f"""
query Languages($login: String!, $after: String) {{
  repositoryOwner(login: $login) {{
    repositories(first: {PAGE_SIZE}, after: $after, privacy: PUBLIC, ownerAffiliations: [OWNER]) {{
      pageInfo {{ hasNextPage endCursor }}
      nodes {{ isFork isArchived {_LANGUAGES} }}
    }}
  }}
}}
"""


class GraphQLError(msgspec.Struct):
    message: str = ""
    type: str | None = None  # GitHub's error type: RATE_LIMITED, NOT_FOUND, FORBIDDEN, …


class Answer(msgspec.Struct, Generic[T]):
    """A GraphQL response: only good with `data` and no `errors`."""

    data: T | None = None
    errors: list[GraphQLError] | None = None


class _Name(msgspec.Struct):
    name: str


class _LanguageNode(msgspec.Struct):
    name: str
    color: str | None = None


class _LanguageEdge(msgspec.Struct):
    size: int
    node: _LanguageNode


class _LanguageConnection(msgspec.Struct):
    edges: list[_LanguageEdge] = []


class _Topic(msgspec.Struct):
    topic: _Name


class _Topics(msgspec.Struct):
    nodes: list[_Topic] = []


class _Count(msgspec.Struct, rename="camel"):
    total_count: int


class _License(msgspec.Struct, rename="camel"):
    spdx_id: str | None = None
    name: str | None = None


class PinnedNode(msgspec.Struct, rename="camel"):
    """One pinned repository, as PINNED asks for it."""

    name: str
    name_with_owner: str
    url: str
    description: str | None = None
    homepage_url: str | None = None
    primary_language: _Name | None = None
    repository_topics: _Topics | None = None
    stargazer_count: int | None = None
    fork_count: int | None = None
    issues: _Count | None = None
    is_fork: bool | None = None
    is_archived: bool | None = None
    license_info: _License | None = None
    default_branch_ref: _Name | None = None
    created_at: str | None = None
    updated_at: str | None = None
    pushed_at: str | None = None
    languages: _LanguageConnection | None = None


class _PinnedItems(msgspec.Struct):
    nodes: list[PinnedNode]


class _PinningOwner(msgspec.Struct, rename="camel"):
    pinned_items: _PinnedItems


class PinnedData(msgspec.Struct, rename="camel"):
    repository_owner: _PinningOwner | None  # null: no such user or organisation


class LanguagesNode(msgspec.Struct, rename="camel"):
    """One repository, as LANGUAGES asks for it."""

    is_fork: bool = False
    is_archived: bool = False
    languages: _LanguageConnection | None = None


class _PageInfo(msgspec.Struct, rename="camel"):
    has_next_page: bool
    end_cursor: str | None = None


class _Repositories(msgspec.Struct, rename="camel"):
    page_info: _PageInfo
    nodes: list[LanguagesNode]


class _RepositoryOwner(msgspec.Struct):
    repositories: _Repositories


class LanguagesData(msgspec.Struct, rename="camel"):
    repository_owner: _RepositoryOwner | None


PINNED_ANSWER = msgspec.json.Decoder(Answer[PinnedData])
LANGUAGES_ANSWER = msgspec.json.Decoder(Answer[LanguagesData])


def _languages(connection: _LanguageConnection | None) -> dict[str, tuple[str | None, int]]:
    return {edge.node.name: (edge.node.color, edge.size) for edge in (connection.edges if connection else ())}


def showcase_repository(node: PinnedNode) -> ShowcaseRepository:
    """A pinned repository under the REST names /github/repos uses (open issues: issues only, where REST
    also counts pull requests)."""
    return ShowcaseRepository(
        name=node.name,
        full_name=node.name_with_owner,
        html_url=node.url,
        description=node.description,
        homepage=node.homepage_url,
        language=node.primary_language.name if node.primary_language else None,
        topics=[t.topic.name for t in node.repository_topics.nodes] if node.repository_topics else None,
        stargazers_count=node.stargazer_count,
        forks_count=node.fork_count,
        open_issues_count=node.issues.total_count if node.issues else None,
        fork=node.is_fork,
        archived=node.is_archived,
        license=License(node.license_info.spdx_id, node.license_info.name) if node.license_info else None,
        default_branch=node.default_branch_ref.name if node.default_branch_ref else None,
        created_at=node.created_at,
        updated_at=node.updated_at,
        pushed_at=node.pushed_at,
        languages=byte_languages(_languages(node.languages)),
    )


def owner_languages(nodes: list[LanguagesNode]) -> list[Language]:
    """Bytes per language over the non-fork, non-archived repositories, largest first."""
    sizes: dict[str, tuple[str | None, int]] = {}
    for node in nodes:
        if node.is_fork or node.is_archived:
            continue
        for name, (color, size) in _languages(node.languages).items():
            sizes[name] = (color, sizes.get(name, (None, 0))[1] + size)
    return byte_languages(sizes)
