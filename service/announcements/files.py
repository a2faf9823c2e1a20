"""Announcements as Markdown files with YAML front matter, as Jekyll, Hugo, Astro and Eleventy write them: read
for `announcements import`, written by `announcements export`. Knows nothing of the database.

Front matter read: `title`, `slug`, `date` or `published_at`, `tags` (a list or a comma-separated string),
`summary`, `description` or `excerpt`, `pinned`, `expires_at`, `draft`; other keys (`layout`, `author` …) are
ignored. The body is the Markdown after the front matter. Without front matter, the title is the first `# `
heading (taken out of the body); without `slug`, the slug comes from the file name
(`2025-11-22-my-post.md` -> `my-post`; `my-post/index.md` -> `my-post`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple

import frontmatter
import msgspec
import yaml
from frontmatter.default_handlers import YAMLHandler

from service.announcements.models import Announcement, NewAnnouncement, rfc3339
from service.announcements.slugs import slugify

SUFFIXES = (".md", ".markdown")
_KEYS = {  # front matter key -> NewAnnouncement field; the first of several names found wins
    "title": "title",
    "slug": "slug",
    "date": "published_at",
    "published_at": "published_at",
    "tags": "tags",
    "summary": "summary",
    "description": "summary",
    "excerpt": "summary",
    "pinned": "pinned",
    "expires_at": "expires_at",
}
_DATED_NAME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}-")
_HEADING = re.compile(r"^# +(?P<title>.+?)\s*#*\s*$", re.M)
_PATH_AT = re.compile(r"at `\$\.(?P<field>[a-z_]+)(?P<rest>[^`]*)`")
_yaml = YAMLHandler()


class MarkdownFile(NamedTuple):
    path: Path
    announcement: NewAnnouncement
    lines: dict[str, int]  # field -> the line that gave it, for messages about it


class BadFiles(Exception):
    """Every problem found, one `file:line: what is wrong` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def markdown_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """The files named, and the Markdown files under the directories named, in name order."""
    for given in map(Path, paths):
        if given.is_dir():
            yield from sorted(p for p in given.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        else:
            yield given


def read_files(paths: Iterable[str | Path]) -> tuple[list[MarkdownFile], list[Path]]:
    """The announcements the files hold, and the drafts (`draft: true`) left out. BadFiles names every problem
    of every file (so one run reports them all); a slug two files share is one of them."""
    found: list[MarkdownFile] = []
    drafts: list[Path] = []
    problems: list[str] = []
    for path in markdown_paths(paths):
        try:
            read = read_file(path)
        except BadFiles as exc:
            problems += exc.problems
            continue
        if read is None:
            drafts.append(path)
        else:
            found.append(read)
    first_with: dict[object, MarkdownFile] = {}
    for item in found:
        other = first_with.setdefault(item.announcement.slug, item)
        if other is not item:
            problems.append(f"{item.path}:{item.lines.get('slug', 1)}: slug {item.announcement.slug} is also {other.path}'s")
    if problems:
        raise BadFiles(problems)
    return found, drafts


def read_file(path: Path) -> MarkdownFile | None:
    """One file's announcement; None for a draft."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadFiles([f"{path}:1: cannot be read as UTF-8 text ({exc.__class__.__name__})"]) from None
    text = text.removeprefix("\ufeff")
    meta: dict[str, Any] = {}
    lines: dict[str, int] = {}
    body = text
    origin = 1  # the line `body` starts on
    if _yaml.detect(text):
        try:
            front, body = _yaml.split(text)
        except ValueError:
            raise BadFiles([f"{path}:1: front matter opened with --- is never closed"]) from None
        origin = front.count("\n") + 1  # on the closing --- line: the body starts with its newline
        try:
            loaded = yaml.safe_load(front)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            raise BadFiles([f"{path}:{line}: front matter is not valid YAML ({getattr(exc, 'problem', None) or exc})"]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise BadFiles([f"{path}:2: front matter must be key: value pairs"])
        meta = loaded or {}
        for number, line_text in enumerate(front.split("\n")):
            key = line_text.split(":", 1)[0].strip()
            if key in _KEYS or key == "draft":
                lines.setdefault(_KEYS.get(key, key), number + 1)
    if meta.get("draft") is True:
        return None
    fields: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, field in _KEYS.items():
        if key in meta and field not in fields:
            fields[field] = meta[key]
            lines.setdefault(field, 1)
    if "title" not in fields:
        heading = _HEADING.search(body)
        if heading is not None:
            fields["title"] = heading["title"]
            lines["title"] = origin + body[: heading.start()].count("\n")
            body = body[: heading.start()] + body[heading.end() :]
    lines["body"] = origin + (len(body) - len(body.lstrip("\n")) if body.strip() else 0)
    fields["body"] = body.strip("\n")
    if "slug" not in fields:  # from the file name, else the title; a Chinese name and title need a `slug:`
        fields["slug"] = slug_from_name(path) or (slugify(fields["title"]) if isinstance(fields.get("title"), str) else "")
        lines["slug"] = 1
        if not fields["slug"]:
            fields.pop("slug")
            problems.append(("slug", "no slug: give `slug:` in the front matter (neither file name nor title has Latin letters)"))
    problems += _normalise(fields)
    try:
        announcement = msgspec.convert(fields, NewAnnouncement)
    except msgspec.ValidationError as exc:
        problems.append(_problem(str(exc)))
    if problems:
        raise BadFiles([f"{path}:{lines.get(field, 1)}: {message}" for field, message in problems])
    return MarkdownFile(path, announcement, lines)


def slug_from_name(path: Path) -> str:
    stem = path.parent.name if path.stem in ("index", "_index") else path.stem
    return slugify(_DATED_NAME.sub("", stem))


def _normalise(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """Front matter as people write it, as NewAnnouncement takes it; the problems found on the way."""
    problems: list[tuple[str, str]] = []
    if "title" not in fields:
        problems.append(("title", "no title: give `title:` in the front matter or start the text with a `# ` heading"))
    if isinstance(fields.get("tags"), str):
        fields["tags"] = [tag.strip() for tag in fields["tags"].split(",") if tag.strip()]
    if isinstance(fields.get("tags"), list):  # "Async Python" -> async-python, as a tag must be
        fields["tags"] = [slugify(str(tag))[:32].strip("-") or str(tag) for tag in fields["tags"]]
    if fields.get("summary") is None:
        fields.pop("summary", None)
    if fields.get("expires_at", "") is None:
        fields["expires_at"] = None
    for field in ("published_at", "expires_at"):
        value = fields.get(field)
        if value is None:
            continue
        moment = _time(value)
        if moment is None:
            problems.append((field, f"{value!r} is not a date or time (RFC 3339, e.g. 2025-11-22T10:00:00+01:00)"))
            fields.pop(field)
        else:
            fields[field] = moment
    return problems


def _time(value: object) -> datetime | None:
    """A date or time as YAML gives it (date, datetime, or text); without an offset it is UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _problem(message: str) -> tuple[str, str]:
    """msgspec's "Expected `str` of length <= 200 - at `$.title`" as (title, what is wrong)."""
    match = _PATH_AT.search(message)
    if match is None:
        return "body", message
    reason = message[: match.start()].rstrip(" -")
    if "matching regex" in reason:
        reason = "not of the accepted form" + (" (lower-case a-z, 0-9 and -)" if match["field"] in ("slug", "tags") else "")
    return match["field"], f"{match['field']}{match['rest']}: {reason[:1].lower()}{reason[1:]}"


# -- writing -------------------------------------------------------------------------------------


def file_name(item: Announcement) -> str:
    return f"{item.slug}.md"


def markdown_file(item: Announcement) -> str:
    """The announcement as a file `read_file` reads back to the same announcement."""
    meta: dict[str, Any] = {"title": item.title, "slug": item.slug, "date": rfc3339(item.published_at)}
    if item.summary:
        meta["summary"] = item.summary
    meta["tags"] = item.tags
    if item.pinned:
        meta["pinned"] = True
    if item.expires_at is not None:
        meta["expires_at"] = rfc3339(item.expires_at)
    text: str = frontmatter.dumps(frontmatter.Post(item.body, **meta), sort_keys=False, allow_unicode=True)
    return text + "\n"
