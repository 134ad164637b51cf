"""Framework integrations beyond the shared scenarios: Flask's extension, server-side counts."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from flask import Flask, render_template_string

from trackmw import Tracker
from trackmw.flask import CONFIG_KEYS, Tracking, current_visitor

from ..conftest import SECRET
from .harness import BROWSER_UA, Client


def test_flask_init_app_reads_trackmw_config_keys() -> None:
    app = Flask(__name__)
    app.config.update(
        TRACKMW_SECRET_KEYS=[SECRET], TRACKMW_STORE="memory://", TRACKMW_CONSENT="opt-in"
    )
    tracking = Tracking()
    tracker = tracking.init_app(app)
    assert app.extensions["trackmw"] is tracker
    assert tracker.settings.consent == "opt-in"
    assert "TRACKMW_COOKIE_DOMAIN" in CONFIG_KEYS
    tracker.close()


def test_flask_current_visitor_and_template_beacon() -> None:
    app = Flask(__name__)
    tracker = Tracker(secret_keys=[SECRET], store="memory://")
    Tracking(app, tracker)

    @app.route("/")
    def home() -> str:
        return render_template_string(
            "{{ visitor_id }}|{{ trackmw_beacon() }}", visitor_id=current_visitor.id
        )

    response = app.test_client().get("/", headers={"user-agent": BROWSER_UA})
    visitor_id, tag = response.get_data(as_text=True).split("|")
    assert len(visitor_id) >= 22
    assert tag.startswith('<img src="/_trackmw/pixel.gif?p=%2F')
    tracker.close()


def test_flask_templates_get_the_visitor_or_none_on_excluded_paths() -> None:
    app = Flask(__name__)
    tracker = Tracker(secret_keys=[SECRET], store="memory://", exclude_paths=["/static"])
    Tracking(app, tracker)
    template = "{{ 'none' if trackmw_visitor is none else trackmw_visitor.id }}"

    @app.route("/")
    @app.route("/static/x")
    def page() -> str:
        return render_template_string(template)

    client = app.test_client()
    first = client.get("/", headers={"user-agent": BROWSER_UA})
    visitor_id = first.get_data(as_text=True)
    assert len(visitor_id) >= 22 and "trackmw_id=" in first.headers["set-cookie"]
    again = client.get("/", headers={"user-agent": BROWSER_UA})
    assert again.get_data(as_text=True) == visitor_id  # the same visitor, from its cookie
    assert client.get("/static/x").get_data(as_text=True) == "none"
    tracker.close()


def test_count_server_side_counts_html_responses(client_for: Any) -> None:
    client: Client = client_for(count_server_side=True)
    client.get("/docs")  # text/plain here: not a page
    assert client.tracker.stats().pageviews == 0


def test_count_server_side_counts_html_pages(make_tracker: Any) -> None:
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from trackmw.asgi import TrackingMiddleware

    tracker = make_tracker(count_server_side=True)

    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse("<p>hi</p>")

    app = Starlette(routes=[Route("/a", page)])
    app.add_middleware(TrackingMiddleware, tracker=tracker)
    with TestClient(app) as c:
        c.get("/a", headers={"user-agent": BROWSER_UA})
        c.get("/a", headers={"user-agent": BROWSER_UA})
    report = tracker.stats()
    assert (report.pageviews, report.visitors) == (2, 1)


def test_a_dispatcher_inside_trackmw_does_not_change_the_page_it_records(
    make_tracker: Any,
) -> None:
    # werkzeug's DispatcherMiddleware rewrites PATH_INFO in place before the mounted
    # app asks for its visitor: the visitor still describes the request as it came.
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from trackmw import get_visitor
    from trackmw.wsgi import TrackingMiddleware

    tracker = make_tracker()

    def blog(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [get_visitor(environ).beacon_url().encode()]

    def root(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [])
        return [b""]

    app = TrackingMiddleware(DispatcherMiddleware(root, {"/blog": blog}), tracker)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/blog/post",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "site.example",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "HTTP_USER_AGENT": BROWSER_UA,
    }
    body = b"".join(app(environ, lambda status, headers, exc_info=None: None))
    assert body.decode().endswith("?p=%2Fblog%2Fpost")


def test_a_two_argument_start_response_is_called_with_two(make_tracker: Any) -> None:
    # PEP 3333 servers accept exc_info, but outer middleware and test shims often take
    # (status, headers) only: trackmw passes exc_info only when there is one.
    from trackmw.wsgi import TrackingMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    seen: list[Any] = []

    def start_response(status: str, headers: list[Any]) -> None:
        seen.append((status, headers))

    tracked = TrackingMiddleware(app, make_tracker())
    for cookie in (None, "x=1"):  # a new visitor, and one the core builds in full
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "SERVER_NAME": "s",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "HTTP_USER_AGENT": BROWSER_UA,
        }
        if cookie:
            environ["HTTP_COOKIE"] = cookie
        assert b"".join(tracked(environ, start_response)) == b"ok"
    assert [s for s, _ in seen] == ["200 OK", "200 OK"]
    assert all(any(k == "set-cookie" for k, _ in h) for _, h in seen)


def test_starlette_wrapped_from_outside_is_tracked_as_with_add_middleware(
    make_tracker: Any,
) -> None:
    """``app = TrackingMiddleware(starlette_app, tracker=...)``: the pixel is answered
    before Starlette's own layers; pages, the visitor and lifespan work as usual."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from trackmw import get_visitor
    from trackmw.asgi import TrackingMiddleware
    from trackmw.pixel import GIF

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(get_visitor(request).id or "none")

    tracker = make_tracker()
    app = TrackingMiddleware(Starlette(routes=[Route("/", home)]), tracker=tracker)
    headers = {"user-agent": BROWSER_UA}
    with TestClient(app, base_url="http://site.example") as client:
        page = client.get("/", headers=headers)
        assert page.status_code == 200 and page.text != "none"
        assert "trackmw_id" in page.cookies
        pixel = client.get("/_trackmw/pixel.gif?p=%2F", headers=headers)
        assert pixel.content == GIF and pixel.headers["content-type"] == "image/gif"
        assert len(tracker.pipeline) == 1
    # Leaving the client ran the lifespan shutdown, which flushed the buffer.
    assert len(tracker.pipeline) == 0 and tracker.stats().pageviews == 1


def test_the_python_api_takes_dates_back_to_the_year_1_and_no_further(make_tracker: Any) -> None:
    tracker = make_tracker()
    try:
        with pytest.raises(ValueError, match="before the year 1"):
            tracker.stats(until=date(1, 1, 5))  # no 30 days before it
        assert tracker.stats(until=date(1, 1, 30)).pageviews == 0
        days = tracker.today().toordinal() - 1  # back to 0001-01-01
        assert tracker.purge(days) == 0
        with pytest.raises(ValueError, match="before the year 1"):
            tracker.purge(days + 1)
    finally:
        tracker.close()
