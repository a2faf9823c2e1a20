"""`python -m service announcements import|export|edit`: Markdown files with front matter in and out, on SQLite
and PostgreSQL. Run in process through `main`, as a shell would run it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from service.__main__ import main
from service.announcements.models import Announcement, NewAnnouncement
from service.announcements.store import AnnouncementStore, open_store

POST = """---
layout: post
title: "Håndtering av blokkerende kode"
date: 2025-11-22 10:00:00 +0100
tags: Python, Async IO
description: Om å ikke blokkere.
author: someone
---

Some **Markdown** here.
"""


@pytest.fixture
def store(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AnnouncementStore]:
    """The database the command line uses (DATABASE_URL), migrated; a store on it to look with."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    for name in ("SITE_URL", "ADMIN_TOKEN", "DYNO"):
        monkeypatch.delenv(name, raising=False)
    main(["migrate"])
    store = open_store(database_url, pool_size=1)
    store.open()
    try:
        yield store
    finally:
        store.close()


def everything(store: AnnouncementStore) -> list[Announcement]:
    return sorted(store.list(now=datetime.now(UTC), limit=1000, tag=None, include_all=True, after=None), key=lambda a: a.id)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def refused(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert isinstance(exited.value.code, str), exited.value.code
    return exited.value.code


def test_import_reads_front_matter_as_site_generators_write_it(store: AnnouncementStore, tmp_path: Path) -> None:
    write(tmp_path, "posts/2025-11-22-my-post.md", POST)
    write(tmp_path, "posts/plain.md", "# A heading title\n\nBody text.\n")
    write(tmp_path, "posts/bundle/index.md", "---\ntitle: Bundle\ntags: [news]\npinned: true\nexpires_at: 2099-01-01\n---\nB\n")
    write(tmp_path, "posts/draft.md", "---\ntitle: Not yet\ndraft: true\n---\nx\n")
    write(tmp_path, "posts/notes.txt", "not Markdown")
    main(["announcements", "import", str(tmp_path / "posts")])
    by_slug = {a.slug: a for a in everything(store)}
    assert sorted(by_slug) == ["bundle", "my-post", "plain"]  # the draft and the .txt left out
    post, bundle, plain = by_slug["my-post"], by_slug["bundle"], by_slug["plain"]
    assert (post.slug, post.title, post.summary, post.tags) == ("my-post", "Håndtering av blokkerende kode", "Om å ikke blokkere.",
                                                               ["python", "async-io"])  # fmt: skip
    assert post.published_at == datetime(2025, 11, 22, 9, 0, tzinfo=UTC)
    assert post.body == "Some **Markdown** here." and post.body_html == "<p>Some <strong>Markdown</strong> here.</p>\n"
    assert (bundle.slug, bundle.pinned, bundle.expires_at) == ("bundle", True, datetime(2099, 1, 1, tzinfo=UTC))
    assert (plain.slug, plain.title, plain.body) == ("plain", "A heading title", "Body text.")


def test_importing_twice_changes_nothing_and_an_edited_file_keeps_its_id(
    store: AnnouncementStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "2025-11-22-my-post.md", POST)
    main(["announcements", "import", str(path)])
    before = everything(store)
    main(["announcements", "import", str(path)])
    assert everything(store) == before
    assert "0 created, 0 updated, 1 unchanged" in capsys.readouterr().out
    path.write_text(POST.replace("Some **Markdown** here.", "Edited ~~text~~."), encoding="utf-8")
    main(["announcements", "import", "--dry-run", str(path)])
    assert "would update my-post" in capsys.readouterr().out and everything(store) == before
    main(["announcements", "import", str(path)])
    (after,) = everything(store)
    assert (
        after.id == before[0].id and after.body_html == "<p>Edited <s>text</s>.</p>\n" and after.updated_at > before[0].updated_at
    )


def test_export_then_import_changes_nothing(store: AnnouncementStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    for fields in [
        {"title": "Blåbær: «sitat» & 'quotes'", "body": "\n  Indented start.\n\n```python\nprint(1)\n```\n\n", "tags": ["mat"],
         "summary": "Kort: oppsummert.", "pinned": True, "published_at": "2026-01-02T03:04:05.123456+01:00",
         "expires_at": "2099-12-31T23:59:59Z"},
        {"title": "新年快乐", "body": "---\nnot front matter\n---\n# Not a title"},
        {"title": "Scheduled", "body": "Later.", "published_at": "2099-01-01T00:00:00Z"},
    ]:  # fmt: skip
        store.create(msgspec.convert(fields, NewAnnouncement), now=now)
    before = everything(store)
    main(["announcements", "export", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{a.slug}.md" for a in before)
    capsys.readouterr()
    main(["announcements", "import", str(tmp_path / "out")])
    assert "0 created, 0 updated, 3 unchanged" in capsys.readouterr().out
    assert everything(store) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("---\ntitle: Fine\ntags: [a, b\n---\nbody\n", "bad.md:4: front matter is not valid YAML"),
        ("---\ntitle: Fine\ndate: next tuesday\n---\nbody\n", "bad.md:3: 'next tuesday' is not a date or time"),
        ("---\nlayout: post\ntitle: " + "x" * 201 + "\n---\nbody\n", "bad.md:3: title: expected `str` of length <= 200"),
        ("---\ntitle: Fine\nslug: Not A Slug\n---\nbody\n", "bad.md:3: slug: not of the accepted form"),
        ("---\ntitle: Fine\n---\n\n\n", "bad.md:3: body: expected `str` of length >= 1"),
        ("No heading, no front matter.\n", "bad.md:1: no title"),
        (
            "---\ntitle: Fine\ndate: 2026-01-02\nexpires_at: 2026-01-01\n---\nbody\n",
            "bad.md:4: expires_at: must be after published_at",
        ),
        ("---\ntitle: Fine\nslug: good\n---\nbody\n", "bad.md:3: slug good is also"),
        ("---\ntitle: [unclosed\n", "bad.md:1: front matter opened with --- is never closed"),
    ],
    ids=["yaml", "date", "title-length", "slug", "empty-body", "no-title", "expiry", "duplicate-slug", "unclosed"],
)
def test_a_bad_file_is_named_with_its_line_and_nothing_is_written(
    store: AnnouncementStore, tmp_path: Path, text: str, expected: str
) -> None:
    write(tmp_path, "a-good.md", "---\ntitle: Good one\nslug: good\n---\nFine.\n")
    write(tmp_path, "bad.md", text)
    message = refused(["announcements", "import", str(tmp_path)])
    assert expected in message and message.endswith("nothing imported"), message
    assert str(tmp_path / "bad.md") in message
    assert everything(store) == []


def test_edit_changes_the_given_fields(store: AnnouncementStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "my-post.md", POST)
    main(["announcements", "import", str(path)])
    (created,) = everything(store)
    body = write(tmp_path, "body.md", "New *body*.\n")
    capsys.readouterr()
    main(["announcements", "edit", str(created.id), "--title", "Ny tittel", "--summary", "Ny.", "--body-file", str(body),
          "--tags", "a,b", "--pinned", "--slug", "ny"])  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    (edited,) = everything(store)
    assert printed["id"] == edited.id == created.id
    assert (edited.title, edited.summary, edited.body_html, edited.tags, edited.pinned, edited.slug) == (
        "Ny tittel", "Ny.", "<p>New <em>body</em>.</p>\n", ["a", "b"], True, "ny")  # fmt: skip
    main(["announcements", "edit", str(created.id), "--no-pinned"])
    assert everything(store)[0].pinned is False
    assert "nothing to change" in refused(["announcements", "edit", str(created.id)])
    assert "Not Found" in refused(["announcements", "edit", "12345", "--title", "x"])
