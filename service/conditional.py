"""Conditional requests (RFC 9110 §8.8.3, §13.1.1–13.1.2): entity tags, If-Match and If-None-Match, written once.

Everything that answers with an ETag or honours a precondition calls these."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from starlette.datastructures import Headers


def etag_for(body: bytes) -> str:
    """A strong entity tag for these exact bytes."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc = %x21 / %x23-7E / obs-text (RFC 9110 §8.8.3)
# One list element per match, with optional whitespace around it; an empty element (", ,") is allowed.
_ELEMENT = re.compile(rb'[ \t]*(?:(W/)?("[\x21\x23-\x7e\x80-\xff]*"))?[ \t]*')


class EntityTags:
    """A parsed If-Match or If-None-Match value: `*`, or a list of entity tags.

    A value that is neither (malformed) matches nothing, which is what RFC 9110 makes of it: If-Match
    evaluates to false (412) and If-None-Match to true (the normal answer).
    """

    __slots__ = ("any", "strong", "opaque")

    def __init__(self, *, any: bool = False, tags: Iterable[tuple[bool, str]] = ()) -> None:
        tags = list(tags)
        self.any = any
        self.strong = frozenset(tag for weak, tag in tags if not weak)  # compared strongly (If-Match)
        self.opaque = frozenset(tag for _, tag in tags)  # compared weakly (If-None-Match)

    def __repr__(self) -> str:
        return "EntityTags(*)" if self.any else f"EntityTags(strong={sorted(self.strong)}, all={sorted(self.opaque)})"

    def strong_match(self, etag: str) -> bool:
        """If-Match (§13.1.1): true for `*` (the resource exists) or a strongly equal tag. `etag` is
        the current representation's tag; a weak current tag never matches strongly."""
        return self.any or (not etag.startswith("W/") and etag in self.strong)

    def weak_match(self, etag: str) -> bool:
        """If-None-Match (§13.1.2): true for `*` or a tag whose opaque part equals `etag`'s."""
        return self.any or etag.removeprefix("W/") in self.opaque


MATCHES_NOTHING = EntityTags()
_ANY = EntityTags(any=True)


def parse_entity_tags(value: bytes | str | None) -> EntityTags | None:
    """The condition a header states, or None where it states none (absent, or only whitespace)."""
    if value is None:
        return None
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    stripped = raw.strip(b" \t")
    if not stripped:
        return None
    if stripped == b"*":
        return _ANY
    tags: list[tuple[bool, str]] = []
    position, end = 0, len(raw)
    while True:
        element = _ELEMENT.match(raw, position)
        assert element is not None  # every part of the pattern is optional
        if element[2] is not None:
            tags.append((element[1] is not None, element[2].decode("latin-1")))
        position = element.end()
        if position == end:
            break
        if raw[position : position + 1] != b",":
            return MATCHES_NOTHING  # not a list of entity tags
        position += 1
    return EntityTags(tags=tags) if tags else MATCHES_NOTHING


def not_modified(headers: Headers, etag: str) -> bool:
    """Whether a GET/HEAD for a representation tagged `etag` is answered 304 (If-None-Match, §13.1.2)."""
    condition = parse_entity_tags(headers.get("if-none-match"))
    return condition is not None and condition.weak_match(etag)


# A tag of a compressed form (see service.encoding.coded_etag) stands for the same state as the identity tag.
_CODED_SUFFIX = re.compile(r'-(?:br|gzip)"$')


def expected_etags(headers: Headers) -> frozenset[str] | None:
    """The request's If-Match precondition as the set of current ETags it accepts, or None where it states
    none (no header, or `*`: the resource exists, which a write finds out anyway, 404 otherwise).

    A tag of a compressed form (`"v-br"`, `"v-gzip"`) stands for the same state as the identity tag `"v"`: an
    editor whose browser read the compressed form may send it back, and an edit based on the current state
    must not fail because of how its bytes travelled. Weak tags never match (§13.1.1: strong comparison);
    a malformed header matches nothing (412)."""
    condition = parse_entity_tags(headers.get("if-match"))
    if condition is None or condition.any:
        return None
    return frozenset(tag for strong in condition.strong for tag in (strong, _CODED_SUFFIX.sub('"', strong)))
