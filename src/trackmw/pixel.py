"""The beacon: the GIF it answers with, and its query parser.

The parser never raises and does linear work on any input: the query string is cut to
``MAX_QUERY`` characters first, only ``p``, ``r`` and ``c`` are decoded, invalid
percent-escapes and non-UTF-8 bytes become U+FFFD, and every value is capped.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote_plus, urlsplit

from .events import MAX_CAMPAIGN, MAX_LEN

__all__ = ["GIF", "PIXEL_HEADERS", "parse_pixel_query"]

#: A transparent 1x1 GIF89a (43 bytes).
GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")

PIXEL_HEADERS: list[tuple[str, str]] = [
    ("content-type", "image/gif"),
    ("content-length", str(len(GIF))),
    ("cache-control", "no-store, no-cache, must-revalidate, max-age=0"),
    ("pragma", "no-cache"),
    ("expires", "0"),
]

MAX_QUERY = 3 * MAX_LEN * 2 + 3 * MAX_CAMPAIGN + 64
_KEYS = {"p": MAX_LEN, "r": MAX_LEN, "c": MAX_CAMPAIGN}


def parse_pixel_query(query: str) -> dict[str, str]:
    """``p``, ``r`` and ``c`` from the pixel's query string, decoded and capped.

    >>> parse_pixel_query("p=%2Fdocs%3Futm_source%3Dx&c=news&zzz=1")
    {'p': '/docs?utm_source=x', 'c': 'news'}
    """
    found: dict[str, str] = {}
    if not query:
        return found
    for part in query[:MAX_QUERY].split("&"):
        key, sep, value = part.partition("=")
        cap = _KEYS.get(key)
        if cap is None or not sep or key in found:
            continue
        text = unquote_plus(value[: cap * 3], errors="replace")
        text = "".join(ch for ch in text[:cap] if ch >= " " and ch != "\x7f")
        if text:
            found[key] = text
    return found


def page_from_referer(referer: str | None) -> str | None:
    """The page path (with query) of a pixel request's ``Referer``: the page it is on."""
    if not referer:
        return None
    try:
        parts = urlsplit(referer[: MAX_LEN * 2])
    except ValueError:
        return None
    if not parts.path and not parts.netloc:
        return None
    page = parts.path or "/"
    if parts.query:
        page += "?" + parts.query
    return page[:MAX_LEN]
