"""The beacon: the GIF it answers with, and its query parser.

The parser never raises and does linear work on any input: the query string is cut to
``MAX_QUERY`` characters first, only ``p``, ``r`` and ``c`` are decoded, invalid
percent-escapes and non-UTF-8 bytes become U+FFFD, and every value is capped.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote_plus, urlsplit

from .events import MAX_CAMPAIGN, MAX_LEN
from .messages import Response

__all__ = ["GIF", "PIXEL_HEADERS", "gif_response", "parse_pixel_query"]

#: A transparent 1x1 GIF89a (43 bytes).
GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")

#: The GIF's headers. Shared by every response: copy before adding to them.
#: No ``Pragma`` or ``Expires``: RFC 9111 deprecates the first, and ``max-age`` overrides
#: the second in every cache; each header costs the server's response writer time on
#: every beacon (about 1 µs a header in uvicorn's).
PIXEL_HEADERS: list[tuple[str, str]] = [
    ("content-type", "image/gif"),
    ("content-length", str(len(GIF))),
    ("cache-control", "no-store, no-cache, must-revalidate, max-age=0"),
]



def gif_response(
    method: str, status: int = 200, headers: list[tuple[str, str]] = PIXEL_HEADERS
) -> Response:
    """The beacon's answer: the GIF, or no body to a ``HEAD``."""
    return Response(status, headers, GIF if method != "HEAD" else b"")


MAX_QUERY = 3 * MAX_LEN * 2 + 3 * MAX_CAMPAIGN + 64
_KEYS = {"p": MAX_LEN, "r": MAX_LEN, "c": MAX_CAMPAIGN}
#: Control characters, dropped from decoded values (C0 and DEL).
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def parse_pixel_query(query: str | bytes) -> dict[str, str]:
    """``p``, ``r`` and ``c`` from the pixel's query string, decoded and capped.

    ``query`` may be the raw bytes of an ASGI scope (read as latin-1, as WSGI does).
    The result is cached by the exact query and shared between calls with the same
    one (a page's beacon URL is the same for every visitor coming from the same
    place): do not modify it.

    >>> parse_pixel_query("p=%2Fdocs%3Futm_source%3Dx&c=news&zzz=1")
    {'p': '/docs?utm_source=x', 'c': 'news'}
    """
    found = _parsed.get(query)
    if found is None:
        found = _parse(query.decode("latin-1") if isinstance(query, bytes) else query)
        if len(query) <= MAX_CACHED_QUERY:
            if len(_parsed) >= _PARSED_SIZE:
                _parsed.clear()
            _parsed[query] = found
    return found


#: Queries parsed lately (bounded: dropped all at once when full), and the longest kept.
_parsed: dict[str | bytes, dict[str, str]] = {}
_PARSED_SIZE = 2048
MAX_CACHED_QUERY = 1024


def parsed_queries() -> dict[str | bytes, dict[str, str]]:
    """``parse_pixel_query``'s cache, by raw query (read-only: for its C reader)."""
    return _parsed


def _parse(query: str) -> dict[str, str]:
    found: dict[str, str] = {}
    if not query:
        return found
    for part in query[:MAX_QUERY].split("&"):
        key, sep, value = part.partition("=")
        cap = _KEYS.get(key)
        if cap is None or not sep or key in found:
            continue
        text = _unquote_plus(value[: cap * 3])[:cap]
        if _CONTROL.search(text) is not None:
            text = _CONTROL.sub("", text)
        if text:
            found[key] = text
    return found


def _unquote_plus(text: str) -> str:
    """``unquote_plus(text, errors="replace")``, in C for the usual ASCII values.

    ``urllib``'s decoder loops in Python (~2 µs for a short path); here the escapes
    become ``\\xNN`` for the C ``unicode_escape`` codec, and the bytes are decoded as
    UTF-8 with replacement, which for an ASCII string is exactly what ``unquote_plus``
    does. Anything else (a backslash, a non-ASCII character, a malformed escape) takes
    ``unquote_plus`` itself.
    """
    if "%" not in text:
        return text.replace("+", " ")
    if text.isascii() and "\\" not in text:
        try:
            raw = text.replace("+", " ").replace("%", "\\x").encode("ascii")
            return raw.decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
        except UnicodeDecodeError:
            pass
    return unquote_plus(text, errors="replace")


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
