"""Scopes no compliant ASGI server makes (a server's or an outer middleware's mistake:
headers or a query that are not bytes, a header that is not a pair, a key missing):
trackmw still answers. A page goes to the app, the pixel is the GIF, trackmw's other
endpoints answer 400; whatever trackmw could not read is logged, nothing escapes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from trackmw import Tracker
from trackmw.asgi import SPEEDUPS, TrackingMiddleware
from trackmw.pixel import GIF

from .harness import BROWSER_UA, PurePythonMiddleware

#: The middleware's two ways through: its C path (when built) and its Python path.
KINDS = [TrackingMiddleware, PurePythonMiddleware] if SPEEDUPS else [TrackingMiddleware]
PIXEL = "/_trackmw/pixel.gif"
HEADERS = [(b"host", b"example.org"), (b"user-agent", BROWSER_UA.encode())]

#: What is wrong with each scope, and the keys that make it so.
MALFORMED: dict[str, dict[str, Any]] = {
    "a header of three items": {"headers": [*HEADERS, (b"x-a", b"1", b"")]},
    "a header value that is text": {"headers": [*HEADERS, (b"referer", "https://a.example/")]},
    "a header name that is text": {"headers": [*HEADERS, ("cookie", b"a=1")]},
    "a query that is text": {"query_string": "p=%2Fa"},
    "no query": {"query_string": None},
    "no headers": {"headers": None},
    "a server address of one item": {"server": ("example.org",)},
}


def call(kind: type, tracker: Tracker, path: str, broken: dict[str, Any]) -> list[Any]:
    """The messages the middleware sent for a GET of ``path`` with ``broken`` in its
    scope (a key given as None is left out); the app answers 200 "page"."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"page"})

    scope = {"type": "http", "method": "GET", "path": path, "scheme": "http",
             "query_string": b"p=%2Fa", "headers": HEADERS, **broken}
    scope = {key: value for key, value in scope.items() if value is not None}
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(kind(app, tracker)(scope, receive, send))
    return sent


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("broken", MALFORMED.values(), ids=MALFORMED.keys())
def test_the_pixel_is_still_the_gif(
    kind: type, broken: dict[str, Any], make_tracker: Callable[..., Tracker],
) -> None:
    start, body = call(kind, make_tracker(), PIXEL, broken)
    assert start["status"] == 200
    assert (b"content-type", b"image/gif") in start["headers"]
    assert body["body"] == GIF


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("broken", MALFORMED.values(), ids=MALFORMED.keys())
def test_the_page_is_still_served(
    kind: type, broken: dict[str, Any], make_tracker: Callable[..., Tracker],
) -> None:
    start, body = call(kind, make_tracker(), "/", broken)
    assert (start["status"], body["body"]) == (200, b"page")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", ["/_trackmw/consent", "/_trackmw/me"])
def test_an_endpoint_answers_400_and_says_why(
    kind: type, path: str, make_tracker: Callable[..., Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR", logger="trackmw"):
        start, body = call(kind, make_tracker(), path, MALFORMED["a header name that is text"])
    assert (start["status"], body["body"]) == (400, b"bad request")
    assert f"trackmw: could not read the request to {path!r}; answering 400" in caplog.messages


@pytest.mark.parametrize("kind", KINDS)
def test_a_beacon_that_cannot_be_read_is_logged_and_not_counted(
    kind: type, make_tracker: Callable[..., Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    tracker = make_tracker()
    with caplog.at_level("ERROR", logger="trackmw"):
        call(kind, tracker, PIXEL, MALFORMED["a header value that is text"])
    assert "trackmw: could not read the beacon's request; serving the GIF" in caplog.messages
    assert len(tracker.core.pipeline) == 0
