"""The variants under test, as apps: bare, with trackmw, with the peers, and the floors.

Every factory builds a fresh app. The ``*_app`` factories without arguments are also
what the servers of the ``wire`` section import (``uvicorn --factory bench.apps:…``);
they read the store URL from ``TRACKMW_BENCH_STORE`` (a SQLite file by default, as a
site would run).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from trackmw import Tracker
from trackmw.asgi import TrackingMiddleware as ASGITracking
from trackmw.flask import Tracking
from trackmw.pixel import GIF
from trackmw.signing import CookieSigner

SECRET = "bench-secret-key-0123456789abcdef"
SESSION_SECRET = "bench-session-secret-0123456789"
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
HOST = "bench.example"
#: The pixel's query as ``beacon_url`` writes it for a page with a referrer.
PIXEL_QUERY = "p=%2Farticles%2F42&r=https%3A%2F%2Fnews.example.org%2F"

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def make_tracker(store: str | None = None, **settings: Any) -> Tracker:
    """A tracker as a site would configure it, with the pixel's rate limit out of reach.

    The benchmark's single visitor sends thousands of beacons a second; with the
    default limit (120 a minute) almost none would be recorded, and the figure would
    be that of a refused hit. A huge limit keeps the limiter's work on the path and
    every hit recorded.
    """
    settings.setdefault("pixel_rate_limit", 10**9)
    return Tracker(
        secret_keys=[SECRET],
        store=store or os.environ.get("TRACKMW_BENCH_STORE", "memory://"),
        **settings,
    )


def returning_cookie() -> str:
    """A ``Cookie`` header of a returning visitor who accepted the banner."""
    import time

    from trackmw.consent import ConsentRecord

    keys = [SECRET]
    visitor = CookieSigner(keys, "trackmw.visitor", 3600).dumps(["bench-visitor-id-0123456789"])
    record = ConsentRecord(
        decided=True, analytics=True, preferences=True, policy_version="1", at=int(time.time())
    )
    consent = CookieSigner(keys, "trackmw.consent", 3600).dumps(record.to_payload())
    return f"_ga=GA1.1.123.456; trackmw_consent={consent}; trackmw_id={visitor}"


# -- Starlette ---------------------------------------------------------------------------


async def hello(request: Request) -> Response:
    return PlainTextResponse("Hello, world!")


async def gif_route(request: Request) -> Response:
    return Response(GIF, media_type="image/gif")


async def session_hello(request: Request) -> Response:
    request.session.setdefault("user", "bench")  # reads the session; unchanged: no cookie
    return PlainTextResponse("Hello, world!")


def starlette_bare(middleware: list[Middleware] | None = None) -> Starlette:
    """The bare Starlette hello (``/``), plus a GIF route (``/gif``) and ``/static/x``."""
    return Starlette(
        routes=[
            Route("/", hello),
            Route("/gif", gif_route),
            Route("/static/x", hello),
            Route("/session", session_hello),
        ],
        middleware=middleware,
    )


def starlette_tracked(tracker: Tracker) -> Starlette:
    """Starlette hello with trackmw in front (pixel under ``/_trackmw/pixel.gif``)."""
    return starlette_bare([Middleware(ASGITracking, tracker=tracker)])


def starlette_wrapped(tracker: Tracker) -> ASGITracking:
    """The same app with trackmw wrapping it (``app = TrackingMiddleware(app, ...)``)
    rather than added inside it: trackmw's paths are answered before any of
    Starlette's layers, ``Starlette.__call__`` included."""
    return ASGITracking(starlette_bare(), tracker=tracker)


def starlette_session() -> Starlette:
    """The peer: Starlette's signed-cookie ``SessionMiddleware``."""
    return starlette_bare([Middleware(SessionMiddleware, secret_key=SESSION_SECRET)])


class NoopBaseHTTP(BaseHTTPMiddleware):
    """The peer most tutorials show: a no-op ``BaseHTTPMiddleware`` (bench only)."""

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        return await call_next(request)


def starlette_basehttp() -> Starlette:
    return starlette_bare([Middleware(NoopBaseHTTP)])


class NoopASGI:
    """The floor for any middleware: a pure ASGI one that does nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def starlette_noop() -> Starlette:
    return starlette_bare([Middleware(NoopASGI)])


_GIF_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"image/gif"),
        (b"content-length", str(len(GIF)).encode()),
        (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    ],
}
_GIF_BODY = {"type": "http.response.body", "body": GIF}


async def raw_gif(scope: Scope, receive: Any, send: Any) -> None:
    """The floor for a beacon: a raw ASGI app answering the 43-byte GIF."""
    if scope["type"] != "http":  # lifespan: nothing to start or stop
        message = await receive()
        while message["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send(_GIF_START)
    await send(_GIF_BODY)


class GifMiddleware:
    """A beacon served by a middleware added with ``app.add_middleware`` that stays
    where Starlette puts it: answers every request with the GIF, as ``raw_gif`` does,
    from inside Starlette's outermost layers (``Starlette.__call__`` and its
    ``ServerErrorMiddleware``). trackmw moves ahead of the second (see
    ``trackmw.asgi.TrackingMiddleware._settle``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await raw_gif(scope, receive, send)


def starlette_gif_middleware() -> Starlette:
    return starlette_bare([Middleware(GifMiddleware)])


# -- Flask -------------------------------------------------------------------------------


def flask_bare() -> Flask:
    """The bare Flask hello (``/``)."""
    app = Flask("bench")

    @app.route("/")
    def index() -> str:
        return "Hello, world!"

    return app


def flask_tracked(tracker: Tracker) -> Flask:
    """Flask hello with the trackmw extension."""
    app = flask_bare()
    Tracking(app, tracker)
    return app


# -- factories for the servers -------------------------------------------------------------


def starlette_bare_app() -> Starlette:
    return starlette_bare()


def starlette_tracked_app() -> Starlette:
    return starlette_tracked(make_tracker())


def starlette_process_app() -> Starlette:
    """trackmw added with ``add_middleware``, its writer in a process of its own."""
    return starlette_tracked(make_tracker(writer="process"))


def starlette_wrapped_app() -> ASGITracking:
    return starlette_wrapped(make_tracker())


def starlette_session_app() -> Starlette:
    return starlette_session()


def starlette_noop_app() -> Starlette:
    return starlette_noop()


def starlette_basehttp_app() -> Starlette:
    return starlette_basehttp()


def raw_gif_app() -> ASGIApp:
    return raw_gif


def gif_middleware_app() -> Starlette:
    return starlette_gif_middleware()


def flask_bare_app() -> Flask:
    return flask_bare()


def flask_tracked_app() -> Flask:
    return flask_tracked(make_tracker())


def flask_track_usage_app() -> Flask:
    """The Flask peer for gunicorn, on a SQLite file in ``TRACKMW_BENCH_DIR``."""
    app = flask_track_usage(os.path.join(os.environ.get("TRACKMW_BENCH_DIR", "."), "wire-ftu.db"))
    if isinstance(app, str):
        raise RuntimeError(f"Flask-Track-Usage: {app}")
    return app


def session_cookie() -> str:
    """A ``Cookie`` header with a valid Starlette session (as set by ``/session``)."""
    from starlette.testclient import TestClient

    with TestClient(starlette_session(), base_url=f"http://{HOST}") as client:
        response = client.get("/session")
        value = response.cookies["session"]
    return f"_ga=GA1.1.123.456; session={value}"


def flask_track_usage(db_path: str) -> Flask | str:
    """The Flask peer, Flask-Track-Usage on a SQLite file, or why it cannot be built."""
    try:
        import flask_track_usage  # noqa: F401  (its absence is the usual reason)
    except ModuleNotFoundError as exc:
        return f"not installed ({exc}); pip install Flask-Track-Usage six sqlalchemy"
    except Exception as exc:  # installed, but not compatible with this Flask
        return f"incompatible with this Flask ({type(exc).__name__}: {exc})"
    try:
        import sqlalchemy
        from flask_track_usage import TrackUsage
        from flask_track_usage.storage.sql import SQLStorage
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        app = flask_bare()
        app.config["TRACK_USAGE_USE_FREEGEOIP"] = False
        app.config["TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS"] = "exclude"
        storage = SQLStorage(engine=sqlalchemy.create_engine(f"sqlite:///{db_path}"))
        TrackUsage(app, [storage])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return app
