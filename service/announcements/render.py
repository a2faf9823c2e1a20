"""Markdown -> safe HTML, once per write: CommonMark with GFM tables, strikethrough and autolinks (markdown-it-py,
linkify-it-py), then an allow-list sanitizer (nh3, the Rust ammonia crate): whatever the Markdown holds, the HTML
has no script, style, iframe, event handler or `javascript:`/`data:` URL."""

from __future__ import annotations

import re

import nh3
from markdown_it import MarkdownIt

# "gfm-like": CommonMark + tables + strikethrough + linkify, raw HTML passed through to the sanitizer.
_markdown = MarkdownIt("gfm-like")

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "details", "dd", "div", "dl", "dt", "em", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "i", "img", "input", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp",
    "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "code": {"class"},
    "th": {"align", "style"},
    "td": {"align", "style"},
    "ol": {"start"},
    "abbr": {"title"},
}
_LANGUAGE = re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}")
_ALIGN = re.compile(r"text-align:\s*(left|center|right)")


def _keep(tag: str, attribute: str, value: str) -> str | None:
    """Only a fenced block's language class on <code>, and only a table cell's alignment as style."""
    if attribute == "class":
        return value if tag == "code" and _LANGUAGE.fullmatch(value) else None
    if attribute == "style":
        match = _ALIGN.fullmatch(value.strip().rstrip(";"))
        return f"text-align:{match[1]}" if match else None
    return value


def render_markdown(markdown: str) -> str:
    """The body as sanitized HTML. Links and images keep http(s) and relative URLs only."""
    return nh3.clean(
        _markdown.render(markdown),
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        attribute_filter=_keep,
        url_schemes={"http", "https"},
        link_rel="nofollow noopener noreferrer",
        strip_comments=True,
    )
