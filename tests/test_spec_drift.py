"""openapi.yaml against the msgspec structs that cross the wire: the schemas must not drift apart.

For each struct, the JSON Schema msgspec derives (`msgspec.json.schema_components`) is turned into what
actually travels in the struct's direction, then compared with its part of openapi.yaml: properties,
required, types and nullability, enums, bounds, patterns, formats, the defaults of what clients send,
and unknown fields.

- REQUEST: a JSON body decoded from a client. msgspec's schema is what is accepted; unknown fields are
  refused exactly when the struct has forbid_unknown_fields.
- QUERY: a query string decoded into a struct, compared with the operation's query parameters (which
  name every parameter accepted). A query string holds only strings, so a `None` default means "not
  given", never null.
- RESPONSE: encoded to clients. Every field is sent, except that with omit_defaults a field equal to its
  default is left out (so a `None` default is never sent as null); nothing else is sent.
- UPSTREAM: decoded from GitHub (skipping the fields GitHub adds) and encoded to clients as RESPONSE.

GitHub's GraphQL answers never reach clients as they are (service.github.graphql maps them to the REST-shaped
structs above); their structs are checked against the queries that produce them instead.
"""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import graphql as graphql_core
import msgspec
import pytest

from service.announcements.feeds import JsonFeed, JsonFeedAuthor, JsonFeedItem
from service.announcements.models import (
    CURSOR,
    Announcement,
    AnnouncementPage,
    AnnouncementPatch,
    FeedQuery,
    ListQuery,
    NewAnnouncement,
    Slug,
    Tag,
)
from service.docs import load_spec
from service.errors import Problem
from service.github import graphql
from service.github.client import GitHubCheck
from service.github.models import Language, Languages, License, Owner, Pinned, Repository, RepositoryQuery, ShowcaseRepository
from service.github.webhook import Payload, Receipt
from service.health import Check, HealthResponse, Readiness
from service.hooks.outbox import DeployHookPayload, Reason
from service.hooks.sender import HooksCheck


class Direction(enum.Enum):
    REQUEST = "request"
    QUERY = "query"
    RESPONSE = "response"
    UPSTREAM = "upstream"


REQUEST, QUERY, RESPONSE, UPSTREAM = Direction

# Every schema component of openapi.yaml, and every operation's query parameters, with the type that
# is decoded or encoded there.
WIRE: dict[str, tuple[Any, Direction]] = {
    "Tag": (Tag, REQUEST),
    "Slug": (Slug, REQUEST),
    "NewAnnouncement": (NewAnnouncement, REQUEST),
    "AnnouncementPatch": (AnnouncementPatch, REQUEST),
    "GET /announcements query": (ListQuery, QUERY),
    "GET /announcements/feed.atom query": (FeedQuery, QUERY),
    "GET /announcements/feed.json query": (FeedQuery, QUERY),
    "JsonFeed": (JsonFeed, RESPONSE),
    "JsonFeedItem": (JsonFeedItem, RESPONSE),
    "JsonFeedAuthor": (JsonFeedAuthor, RESPONSE),
    "GET /github/repos query": (RepositoryQuery, QUERY),
    "Announcement": (Announcement, RESPONSE),
    "AnnouncementPage": (AnnouncementPage, RESPONSE),
    "Health": (HealthResponse, RESPONSE),
    "Readiness": (Readiness, RESPONSE),
    "Check": (Check, RESPONSE),
    "GitHubCheck": (GitHubCheck, RESPONSE),
    "WebhookReceipt": (Receipt, RESPONSE),
    "WebhookPayload": (Payload, REQUEST),
    "Problem": (Problem, RESPONSE),
    "Repository": (Repository, UPSTREAM),
    "Owner": (Owner, UPSTREAM),
    "Pinned": (Pinned, RESPONSE),
    "ShowcaseRepository": (ShowcaseRepository, RESPONSE),
    "Languages": (Languages, RESPONSE),
    "Language": (Language, RESPONSE),
    "HooksCheck": (HooksCheck, RESPONSE),
    "DeployHookPayload": (DeployHookPayload, RESPONSE),
    "DeployHookReason": (Reason, RESPONSE),
}

# (where, keyword) -> why openapi.yaml and the struct differ there on purpose.
DELIBERATE: dict[tuple[str, str], str] = {
    ("Announcement.id", "format"): "msgspec has no int64 format; ids are the database's 64-bit keys",
    ("Announcement.id", "minimum"): "ids come from the database, from 1; the store's unsaved draft holds id 0",
    ("Problem.type", "format"): "msgspec has no uri-reference format; problem_response builds a URN or about:blank",
    ("Problem", "additionalProperties"): "RFC 9457 lets problems grow extension members; clients must ignore unknown ones",
    (
        "Readiness.checks.github",
        "property",
    ): "checks is dict[str, Check]; the github entry is a GitHubCheck (a Check with more fields), compared as its own component",
    (
        "Readiness.checks.deploy_hooks",
        "property",
    ): "checks is dict[str, Check]; the deploy_hooks entry is a HooksCheck, compared as its own component",
    (
        "GitHubCheck.last_refresh",
        "format",
    ): "written by client._time() as an RFC 3339 UTC string; msgspec has no date-time format for str",
    ("GitHubCheck.leases[].expires_at", "format"): "written by client._time() as an RFC 3339 UTC string",
    ("GitHubCheck.rate_limited_until", "format"): "written by client._time() as an RFC 3339 UTC string",
    ("GitHubCheck.last_pinned_refresh", "format"): "written by client._time() as an RFC 3339 UTC string",
    ("GitHubCheck.last_languages_refresh", "format"): "written by client._time() as an RFC 3339 UTC string",
    ("GET /announcements query.cursor", "pattern"): "checked by decode_cursor with CURSOR (tested below) for a clearer message",
}

_REF = "#/$defs/"
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_IGNORED = {"title", "description", "example", "examples", "$comment"}
_KEYWORDS = {"minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern",
             "minItems", "maxItems", "format", "default"}  # fmt: skip
_UNDERSTOOD = _IGNORED | _KEYWORDS | {"$ref", "type", "enum", "const", "anyOf", "items", "properties", "required",
                                      "additionalProperties"}  # fmt: skip


@dataclass(frozen=True)
class Difference:
    where: str  # component (or operation's query) and property, e.g. "NewAnnouncement.title"
    keyword: str  # the JSON Schema keyword that differs, or "property" for a property on one side only
    message: str


# -- the two sides ---------------------------------------------------------------------------


class SpecSide:
    """openapi.yaml as written."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def schema_at(self, where: str) -> dict[str, Any]:
        if where.endswith(" query"):
            return self._query_schema(*where.removesuffix(" query").split(" ", 1))
        return self.spec["components"]["schemas"][where]

    def queries(self) -> set[str]:
        """Every operation that takes query parameters."""
        return {
            f"{method.upper()} {path} query"
            for path, item in self.spec["paths"].items()
            for method in item.keys() & _METHODS
            if self._query_schema(method, path)["properties"]
        }

    def resolve(self, schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        if "$ref" not in schema:
            return None, schema
        target: Any = self.spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return schema["$ref"].rsplit("/", 1)[1], target

    def _query_schema(self, method: str, path: str) -> dict[str, Any]:
        item = self.spec["paths"][path]
        parameters = [self.resolve(p)[1] for p in item.get("parameters", []) + item[method.lower()].get("parameters", [])]
        query = [p for p in parameters if p["in"] == "query"]
        return {
            "type": "object",
            "additionalProperties": False,  # the parameters listed are the only ones
            "properties": {p["name"]: p["schema"] for p in query},
            "required": [p["name"] for p in query if p.get("required")],
        }


class StructSide:
    """What msgspec derives from a type, as it travels in the given direction."""

    def __init__(self, tp: Any, direction: Direction) -> None:
        self.direction = direction
        (self.root,), self.components = msgspec.json.schema_components([tp], ref_template=_REF + "{name}")
        self.classes = {cls.__name__: cls for cls in _struct_classes(msgspec.inspect.type_info(tp))}

    def resolve(self, schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        if "$ref" not in schema:
            return None, schema
        name = schema["$ref"].removeprefix(_REF)
        return name, self._on_the_wire(self.classes[name], self.components[name])

    def _on_the_wire(self, cls: type[msgspec.Struct], schema: dict[str, Any]) -> dict[str, Any]:
        if self.direction is REQUEST:
            return schema
        schema = copy.deepcopy(schema)
        properties = schema["properties"]
        config = cls.__struct_config__
        fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
        if self.direction is QUERY:
            for name, info in fields.items():
                if info.default is None:
                    properties[name] = _without_null(properties[name])
            return schema
        # RESPONSE and UPSTREAM: what the encoder writes
        for name, info in fields.items():
            properties[name].pop("default", None)
            if config.omit_defaults and info.default is None:
                properties[name] = _without_null(properties[name])
        schema["required"] = [
            name for name, info in fields.items() if info.required or not (config.omit_defaults or info.default is msgspec.UNSET)
        ]
        schema["additionalProperties"] = False
        return schema


def _struct_classes(info: Any, seen: set[type] | None = None) -> Iterator[type[msgspec.Struct]]:
    """Every struct class a type holds, however deeply nested."""
    seen = set() if seen is None else seen
    if isinstance(info, msgspec.inspect.StructType):
        if info.cls in seen:
            return
        seen.add(info.cls)
        yield info.cls
    if isinstance(info, tuple):
        for item in info:
            yield from _struct_classes(item, seen)
    elif isinstance(info, msgspec.inspect.Type | msgspec.inspect.Field):
        for name in info.__struct_fields__:
            yield from _struct_classes(getattr(info, name), seen)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    schema = {k: v for k, v in schema.items() if k != "default"}
    branches = [b for b in schema.pop("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches
    if isinstance(schema.get("type"), list):
        schema["type"] = [t for t in schema["type"] if t != "null"]
    return schema


# -- one schema level, normalised ------------------------------------------------------------


@dataclass
class Node:
    ref: str | None = None  # the component it refers to
    types: set[str] | None = None  # None: any type
    enum: list[Any] | None = None
    keywords: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, dict[str, Any]] | None = None
    required: set[str] = field(default_factory=set)
    additional: dict[str, Any] | bool = True  # False: no other properties; a schema: what they are
    items: dict[str, Any] | None = None


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null", list: "array",
            dict: "object"}[type(value)]  # fmt: skip


def _node(side: SpecSide | StructSide, schema: dict[str, Any], where: str) -> Node:
    ref, schema = side.resolve(schema)
    unknown = set(schema) - _UNDERSTOOD
    assert not unknown, f"{where}: the drift test does not understand {sorted(unknown)}; teach it"
    node = Node(ref=ref)
    if "type" in schema:
        node.types = set(schema["type"]) if isinstance(schema["type"], list) else {schema["type"]}
    if "const" in schema or "enum" in schema:
        node.enum = [schema["const"]] if "const" in schema else list(schema["enum"])
        if node.types is None:
            node.types = {_json_type(v) for v in node.enum}
    node.keywords = {k: schema[k] for k in _KEYWORDS if k in schema}
    if "properties" in schema:
        node.properties = dict(schema["properties"])
    node.required = set(schema.get("required", ()))
    node.additional = schema.get("additionalProperties", True)
    node.items = schema.get("items")
    for branch in schema.get("anyOf", ()):
        _merge(node, _node(side, branch, where), where)
    return node


def _merge(node: Node, branch: Node, where: str) -> None:
    """One branch of an anyOf into the node: `X | None` and `type: [x, "null"]` come out the same."""
    node.ref = node.ref or branch.ref
    if branch.types is not None:
        node.types = (node.types or set()) | branch.types
    if branch.enum is not None:
        assert node.enum is None, f"{where}: two enums in one anyOf"
        node.enum = branch.enum
    for name in ("properties", "items"):
        if getattr(branch, name) is not None:
            assert getattr(node, name) is None, f"{where}: {name} in two anyOf branches"
            setattr(node, name, getattr(branch, name))
    if branch.properties is not None:
        node.required, node.additional = branch.required, branch.additional
    for key, value in branch.keywords.items():
        assert node.keywords.get(key, value) == value, f"{where}: {key} differs between anyOf branches"
        node.keywords[key] = value


# -- comparing ------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    if isinstance(value, set):
        value = sorted(value)
    return json.dumps(value)


_ABSENT = object()


def _same(a: Any, b: Any) -> bool:
    if a is _ABSENT or b is _ABSENT:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # 1 is not 1.0, false is not 0


def _show_additional(value: dict[str, Any] | bool) -> str:
    return "open" if value is True else "false" if value is False else "a schema"


def _differs(where: str, keyword: str, spec_value: Any, struct_value: Any) -> Difference:
    return Difference(
        where, keyword, f"{where}: {keyword} is {_show(spec_value)} in openapi.yaml but {_show(struct_value)} in the struct"
    )


def _compare(
    where: str, spec: SpecSide, spec_schema: dict[str, Any], struct: StructSide, struct_schema: dict[str, Any], nested: bool
) -> Iterator[Difference]:
    a, b = _node(spec, spec_schema, where), _node(struct, struct_schema, where)
    if nested and a.ref is not None and b.ref is not None:
        listed = WIRE.get(a.ref)
        if listed is not None and listed[0] is struct.classes.get(b.ref) and listed[1] is struct.direction:
            return  # the same component on both sides: compared on its own
    if a.types != b.types:
        yield _differs(where, "type", a.types if a.types is not None else _ABSENT, b.types if b.types is not None else _ABSENT)
    enums = [sorted(json.dumps(v) for v in n.enum) if n.enum is not None else _ABSENT for n in (a, b)]
    if not _same(*enums):
        yield _differs(where, "enum", a.enum if a.enum is not None else _ABSENT, b.enum if b.enum is not None else _ABSENT)
    for keyword in sorted(_KEYWORDS):
        if keyword == "default" and struct.direction in (RESPONSE, UPSTREAM):
            continue  # a default only means something for what clients send
        spec_value, struct_value = a.keywords.get(keyword, _ABSENT), b.keywords.get(keyword, _ABSENT)
        if not _same(spec_value, struct_value):
            yield _differs(where, keyword, spec_value, struct_value)
    spec_properties, struct_properties = a.properties or {}, b.properties or {}
    for name in sorted(spec_properties.keys() - struct_properties.keys()):
        yield Difference(f"{where}.{name}", "property", f"{where}.{name}: in openapi.yaml but not in the struct")
    for name in sorted(struct_properties.keys() - spec_properties.keys()):
        yield Difference(f"{where}.{name}", "property", f"{where}.{name}: in the struct but not in openapi.yaml")
    sent = struct.direction in (RESPONSE, UPSTREAM)
    for name in sorted(a.required - b.required):
        also = "the struct may leave it out" if sent else "optional in the struct"
        yield Difference(f"{where}.{name}", "required", f"{where}.{name}: required in openapi.yaml but {also}")
    for name in sorted(b.required - a.required):
        what = "always sent" if sent else "required in the struct"
        yield Difference(f"{where}.{name}", "required", f"{where}.{name}: {what} but optional in openapi.yaml")
    for name in sorted(spec_properties.keys() & struct_properties.keys()):
        yield from _compare(f"{where}.{name}", spec, spec_properties[name], struct, struct_properties[name], True)
    if isinstance(a.additional, dict) and isinstance(b.additional, dict):
        yield from _compare(f"{where}{{*}}", spec, a.additional, struct, b.additional, True)
    elif a.additional != b.additional:
        yield Difference(
            where,
            "additionalProperties",
            f"{where}: additionalProperties is {_show_additional(a.additional)} in openapi.yaml "
            f"but {_show_additional(b.additional)} in the struct",
        )
    if a.items is not None and b.items is not None:
        yield from _compare(f"{where}[]", spec, a.items, struct, b.items, True)
    elif (a.items is None) != (b.items is None):
        yield _differs(where, "items", a.items if a.items is not None else _ABSENT, b.items if b.items is not None else _ABSENT)


def drift(spec: dict[str, Any], where: str, tp: Any, direction: Direction) -> list[Difference]:
    """Every difference between openapi.yaml at `where` and `tp` as it travels in `direction`."""
    spec_side, struct_side = SpecSide(spec), StructSide(tp, direction)
    return list(_compare(where, spec_side, spec_side.schema_at(where), struct_side, struct_side.root, False))


# -- the tests -------------------------------------------------------------------------------


def _spec() -> dict[str, Any]:
    return copy.deepcopy(load_spec()[1])


@pytest.mark.parametrize("where", WIRE)
def test_struct_and_openapi_yaml_agree(where: str) -> None:
    tp, direction = WIRE[where]
    unexplained = [d.message for d in drift(_spec(), where, tp, direction) if (d.where, d.keyword) not in DELIBERATE]
    assert not unexplained, "\n".join(unexplained)


def test_every_deliberate_difference_is_still_there() -> None:
    spec = _spec()
    found = {(d.where, d.keyword) for where, (tp, direction) in WIRE.items() for d in drift(spec, where, tp, direction)}
    assert set(DELIBERATE) - found == set()


def test_every_schema_component_and_query_is_compared() -> None:
    spec = SpecSide(_spec())
    assert set(spec.spec["components"]["schemas"]) | spec.queries() == set(WIRE)


def test_cursor_pattern_is_the_one_decode_cursor_uses() -> None:
    parameter = next(p for p in _spec()["paths"]["/announcements"]["get"]["parameters"] if p.get("name") == "cursor")
    assert parameter["schema"]["pattern"] == "^" + CURSOR.pattern.replace("(", "").replace(")", "") + "$"  # less its groups


def test_upstream_structs_skip_fields_github_adds() -> None:
    for tp, direction in WIRE.values():
        if direction is UPSTREAM:
            for cls in _struct_classes(msgspec.inspect.type_info(tp)):
                assert not cls.__struct_config__.forbid_unknown_fields, cls.__name__


# GraphQL answer struct -> the query whose answer it decodes.
GRAPHQL_ANSWERS: dict[Any, str] = {graphql.PinnedData: graphql.PINNED, graphql.LanguagesData: graphql.LANGUAGES}


def _selected(query: str) -> set[str]:
    """Every field name the query selects, at any depth."""
    names: set[str] = set()

    class Fields(graphql_core.Visitor):
        def enter_field(self, node: graphql_core.FieldNode, *args: Any) -> None:
            names.add(node.name.value)

    graphql_core.visit(graphql_core.parse(query), Fields())
    return names


@pytest.mark.parametrize("answer", GRAPHQL_ANSWERS, ids=lambda tp: tp.__name__)
def test_graphql_structs_read_only_what_their_query_selects(answer: Any) -> None:
    selected = _selected(GRAPHQL_ANSWERS[answer])
    for cls in _struct_classes(msgspec.inspect.type_info(answer)):
        assert not cls.__struct_config__.forbid_unknown_fields, cls.__name__
        unasked = {f.encode_name for f in msgspec.structs.fields(cls)} - selected
        assert not unasked, f"{cls.__name__} reads {sorted(unasked)}, which the query does not select"


def test_graphql_queries_are_valid_against_the_stand_ins_schema_written_like_githubs() -> None:
    from tests.github_standin import GRAPHQL_SCHEMA

    for query in GRAPHQL_ANSWERS.values():
        assert graphql_core.validate(GRAPHQL_SCHEMA, graphql_core.parse(query)) == []


# -- the comparison catches drift --------------------------------------------------------------

Title100 = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S")]


def _drop_sort_by_stars(spec: dict[str, Any]) -> None:
    sort = next(p for p in spec["paths"]["/github/repos"]["get"]["parameters"] if p.get("name") == "sort")
    sort["schema"]["enum"].remove("stars")


PLANTED = {
    "extra request field": (
        "NewAnnouncement",
        msgspec.defstruct("NewAnnouncement", [("author", str, "")], bases=(NewAnnouncement,), kw_only=True),
        REQUEST,
        None,
        ("NewAnnouncement.author", "property"),
    ),
    "changed bound": (
        "NewAnnouncement",
        msgspec.defstruct("NewAnnouncement", [("title", Title100)], bases=(NewAnnouncement,), kw_only=True),
        REQUEST,
        None,
        ("NewAnnouncement.title", "maxLength"),
    ),
    "extra response field": (
        "Announcement",
        msgspec.defstruct("Announcement", [("author", str)], bases=(Announcement,), kw_only=True),
        RESPONSE,
        None,
        ("Announcement.author", "property"),
    ),
    "nullable upstream field": (
        "Owner",
        msgspec.defstruct("Owner", [("html_url", str | None)], bases=(Owner,)),
        UPSTREAM,
        None,
        ("Owner.html_url", "type"),
    ),
    "unknown fields accepted": (
        "AnnouncementPatch",
        msgspec.defstruct("AnnouncementPatch", [], bases=(AnnouncementPatch,), forbid_unknown_fields=False),
        REQUEST,
        None,
        ("AnnouncementPatch", "additionalProperties"),
    ),
    "null sent for a default": (
        "Check",
        msgspec.defstruct("Check", [], bases=(Check,), omit_defaults=False),
        RESPONSE,
        None,
        ("Check.detail", "required"),
    ),
    "nested struct changed": (
        "Repository",
        msgspec.defstruct(
            "Repository",
            [("license", msgspec.defstruct("License", [("key", str | None, None)], bases=(License,)) | None, None)],
            bases=(Repository,),
        ),
        UPSTREAM,
        None,
        ("Repository.license.key", "property"),
    ),
    "query enum changed in openapi.yaml": (
        "GET /github/repos query",
        RepositoryQuery,
        QUERY,
        _drop_sort_by_stars,
        ("GET /github/repos query.sort", "enum"),
    ),
}


@pytest.mark.parametrize("case", PLANTED)
def test_planted_drift_is_reported_naming_component_and_property(case: str) -> None:
    where, tp, direction, change_spec, (expected_where, expected_keyword) = PLANTED[case]
    spec = _spec()
    before = set(drift(spec, where, *WIRE[where]))
    if change_spec is not None:
        change_spec(spec)
    found = [d for d in drift(spec, where, tp, direction) if d not in before]
    assert (expected_where, expected_keyword) in {(d.where, d.keyword) for d in found}
    for difference in found:
        assert difference.where == expected_where and difference.message.startswith(expected_where + ": "), difference
