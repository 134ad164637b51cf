"""The plain request and response the core works with, and what makes a response private.

The adapters translate an ASGI scope or a WSGI environ into a ``Request`` and apply a
``Response`` or extra headers; nothing here knows about either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENDPOINT_HEADERS",
    "PAGE_HEADERS",
    "PRIVATE_ADDED",
    "Request",
    "Response",
    "private_headers",
]

#: The request headers the core reads for app pages and the pixel.
PAGE_HEADERS = (
    "cookie",
    "host",
    "user-agent",
    "referer",
    "dnt",
    "sec-gpc",
    "sec-purpose",
    "purpose",
    "x-moz",
    "x-forwarded-proto",
    "x-forwarded-for",
)
#: ... and for trackmw's own endpoints (same-origin checks, the stats API's token).
ENDPOINT_HEADERS = (*PAGE_HEADERS, "origin", "sec-fetch-site", "authorization", "accept")


@dataclass(slots=True)
class Request:
    """What the core needs to know about one HTTP request.

    ``headers`` has lower-case names; repeated ``Cookie`` headers are joined with
    ``"; "``. ``native`` is the framework's own request object (or a function making
    it), handed to the ``authorize`` setting.
    """

    method: str
    path: str
    query: str = ""
    scheme: str = "http"
    headers: dict[str, str] = field(default_factory=dict)
    client: str | None = None
    native: Any = None
    now: float = 0.0

    @property
    def host(self) -> str:
        return self.headers.get("host", "").lower()


@dataclass(slots=True)
class Response:
    """A complete response from one of trackmw's own endpoints."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


#: What ``private_headers`` adds, before the cookies, to a response that has neither
#: ``Vary`` nor ``Cache-Control`` (adapters may append these directly in that case).
PRIVATE_ADDED = (("vary", "Cookie"), ("cache-control", "private"))


def private_headers(
    headers: Iterable[tuple[str, str]], set_cookies: list[str]
) -> list[tuple[str, str]]:
    """``headers`` plus ``set_cookies``, made safe for shared caches.

    ``Vary`` gains ``Cookie``; ``Cache-Control`` becomes ``private`` (``public`` and
    ``s-maxage`` removed) unless the app already forbids storing. Each cookie stays a
    header of its own.
    """
    out: list[tuple[str, str]] = []
    vary_done = cache_done = False
    for name, value in headers:
        lname = name.lower()
        if lname == "vary" and not vary_done:
            tokens = [t.strip().lower() for t in value.split(",")]
            if "*" not in tokens and "cookie" not in tokens:
                value = value + ", Cookie" if value.strip() else "Cookie"
            vary_done = True
        elif lname == "cache-control" and not cache_done:
            directives = [d.strip() for d in value.split(",") if d.strip()]
            lowered = [d.lower() for d in directives]
            if "no-store" not in lowered and "private" not in lowered:
                kept = [
                    d
                    for d, low in zip(directives, lowered, strict=True)
                    if low != "public" and not low.startswith("s-maxage")
                ]
                value = ", ".join(["private", *kept])
            cache_done = True
        out.append((name, value))
    if not vary_done:
        out.append(("vary", "Cookie"))
    if not cache_done:
        out.append(("cache-control", "private"))
    out.extend(("set-cookie", c) for c in set_cookies)
    return out
