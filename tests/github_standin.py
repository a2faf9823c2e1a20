"""A real HTTP server on 127.0.0.1 standing in for GitHub's REST API and its GraphQL API, with switchable
failure scenarios.

It speaks over real sockets (so timeouts, refused and reset connections are real) and counts every
call, so tests can prove how often the service went upstream. `POST /graphql` executes the queries it
is sent with graphql-core against `GRAPHQL_SCHEMA`, a subset of GitHub's schema written as GitHub writes
it (interfaces RepositoryOwner and ProfileOwner, connections, enums), so a query GitHub would refuse is
refused here too. Also the small helpers tests against it share: signing a webhook delivery as GitHub
does, and waiting on a condition instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import graphql

from tests.fixtures.make_repos import make
from tests.support import LoopbackServer, QuietHandler

T = TypeVar("T")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset_connection: bool = False


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when it arrived
    body: bytes = b""  # a POST's (GraphQL's query)

    @property
    def operation(self) -> str | None:
        """The GraphQL operation's name (`query Pinned(...)` is "Pinned"), for a call to /graphql."""
        if not self.body:
            return None
        document = graphql.parse(json.loads(self.body)["query"])
        names = [d.name.value for d in document.definitions if isinstance(d, graphql.OperationDefinitionNode) and d.name]
        return names[0] if names else None


# The part of GitHub's GraphQL schema the service uses, spelled as in GitHub's public schema.
GRAPHQL_SCHEMA = graphql.build_schema(
    """
    scalar DateTime
    scalar URI

    type Query {
      repositoryOwner(login: String!): RepositoryOwner
    }

    interface Node { id: ID! }

    interface RepositoryOwner {
      id: ID!
      login: String!
      url: URI!
      repositories(
        privacy: RepositoryPrivacy, ownerAffiliations: [RepositoryAffiliation], isFork: Boolean,
        first: Int, after: String, last: Int, before: String
      ): RepositoryConnection!
    }

    interface ProfileOwner {
      id: ID!
      login: String!
      pinnedItems(first: Int, after: String, types: [PinnableItemType!]): PinnableItemConnection!
    }

    type User implements Node & RepositoryOwner & ProfileOwner {
      id: ID!
      login: String!
      url: URI!
      repositories(
        privacy: RepositoryPrivacy, ownerAffiliations: [RepositoryAffiliation], isFork: Boolean,
        first: Int, after: String, last: Int, before: String
      ): RepositoryConnection!
      pinnedItems(first: Int, after: String, types: [PinnableItemType!]): PinnableItemConnection!
    }

    type Organization implements Node & RepositoryOwner & ProfileOwner {
      id: ID!
      login: String!
      url: URI!
      repositories(
        privacy: RepositoryPrivacy, ownerAffiliations: [RepositoryAffiliation], isFork: Boolean,
        first: Int, after: String, last: Int, before: String
      ): RepositoryConnection!
      pinnedItems(first: Int, after: String, types: [PinnableItemType!]): PinnableItemConnection!
    }

    enum RepositoryPrivacy { PUBLIC PRIVATE }
    enum RepositoryAffiliation { OWNER COLLABORATOR ORGANIZATION_MEMBER }
    enum PinnableItemType { REPOSITORY GIST ISSUE PROJECT PULL_REQUEST USER ORGANIZATION TEAM }
    enum IssueState { OPEN CLOSED }
    enum LanguageOrderField { SIZE }
    enum OrderDirection { ASC DESC }
    input LanguageOrder { field: LanguageOrderField!, direction: OrderDirection! }

    type PageInfo { hasNextPage: Boolean!, hasPreviousPage: Boolean!, startCursor: String, endCursor: String }

    type RepositoryConnection { nodes: [Repository], pageInfo: PageInfo!, totalCount: Int! }

    union PinnableItem = Gist | Repository
    type PinnableItemConnection { nodes: [PinnableItem], pageInfo: PageInfo!, totalCount: Int! }
    type Gist implements Node { id: ID!, name: String!, description: String }

    type Repository implements Node {
      id: ID!
      name: String!
      nameWithOwner: String!
      url: URI!
      description: String
      homepageUrl: URI
      primaryLanguage: Language
      repositoryTopics(first: Int, after: String): RepositoryTopicConnection!
      stargazerCount: Int!
      forkCount: Int!
      issues(states: [IssueState!], first: Int, after: String): IssueConnection!
      isFork: Boolean!
      isArchived: Boolean!
      licenseInfo: License
      defaultBranchRef: Ref
      createdAt: DateTime!
      updatedAt: DateTime!
      pushedAt: DateTime
      languages(first: Int, after: String, orderBy: LanguageOrder): LanguageConnection
    }

    type Language implements Node { id: ID!, name: String!, color: String }
    type LanguageEdge { cursor: String!, node: Language!, size: Int! }
    type LanguageConnection { edges: [LanguageEdge], nodes: [Language], pageInfo: PageInfo!, totalCount: Int!, totalSize: Int! }
    type Topic implements Node { id: ID!, name: String! }
    type RepositoryTopic implements Node { id: ID!, topic: Topic! }
    type RepositoryTopicConnection { nodes: [RepositoryTopic], totalCount: Int! }
    type IssueConnection { totalCount: Int! }
    type License implements Node { id: ID!, spdxId: String, name: String! }
    type Ref implements Node { id: ID!, name: String! }
    """
)

# Colors as GitHub's linguist gives them; "Text" has none (GitHub answers null).
LANGUAGE_COLORS: dict[str, str | None] = {
    "Python": "#3572A5", "TypeScript": "#3178c6", "Go": "#00ADD8", "Rust": "#dea584", "JavaScript": "#f1e05a",
    "Shell": "#89e051", "HTML": "#e34c26", "C++": "#f34b7d", "Jupyter Notebook": "#DA5B0B", "Dockerfile": "#384d54",
    "Text": None,
}  # fmt: skip
GRAPHQL_RATE_LIMIT = 5000
TOKEN = "ghp_standin_secret_token_123"  # what tests give the service as GITHUB_TOKEN


Scenario = Callable[[str, dict[str, str]], Reply | None]


class GitHubStandIn(LoopbackServer):
    def __init__(self, owner: str = "octo-dev", count: int = 30, owner_type: str = "User") -> None:
        self.owner = owner
        self.owner_type = owner_type
        self.repos = make(owner, count)
        # The owner's pins, in the owner's order (not the list's), and each repository's languages by bytes.
        self.pinned = [self.repos[i]["name"] for i in (13, 2, 27, 8) if i < count]
        self.languages = {repo["name"]: _languages_of(repo) for repo in self.repos}
        self.graphql_points_left = GRAPHQL_RATE_LIMIT
        self.calls: list[Call] = []
        self.scenario: Scenario | None = None  # returns a Reply to override normal behaviour, or None
        self.delay = 0.0
        self.hold: threading.Event | None = None  # when set to an Event, every answer waits for it (at most 30 s)
        super().__init__()

    def calls_to(self, prefix: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path.startswith(prefix)]

    # -- normal GitHub behaviour -------------------------------------------------------------

    def answer(self, path: str, headers: dict[str, str]) -> Reply:
        url = urlsplit(path)
        query = parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        if parts == ["users", self.owner] or parts == ["orgs", self.owner]:
            return self._json(self.profile(), headers)
        if len(parts) == 3 and parts[0] in ("users", "orgs") and parts[1] == self.owner and parts[2] == "repos":
            per_page = int(query.get("per_page", ["30"])[0])
            page = int(query.get("page", ["1"])[0])
            chunk = self.repos[(page - 1) * per_page : page * per_page]
            extra = {}
            if page * per_page < len(self.repos):
                base = f"{self.url}{url.path}?{'&'.join(f'{k}={v[0]}' for k, v in query.items() if k != 'page')}"
                extra["Link"] = f'<{base}&page={page + 1}>; rel="next", <{base}&page=1>; rel="first"'
            return self._json(chunk, headers, extra)
        if len(parts) == 3 and parts[0] == "repos" and parts[1] == self.owner:
            for repo in self.repos:
                if repo["name"].lower() == parts[2].lower():
                    return self._json(repo, headers)
        return Reply(404, json.dumps({"message": "Not Found"}).encode(), {"Content-Type": "application/json"})

    # -- GraphQL -------------------------------------------------------------------------------

    def graphql_calls(self, operation: str | None = None) -> list[Call]:
        return [c for c in self.calls_to("/graphql") if operation is None or c.operation == operation]

    def answer_graphql(self, headers: dict[str, str], body: bytes) -> Reply:
        """GitHub's POST /graphql: a token is required; each query costs a point; errors come as a 200 with
        `errors` beside whatever `data` could be resolved."""
        if not headers.get("authorization", "").startswith("Bearer "):
            return Reply(401, json.dumps({"message": "This endpoint requires you to be authenticated."}).encode(),
                         {"Content-Type": "application/json"})  # fmt: skip
        request = json.loads(body)
        with self.lock:
            self.graphql_points_left = max(0, self.graphql_points_left - 1)
            left = self.graphql_points_left
        result = graphql.graphql_sync(
            GRAPHQL_SCHEMA, request["query"], root_value=self._graphql_root(), variable_values=request.get("variables")
        )
        payload: dict[str, Any] = {"data": result.data} if result.data is not None or not result.errors else {}
        if result.errors:
            payload["errors"] = [error.formatted for error in result.errors]
        if result.data is not None and result.data.get("repositoryOwner", "") is None:
            login = (request.get("variables") or {}).get("login")
            payload.setdefault("errors", []).append(
                {"type": "NOT_FOUND", "path": ["repositoryOwner"], "message": f"Could not resolve to a User with the login of '{login}'."}
            )  # fmt: skip
        return Reply(
            200, json.dumps(payload).encode(), {"Content-Type": "application/json; charset=utf-8", **graphql_headers(left)}
        )

    def _graphql_root(self) -> dict[str, Any]:
        def repository_owner(info: Any, login: str) -> dict[str, Any] | None:
            if login.lower() != self.owner.lower():
                return None
            return {
                "__typename": self.owner_type,
                "id": "MDQ6VXNlcjU4MzIzMQ==",
                "login": self.owner,
                "url": f"https://github.com/{self.owner}",
                "repositories": self._repositories,
                "pinnedItems": self._pinned_items,
            }

        return {"repositoryOwner": repository_owner}

    def _repositories(self, info: Any, first: int = 100, after: str | None = None, **filters: Any) -> dict[str, Any]:
        start = int(after) if after else 0
        chosen = self.repos[start : start + min(first, 100)]
        end = start + len(chosen)
        return {
            "nodes": [self._graphql_repository(r) for r in chosen],
            "pageInfo": {
                "hasNextPage": end < len(self.repos),
                "hasPreviousPage": start > 0,
                "startCursor": str(start),
                "endCursor": str(end),
            },  # fmt: skip
            "totalCount": len(self.repos),
        }

    def _pinned_items(
        self, info: Any, first: int = 6, after: str | None = None, types: list[str] | None = None
    ) -> dict[str, Any]:
        by_name = {r["name"]: r for r in self.repos}
        pins = [self._graphql_repository(by_name[name]) for name in self.pinned[:first]]
        return {"nodes": pins, "totalCount": len(pins), "pageInfo": {"hasNextPage": False, "hasPreviousPage": False}}

    def _graphql_repository(self, repo: dict[str, Any]) -> dict[str, Any]:
        sizes = self.languages[repo["name"]]
        language = repo["language"]
        license_ = repo["license"]

        def languages(info: Any, first: int = 100, after: str | None = None, orderBy: Any = None) -> dict[str, Any]:  # noqa: N803
            ranked = sorted(sizes.items(), key=lambda item: -item[1])[:first]
            nodes = [{"id": name, "name": name, "color": LANGUAGE_COLORS.get(name)} for name, _ in ranked]
            return {
                "edges": [
                    {"cursor": str(i), "node": node, "size": size} for i, (node, (_, size)) in enumerate(zip(nodes, ranked))
                ],
                "nodes": nodes,
                "totalCount": len(sizes),
                "totalSize": sum(sizes.values()),
                "pageInfo": {"hasNextPage": False, "hasPreviousPage": False},
            }

        return {
            "__typename": "Repository",
            "id": repo["node_id"],
            "name": repo["name"],
            "nameWithOwner": repo["full_name"],
            "url": repo["html_url"],
            "description": repo["description"],
            "homepageUrl": repo["homepage"],
            "primaryLanguage": {"id": language, "name": language, "color": LANGUAGE_COLORS.get(language)} if language else None,
            "repositoryTopics": lambda info, **args: {
                "nodes": [{"id": t, "topic": {"id": t, "name": t}} for t in repo["topics"]],
                "totalCount": len(repo["topics"]),
            },
            "stargazerCount": repo["stargazers_count"],
            "forkCount": repo["forks_count"],
            "issues": lambda info, **args: {"totalCount": repo["open_issues_count"]},
            "isFork": repo["fork"],
            "isArchived": repo["archived"],
            "licenseInfo": {"id": license_["key"], "spdxId": license_["spdx_id"], "name": license_["name"]} if license_ else None,
            "defaultBranchRef": {"id": "main", "name": repo["default_branch"]},
            "createdAt": repo["created_at"],
            "updatedAt": repo["updated_at"],
            "pushedAt": repo["pushed_at"],
            "languages": languages,
        }

    def profile(self) -> dict[str, object]:
        return {
            "login": self.owner,
            "id": 583231,
            "type": self.owner_type,
            "name": "Octo Developer",
            "html_url": f"https://github.com/{self.owner}",
            "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
            "bio": "Writes small fast services.",
            "blog": "https://octo.example",
            "location": "Oslo",
            "public_repos": len(self.repos),
            "followers": 42,
            "site_admin": False,
        }

    @staticmethod
    def _json(payload: object, headers: dict[str, str], extra: dict[str, str] | None = None) -> Reply:
        body = json.dumps(payload).encode()
        etag = '"' + hashlib.sha1(body).hexdigest() + '"'
        out = {"Content-Type": "application/json; charset=utf-8", "ETag": etag, **(extra or {})}
        if headers.get("if-none-match") == etag:
            return Reply(304, b"", out)
        return Reply(200, body, out)

    # -- the server ------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with standin.lock:
                    standin.calls.append(Call(self.path, headers))
                reply = (standin.scenario and standin.scenario(self.path, headers)) or standin.answer(self.path, headers)
                self._reply(reply)

            def do_POST(self) -> None:  # noqa: N802
                headers = {k.lower(): v for k, v in self.headers.items()}
                body = self.rfile.read(int(headers.get("content-length", "0")))
                with standin.lock:
                    standin.calls.append(Call(self.path, headers, body=body))
                reply = standin.scenario and standin.scenario(self.path, headers)
                if not reply:
                    if self.path != "/graphql":
                        reply = Reply(404, json.dumps({"message": "Not Found"}).encode(), {"Content-Type": "application/json"})
                    else:
                        reply = standin.answer_graphql(headers, body)
                self._reply(reply)

            def _reply(self, reply: Reply) -> None:
                if standin.hold is not None:
                    standin.hold.wait(timeout=30)
                if reply.delay or standin.delay:
                    time.sleep(reply.delay or standin.delay)  # the stand-in's own thread, not the service's loop
                if reply.reset_connection:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.status != 304:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.status != 304:
                    self.wfile.write(reply.body)

        return Handler


def _languages_of(repo: dict[str, Any]) -> dict[str, int]:
    """Bytes per language, the primary language largest; some repositories also hold a Dockerfile and text."""
    size = int(repo["size"]) * 100 + 1000
    languages = {repo["language"]: size} if repo["language"] else {}
    if repo["id"] % 3 == 0:
        languages["Dockerfile"] = 1200
    if repo["id"] % 4 == 0:
        languages["Text"] = 300
    return languages


def graphql_headers(remaining: int) -> dict[str, str]:
    """The rate-limit headers GitHub sends with every GraphQL answer."""
    return {
        "x-ratelimit-limit": str(GRAPHQL_RATE_LIMIT),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-used": str(GRAPHQL_RATE_LIMIT - remaining),
        "x-ratelimit-reset": str(int(time.time()) + 3600),
        "x-ratelimit-resource": "graphql",
    }


# -- helpers for tests against the stand-in ----------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    """X-Hub-Signature-256 as GitHub computes it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_headers(secret: str, body: bytes, *, event: str, delivery: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature(secret, body),
        "User-Agent": "GitHub-Hookshot/test",
    }


def push_payload(owner: str, repository: str) -> bytes:
    """A push delivery's body, with the fields a real one carries around the ones the service reads."""
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": "1" * 40,
            "repository": {"name": repository, "full_name": f"{owner}/{repository}", "owner": {"login": owner, "type": "User"}},
            "pusher": {"name": owner},
            "commits": [{"id": "1" * 40, "message": "A change"}],
        }
    ).encode()


async def poll(probe: Callable[[], Awaitable[T]], *, until: Callable[[T], bool], timeout: float = 10.0, every: float = 0.05) -> T:
    """`probe()` again and again until its result satisfies `until`, and that result; fails the test after
    `timeout` seconds (a bound against hanging, not a speed)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if until(result):
            return result
        assert time.monotonic() <= deadline, f"timed out after {timeout:g} s; last result: {result!r}"
        await asyncio.sleep(every)


async def gather(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*awaitables))
