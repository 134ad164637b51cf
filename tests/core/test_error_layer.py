"""Added with ``add_middleware`` as the outermost middleware, trackmw moves ahead of
Starlette's ``ServerErrorMiddleware`` at its first call (``TrackingMiddleware._settle``):
its own answers skip that layer, and the app's pages and errors are served as before."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from trackmw import Tracker, get_visitor
from trackmw.asgi import SPEEDUPS, TrackingMiddleware
from trackmw.pixel import GIF

from .harness import BROWSER_UA, PurePythonMiddleware

#: The middleware's two ways through: its C path (when built) and its Python path.
KINDS = [TrackingMiddleware, PurePythonMiddleware] if SPEEDUPS else [TrackingMiddleware]
HEADERS = {"user-agent": BROWSER_UA}
PIXEL = "/_trackmw/pixel.gif?p=%2F"


class Failed(Exception):
    pass


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse(get_visitor(request).id or "none")


async def fail(request: Request) -> PlainTextResponse:
    raise Failed("the app failed")


class Noop:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def site(kind: type, tracker: Tracker, **kwargs: Any) -> Starlette:
    app = Starlette(routes=[Route("/", home), Route("/fail", fail)], **kwargs)
    app.add_middleware(kind, tracker=tracker)
    return app


def stack(app: Starlette) -> list[type]:
    """The classes of the app's middleware stack, outermost first."""
    layers, layer = [], app.middleware_stack
    while layer is not None and not isinstance(layer, ExceptionMiddleware):
        layers.append(type(layer))
        layer = getattr(layer, "app", None)
    return layers


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("first", ["lifespan", "page", "pixel"])
def test_added_outermost_it_moves_ahead_of_the_error_layer_at_its_first_call(
    make_tracker: Any, kind: type, first: str
) -> None:
    tracker = make_tracker()
    app = site(kind, tracker)
    client = TestClient(app, base_url="http://site.example")
    if first == "lifespan":
        with client:
            assert stack(app) == [kind, ServerErrorMiddleware]
    else:
        response = client.get("/" if first == "page" else PIXEL, headers=HEADERS)
        assert response.status_code == 200
        assert stack(app) == [kind, ServerErrorMiddleware]
    # Afterwards: pages tracked, the pixel answered and counted, as before the move.
    page = client.get("/", headers=HEADERS)
    assert page.status_code == 200 and page.text != "none" and "trackmw_id" in client.cookies
    before = len(tracker.pipeline)
    pixel = client.get(PIXEL, headers=HEADERS)
    assert pixel.content == GIF and pixel.headers["content-type"] == "image/gif"
    assert len(tracker.pipeline) == before + 1
    assert stack(app) == [kind, ServerErrorMiddleware]  # moved once


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("when", ["first-call", "new-visitor", "returning-visitor"])
def test_the_apps_errors_are_still_starlettes_500_and_reach_the_server(
    make_tracker: Any, kind: type, when: str
) -> None:
    """The error layer still answers the app's exceptions, once each, with the app's
    own 500 handler, and still raises them on to the server. The call that moves
    trackmw came through the layer already: it goes on as it came, as it would have
    without the move, so its 500 does not pass through trackmw. (A returning visitor's
    page is the C path's, when built.)"""
    handled: list[str] = []

    async def on_error(request: Request, exc: Exception) -> PlainTextResponse:
        handled.append(str(exc))
        return PlainTextResponse(f"sorry: {exc}", status_code=500)

    tracker = make_tracker()
    app = site(kind, tracker, exception_handlers={Exception: on_error})
    client = TestClient(app, base_url="http://site.example", raise_server_exceptions=False)
    if when != "first-call":
        client.get("/", headers=HEADERS)
        client.get("/", headers=HEADERS)  # the state cached
        if when == "new-visitor":
            client.cookies.clear()
    response = client.get("/fail", headers=HEADERS)
    assert response.status_code == 500 and response.text == "sorry: the app failed"
    assert handled == ["the app failed"]
    # After the move, the 500 passes through trackmw: a new visitor's id cookie is on
    # it, and it is private.
    cookie = when == "new-visitor"
    assert ("trackmw_id" in response.cookies) is cookie
    assert ("private" in response.headers.get("cache-control", "")) is cookie
    raising = TestClient(app, base_url="http://site.example", cookies=client.cookies)
    with pytest.raises(Failed):
        raising.get("/fail", headers=HEADERS)
    assert handled == ["the app failed"] * 2
    assert stack(app) == [kind, ServerErrorMiddleware]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_500_page_is_not_counted_server_side(make_tracker: Any, kind: type) -> None:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse("<p>page</p>")

    async def broken(request: Request) -> HTMLResponse:
        raise Failed("the app failed")

    async def on_error(request: Request, exc: Exception) -> HTMLResponse:
        return HTMLResponse("<p>sorry</p>", status_code=500)

    tracker = make_tracker(count_server_side=True)
    app = Starlette(
        routes=[Route("/", page), Route("/fail", broken)], exception_handlers={500: on_error}
    )
    app.add_middleware(kind, tracker=tracker)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/fail", headers=HEADERS).status_code == 500
    assert client.get("/", headers=HEADERS).status_code == 200
    assert stack(app) == [kind, ServerErrorMiddleware]
    tracker.flush()
    assert tracker.stats().pageviews == 1


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_it_stays_where_it_is_put_unless_right_inside_the_error_layer(
    make_tracker: Any, kind: type
) -> None:
    tracker = make_tracker()
    # Another middleware outside it: moving ahead would skip that one for the pixel.
    outside = site(kind, tracker)
    outside.add_middleware(Noop)
    # Asked not to.
    asked = Starlette(routes=[Route("/", home)])
    asked.add_middleware(kind, tracker=tracker, ahead_of_errors=False)
    # Another class of error layer (an error reporter's subclass, say).

    class Reporting(ServerErrorMiddleware):
        pass

    class ReportingStarlette(Starlette):
        def build_middleware_stack(self) -> Any:
            errors = super().build_middleware_stack()
            return Reporting(errors.app)

    reporting = ReportingStarlette(routes=[Route("/", home)])
    reporting.add_middleware(kind, tracker=tracker)
    expected = {
        id(outside): [ServerErrorMiddleware, Noop, kind],
        id(asked): [ServerErrorMiddleware, kind],
        id(reporting): [Reporting, kind],
    }
    for app in (outside, asked, reporting):
        client = TestClient(app, base_url="http://site.example")
        for _ in range(2):
            page = client.get("/", headers=HEADERS)
            assert page.status_code == 200 and "trackmw_id" in client.cookies
        assert client.get(PIXEL, headers=HEADERS).content == GIF
        assert stack(app) == expected[id(app)]


def test_wrapping_the_app_leaves_its_stack_alone(make_tracker: Any) -> None:
    inner = Starlette(routes=[Route("/", home)])
    app = TrackingMiddleware(inner, tracker=make_tracker())
    with TestClient(app) as client:
        assert client.get("/", headers=HEADERS).status_code == 200
    assert app.app is inner and stack(inner) == [ServerErrorMiddleware]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_failed_move_is_logged_and_changes_nothing(
    make_tracker: Any, kind: type, caplog: pytest.LogCaptureFixture
) -> None:
    """If the app refuses its new stack, trackmw stays inside the error layer, and
    the app is served and tracked as before."""

    class Refusing(Starlette):
        def __setattr__(self, name: str, value: Any) -> None:
            if name == "middleware_stack" and isinstance(value, TrackingMiddleware):
                raise AttributeError("read-only stack")
            super().__setattr__(name, value)

    tracker = make_tracker()
    app = Refusing(routes=[Route("/", home), Route("/fail", fail)])
    app.add_middleware(kind, tracker=tracker)
    client = TestClient(app, base_url="http://site.example", raise_server_exceptions=False)
    with caplog.at_level(logging.WARNING, logger="trackmw"):
        page = client.get("/", headers=HEADERS)
    assert page.status_code == 200 and "trackmw_id" in page.cookies
    assert "trackmw: could not move ahead of Starlette's error layer" in caplog.messages
    assert stack(app) == [ServerErrorMiddleware, kind]
    tracking = app.middleware_stack.app  # type: ignore[union-attr]
    assert isinstance(tracking.app, ExceptionMiddleware)
    assert tracking._plan is None or tracking._plan.app is tracking.app
    # As before any move: the error layer answers a failure without trackmw's cookies.
    client.cookies.clear()
    failed = client.get("/fail", headers=HEADERS)
    assert failed.status_code == 500 and "set-cookie" not in failed.headers
    assert client.get(PIXEL, headers=HEADERS).content == GIF


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_request_already_inside_the_old_layer_still_finds_trackmw(
    make_tracker: Any, kind: type
) -> None:
    """The move leaves the app's own layer alone (trackmw goes ahead of a copy): a
    request another thread had let into it just before still reaches trackmw."""
    import asyncio

    tracker = make_tracker()
    app = site(kind, tracker)
    client = TestClient(app, base_url="http://site.example")
    old_layer = app.middleware_stack = app.build_middleware_stack()  # as its first call does
    assert client.get("/", headers=HEADERS).status_code == 200
    assert stack(app) == [kind, ServerErrorMiddleware]
    assert type(old_layer) is ServerErrorMiddleware and isinstance(old_layer.app, kind)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"",
        "root_path": "", "scheme": "http", "http_version": "1.1", "app": app,
        "headers": [(b"host", b"site.example"), (b"user-agent", BROWSER_UA.encode())],
    }
    asyncio.run(old_layer(scope, receive, send))  # get_visitor would raise without trackmw
    assert sent[0]["status"] == 200 and sent[1]["body"] != b"none"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_listed_first_in_the_apps_middleware_it_moves_too(make_tracker: Any, kind: type) -> None:
    from starlette.middleware import Middleware

    tracker = make_tracker()
    listed = Starlette(
        routes=[Route("/", home)],
        middleware=[Middleware(kind, tracker=tracker), Middleware(Noop)],
    )
    with TestClient(listed) as client:
        assert client.get("/", headers=HEADERS).status_code == 200
    assert stack(listed) == [kind, ServerErrorMiddleware, Noop]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_with_a_body_limit_it_stays_inside_it(make_tracker: Any, kind: type) -> None:
    """``Starlette(max_body_size=...)`` puts its body limit between the error layer
    and the app's middleware: trackmw is then not right inside the error layer."""
    tracker = make_tracker()
    app = site(kind, tracker, max_body_size=1024)
    with TestClient(app) as client:
        assert client.get("/", headers=HEADERS).status_code == 200
        assert client.get(PIXEL, headers=HEADERS).content == GIF
    assert stack(app)[0] is ServerErrorMiddleware and stack(app)[-1] is kind


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_websocket_first_and_a_mounted_app(make_tracker: Any, kind: type) -> None:
    from starlette.routing import Mount, WebSocketRoute
    from starlette.websockets import WebSocket

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    tracker = make_tracker()
    inner = Starlette(routes=[Route("/", home), WebSocketRoute("/ws", echo)])
    inner.add_middleware(kind, tracker=tracker)
    outer = Starlette(routes=[Mount("/sub", inner)])
    client = TestClient(outer, base_url="http://site.example")
    with client.websocket_connect("/sub/ws") as ws:  # the mounted app's first call
        ws.send_text("hi")
        assert ws.receive_text() == "hi"
    assert stack(inner) == [kind, ServerErrorMiddleware]
    assert stack(outer) == [ServerErrorMiddleware]
    page = client.get("/sub/", headers=HEADERS)
    assert page.status_code == 200 and page.text != "none"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_500_handler_can_read_the_visitor(make_tracker: Any, kind: type) -> None:
    """Inside trackmw now, the app's 500 handler runs while the request's visitor is
    still there (before the move, the request was over for trackmw by then)."""

    async def on_error(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse(get_visitor(request).id or "none", status_code=500)

    tracker = make_tracker()
    app = site(kind, tracker, exception_handlers={Exception: on_error})
    client = TestClient(app, base_url="http://site.example", raise_server_exceptions=False)
    page = client.get("/", headers=HEADERS)  # the first call: the move
    failed = client.get("/fail", headers=HEADERS)
    assert failed.status_code == 500 and failed.text == page.text != "none"
