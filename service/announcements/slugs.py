"""Slugs: an announcement's name in URLs, made from its title in ASCII, unique with a `-2`, `-3` … suffix."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

SLUG_MAX = 80
# Letters NFKD does not decompose into a base letter and marks.
_LATIN = str.maketrans({"æ": "ae", "Æ": "ae", "ø": "o", "Ø": "o", "œ": "oe", "Œ": "oe", "ß": "ss", "đ": "d", "Đ": "d",
                        "ð": "d", "Ð": "d", "þ": "th", "Þ": "th", "ł": "l", "Ł": "l", "ı": "i"})  # fmt: skip


def slugify(title: str) -> str:
    """`title` in lower-case ASCII words joined by `-`, at most 80 characters; "" if nothing Latin is left
    ("Håndtering av blokkerende kode" -> "handtering-av-blokkerende-kode")."""
    ascii_text = unicodedata.normalize("NFKD", title.translate(_LATIN)).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > SLUG_MAX:
            break
        slug = candidate
    return slug or (words[0][:SLUG_MAX] if words else "")


def fallback_slug(id: int) -> str:
    """For a title with nothing Latin in it (Chinese, say)."""
    return f"announcement-{id}"


def first_free(base: str, taken: Callable[[str], bool]) -> str:
    """`base` if it is free, else `base-2`, `base-3` …, shortened so that the whole stays within 80 characters."""
    if not taken(base):
        return base
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = base[: SLUG_MAX - len(suffix)].rstrip("-") + suffix
        if not taken(candidate):
            return candidate
        n += 1
