"""What the request path hands the pipeline, and what the pipeline hands a store.

``Hit`` is appended to the buffer on the request path: a small tuple of raw, already
length-capped strings. The background writer turns each into a ``PageView`` (query
strings stripped, referrer reduced to its host, the User-Agent classified, the local
day computed) before a store sees it. ``ConsentChoice`` is the proof of a choice.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MAX_LEN", "ConsentChoice", "Hit", "PageView"]

#: Page paths and referrers are capped at this many characters.
MAX_LEN = 2048
#: User-Agent strings longer than this are cut before classification.
MAX_UA = 512
MAX_CAMPAIGN = 200
#: The page of a pixel hit that names none (no ``p`` and no ``Referer``).
UNKNOWN_PAGE = "(unknown)"


class Hit(NamedTuple):
    """A raw page view as seen on the request path (cheap to build, ~a few hundred bytes)."""

    ts: float
    visitor_id: str | None
    user_id: str | None
    page: str  # path with query, capped
    referrer: str | None  # URL, capped
    campaign: str | None
    user_agent: str
    host: str


class PageView(NamedTuple):
    """A normalized page view, as stores write it."""

    ts: float
    day: str  # YYYY-MM-DD in the tracker's time zone
    visitor_id: str | None
    user_id: str | None
    path: str
    referrer: str | None  # host name only
    campaign: str | None
    browser: str | None
    os: str | None
    device: str | None
    bot: bool


class ConsentChoice(NamedTuple):
    """Proof of one consent choice."""

    ts: float
    day: str
    visitor_id: str | None
    analytics: bool
    preferences: bool
    policy_version: str
    minor: bool = False
    guardian: bool = False
