"""A tiny Starlette site wrapped with trackmw, for the real-server hardening tests.

Settings come from ``TRACKMW_*``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from trackmw import Tracker, get_visitor
from trackmw.asgi import TrackingMiddleware

tracker = Tracker.from_env()


async def home(request: Request) -> Response:
    """A page with the beacon."""
    tag = get_visitor(request).beacon_tag()
    return HTMLResponse(f"<!doctype html><title>home</title><p>home</p>{tag}")


async def accept(request: Request) -> Response:
    """Consent and a preference: three trackmw cookies on a first visit."""
    visitor = get_visitor(request)
    visitor.accept()
    visitor.preferences["theme"] = "dark"
    return PlainTextResponse("accepted")


async def reject(request: Request) -> Response:
    """A rejection: the tracking cookies are deleted."""
    get_visitor(request).reject()
    return PlainTextResponse("rejected")


async def public(request: Request) -> Response:
    """A page the app itself marks as cacheable by shared caches."""
    return PlainTextResponse(
        "public",
        headers={"Cache-Control": "public, max-age=600, s-maxage=600", "Vary": "Accept-Encoding"},
    )


async def pid(request: Request) -> Response:
    """The worker's process id."""
    return JSONResponse({"pid": os.getpid()})


app = Starlette(
    routes=[
        Route("/", home),
        Route("/accept", accept),
        Route("/reject", reject),
        Route("/public", public),
        Route("/pid", pid),
    ]
)
app.add_middleware(TrackingMiddleware, tracker=tracker)
