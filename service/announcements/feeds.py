"""The announcements as feeds a reader follows: Atom 1.0 (RFC 4287) and JSON Feed 1.1, each entry linking to
its page on the website (SITE_URL + ANNOUNCEMENT_PATH). Built from stored rows only: nothing is rendered here."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Literal, NamedTuple

import msgspec

from service.announcements.models import Announcement, Tag, Time, rfc3339

FEED_SIZE = 20  # the newest public announcements a feed holds
ATOM_TYPE = b"application/atom+xml; charset=utf-8"
JSON_FEED_TYPE = b"application/feed+json; charset=utf-8"
Kind = Literal["atom", "json"]

_ATOM = "http://www.w3.org/2005/Atom"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encoder = msgspec.json.Encoder()
# Characters XML 1.0 cannot carry at all, escaped or not; an announcement may hold them (only NUL is refused).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class FeedSite(NamedTuple):
    """Where the announcements are shown: SITE_URL (no trailing slash), ANNOUNCEMENT_PATH with `{slug}` and/or
    `{id}`, SITE_TITLE."""

    url: str
    announcement_path: str
    title: str

    def page(self, item: Announcement) -> str:
        return self.url + self.announcement_path.replace("{slug}", item.slug).replace("{id}", str(item.id))

    def entry_id(self, item: Announcement) -> str:
        """Stable for the announcement's life, whatever its slug or title becomes (a reader's key for it)."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"{self.url}#announcement-{item.id}").urn

    def feed_id(self, tag: str | None) -> str:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"{self.url}#announcements" + (f"-{tag}" if tag else "")).urn

    def feed_title(self, tag: str | None) -> str:
        return f"{self.title}: {tag}" if tag else self.title


class JsonFeedAuthor(msgspec.Struct):
    name: str


class JsonFeedItem(msgspec.Struct, omit_defaults=True, kw_only=True):
    id: str
    url: str
    title: str
    content_html: str
    date_published: Time
    date_modified: Time
    tags: list[Tag]
    summary: str | None = None  # left out when the announcement has none


class JsonFeed(msgspec.Struct, kw_only=True):
    version: Literal["https://jsonfeed.org/version/1.1"] = "https://jsonfeed.org/version/1.1"
    title: str
    home_page_url: str
    authors: list[JsonFeedAuthor]
    items: list[JsonFeedItem]


def render_feed(kind: Kind, site: FeedSite, items: list[Announcement], tag: str | None) -> bytes:
    return atom_feed(site, items, tag) if kind == "atom" else json_feed(site, items, tag)


def json_feed(site: FeedSite, items: list[Announcement], tag: str | None) -> bytes:
    feed = JsonFeed(
        title=site.feed_title(tag),
        home_page_url=site.url + "/",
        authors=[JsonFeedAuthor(site.title)],
        items=[
            JsonFeedItem(
                id=site.entry_id(item),
                url=site.page(item),
                title=item.title,
                content_html=item.body_html,
                date_published=item.published_at,
                date_modified=item.updated_at,
                tags=item.tags,
                summary=item.summary or None,
            )
            for item in items
        ],
    )
    return _encoder.encode(feed)


def atom_feed(site: FeedSite, items: list[Announcement], tag: str | None) -> bytes:
    feed = ET.Element("feed", xmlns=_ATOM)
    ET.SubElement(feed, "id").text = site.feed_id(tag)
    ET.SubElement(feed, "title").text = _text(site.feed_title(tag))
    ET.SubElement(feed, "updated").text = rfc3339(max((item.updated_at for item in items), default=_EPOCH))
    ET.SubElement(feed, "link", rel="alternate", type="text/html", href=site.url + "/")
    ET.SubElement(ET.SubElement(feed, "author"), "name").text = _text(site.title)
    for item in items:
        entry = ET.SubElement(feed, "entry")
        ET.SubElement(entry, "id").text = site.entry_id(item)
        ET.SubElement(entry, "title").text = _text(item.title)
        ET.SubElement(entry, "link", rel="alternate", type="text/html", href=site.page(item))
        ET.SubElement(entry, "published").text = rfc3339(item.published_at)
        ET.SubElement(entry, "updated").text = rfc3339(item.updated_at)
        if item.summary:
            ET.SubElement(entry, "summary", type="text").text = _text(item.summary)
        ET.SubElement(entry, "content", type="html").text = _text(item.body_html)  # escaped by ElementTree, as type="html" wants
        for name in item.tags:
            ET.SubElement(entry, "category", term=name)
    document: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return document


def _text(value: str) -> str:
    return _NOT_XML.sub("", value)
