"""Fixtures for the stats API and dashboard tests: apps wrapped by trackmw, with the
dashboard installed, and a seeded set of hits whose report is computed by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from trackmw import Tracker
from trackmw.asgi import TrackingMiddleware
from trackmw.dashboard import install
from trackmw.events import Hit

TOKEN = "dashboard-token-0123456789"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
DAY = 86_400
#: 2026-11-10 12:00 UTC.
NOON = 1_794_312_000.0


def seed_hits(tracker: Tracker) -> None:
    """Eight hits over two days (2026-11-10 and -11), known by hand; see EXPECTED."""
    add = tracker.core.pipeline.add
    host = "site.example"
    add(Hit(NOON, "vA", None, "/", "https://news.example.org/x", None, CHROME, host))
    add(Hit(NOON + 60, "vA", None, "/about", None, None, CHROME, host))
    add(Hit(NOON + 120, "vB", "alice", "/", None, "mail-1", IPHONE, host))
    add(Hit(NOON + 180, None, None, "/", "https://t.co/abc", None, CHROME, host))
    add(Hit(NOON + 240, "vC", None, "/", None, None, BOT, host))
    add(Hit(NOON + DAY, "vA", None, "/about?utm_campaign=fall&x=1", None, None, CHROME, host))
    add(Hit(NOON + DAY + 60, "vD", "bob", "/", "https://site.example/", None, IPHONE, host))
    add(Hit(NOON + DAY + 120, "vB", "alice", "/", None, None, IPHONE, host))


#: The report of seed_hits for 2026-11-10..2026-11-11, computed by hand.
EXPECTED: dict[str, Any] = {
    "since": "2026-11-10",
    "until": "2026-11-11",
    "pageviews": 7,  # 8 hits, one bot
    "visitors": 3,  # vA, vB, vD (vC was a bot)
    "registered_visitors": 2,  # alice, bob
    "anonymous_pageviews": 1,
    "bot_hits": 1,
    "days": [
        {"day": "2026-11-10", "pageviews": 4, "visitors": 2},
        {"day": "2026-11-11", "pageviews": 3, "visitors": 3},
    ],
    "pages": [
        {"path": "/", "pageviews": 5, "visitors": 3},
        {"path": "/about", "pageviews": 1, "visitors": 1},
        {"path": "/about?utm_campaign=fall", "pageviews": 1, "visitors": 1},
    ],
    "browsers": [{"name": "Mobile Safari", "visitors": 2}, {"name": "Chrome", "visitors": 1}],
    "os": [{"name": "iOS", "visitors": 2}, {"name": "Windows", "visitors": 1}],
    "devices": [{"name": "mobile", "visitors": 2}, {"name": "desktop", "visitors": 1}],
    "referrers": [{"name": "news.example.org", "pageviews": 1}, {"name": "t.co", "pageviews": 1}],
    "campaigns": [{"name": "fall", "pageviews": 1}, {"name": "mail-1", "pageviews": 1}],
    "consent": {"accepted": 0, "rejected": 0},
}


async def _home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("home")


def starlette_app(tracker: Tracker) -> Starlette:
    app = Starlette(routes=[Route("/", _home)])
    app.add_middleware(TrackingMiddleware, tracker=tracker)
    return app


@pytest.fixture
def make_client(
    make_tracker: Callable[..., Tracker],
) -> Iterator[Callable[..., tuple[Tracker, TestClient]]]:
    """``make_client(**settings)``: a tracker with the dashboard installed, and a
    TestClient of a Starlette app wrapped by it."""
    clients: list[TestClient] = []

    def make(**settings: Any) -> tuple[Tracker, TestClient]:
        tracker = make_tracker(**settings)
        install(tracker.core)
        client = TestClient(starlette_app(tracker))
        clients.append(client)
        return tracker, client

    yield make
    for client in clients:
        client.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
