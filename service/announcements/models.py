"""Announcement structs: what clients send, what is stored, what is answered."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec

from service.announcements.render import render_markdown
from service.database import to_micros
from service.errors import FieldError, InvalidInput

# Some non-space text and no NUL anywhere: PostgreSQL's text type cannot hold U+0000 (SQLite can), so both
# stores refuse it alike, as a 422 naming the field. Linear to match; openapi.yaml carries the same pattern.
TEXT = r"^\s*[^\s\x00][^\x00]*$"
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=TEXT)]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=20_000, pattern=TEXT, description="Markdown text")]
Tag = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,32}$")]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=10)]
SLUG = r"^[a-z0-9]+(-[a-z0-9]+)*$"
Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=80, pattern=SLUG)]
Summary = Annotated[str, msgspec.Meta(max_length=500, pattern=r"^[^\x00]*$", description="Plain text")]
Time = Annotated[datetime, msgspec.Meta(tz=True)]  # RFC 3339 with an offset; stored in UTC


class NewAnnouncement(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    title: Title
    body: Body
    slug: Slug | msgspec.UnsetType = msgspec.UNSET  # made from the title when not given
    summary: Summary = ""
    tags: Tags = []
    pinned: bool = False
    published_at: Time | msgspec.UnsetType = msgspec.UNSET  # now; a future time schedules it (null is refused)
    expires_at: Time | None = None


class AnnouncementPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Only the fields given change; `expires_at: null` removes the expiry."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    body: Body | msgspec.UnsetType = msgspec.UNSET
    slug: Slug | msgspec.UnsetType = msgspec.UNSET
    summary: Summary | msgspec.UnsetType = msgspec.UNSET
    tags: Tags | msgspec.UnsetType = msgspec.UNSET
    pinned: bool | msgspec.UnsetType = msgspec.UNSET
    published_at: Time | msgspec.UnsetType = msgspec.UNSET
    expires_at: Time | None | msgspec.UnsetType = msgspec.UNSET


class Announcement(msgspec.Struct, kw_only=True):
    id: int
    slug: str
    title: str
    summary: str
    body: str
    body_html: str  # `body` rendered and sanitized when it was written
    tags: list[Tag]
    pinned: bool
    published_at: Time
    expires_at: Time | None
    created_at: Time
    updated_at: Time

    @property
    def etag(self) -> str:
        # updated_at only ever moves forward (see `patched`), so it versions the representation.
        return f'"{self.id}-{to_micros(self.updated_at)}"'

    def is_public(self, now: datetime) -> bool:
        return self.published_at <= now and (self.expires_at is None or self.expires_at > now)


class AnnouncementPage(msgspec.Struct):
    items: list[Announcement]
    next_cursor: str | None


def rfc3339(moment: datetime) -> str:
    """A time as feeds and front matter write it: RFC 3339 in UTC, with Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc(value: datetime, field: str) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is in the year 10000 in UTC
        raise InvalidInput([FieldError(field, "out of the supported range of times")]) from None


def new_announcement(data: NewAnnouncement, *, id: int, slug: str, now: datetime) -> Announcement:
    published = utc(data.published_at, "published_at") if data.published_at else now
    expires = utc(data.expires_at, "expires_at") if data.expires_at else None
    _check_schedule(published, expires)
    return Announcement(
        id=id,
        slug=slug,
        title=data.title,
        summary=data.summary,
        body=data.body,
        body_html=render_markdown(data.body),
        tags=list(dict.fromkeys(data.tags)),
        pinned=data.pinned,
        published_at=published,
        expires_at=expires,
        created_at=now,
        updated_at=now,
    )


def patched(current: Announcement, patch: AnnouncementPatch, *, now: datetime) -> Announcement:
    """`current` with the patch applied and a new `updated_at`; `current` itself if nothing changes."""
    changes = {name: value for name in patch.__struct_fields__ if (value := getattr(patch, name)) is not msgspec.UNSET}
    if "tags" in changes:
        changes["tags"] = list(dict.fromkeys(changes["tags"]))
    if changes.get("body", current.body) != current.body:
        changes["body_html"] = render_markdown(changes["body"])
    for name in ("published_at", "expires_at"):
        if changes.get(name) is not None:
            changes[name] = utc(changes[name], name)
    result = msgspec.structs.replace(current, **changes)
    if result == current:
        return current  # an empty patch, or one that sets what is already there, changes nothing
    _check_schedule(result.published_at, result.expires_at)
    return msgspec.structs.replace(result, updated_at=max(now, current.updated_at + timedelta(microseconds=1)))


def _check_schedule(published_at: datetime, expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= published_at:
        raise InvalidInput([FieldError("expires_at", "must be after published_at")])


# -- keyset pagination -----------------------------------------------------------------------

Status = Literal["published", "all"]


class ListQuery(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    tag: Tag | None = None
    status: Status = "published"
    cursor: str | None = None
    q: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None  # full-text search, best first


class FeedQuery(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    tag: Tag | None = None


# What both engines count as a word: a run of Unicode letters and digits (FTS5's unicode61, PostgreSQL's parser).
_WORD = re.compile(r"[^\W_]+")


def search_words(q: str) -> list[str]:
    """The words of a search, each to be found (in any order); 422 naming `q` if there is none."""
    words = list(dict.fromkeys(_WORD.findall(unicodedata.normalize("NFC", q).lower())))
    if not words:
        raise InvalidInput([FieldError("q", "has no word to search for (letters or digits)")])
    return words


class Cursor(msgspec.Struct, frozen=True):
    """Where the previous page ended, in the list's order (pinned first, then newest)."""

    pinned: bool
    published_at_us: int
    id: int


# Clients treat it as opaque; it is "<pinned 0|1>.<published_at µs>.<id>", every part within 64 bits.
CURSOR = re.compile(r"([01])\.(-?[0-9]{1,18})\.([0-9]{1,18})")


def encode_cursor(last: Announcement) -> str:
    return f"{int(last.pinned)}.{to_micros(last.published_at)}.{last.id}"


def decode_cursor(text: str) -> Cursor:
    match = CURSOR.fullmatch(text)
    if match is None:
        raise InvalidInput([FieldError("cursor", "not a cursor this service gave out")])
    return Cursor(match[1] == "1", int(match[2]), int(match[3]))
