"""The trackmw demo site on Starlette.

Run it from the repository's root (``make demo`` does this on port 8000)::

    uvicorn app:app --app-dir examples/starlette_app

Settings come from ``TRACKMW_*`` environment variables; unset ones get demo defaults
(a demo secret key, the store ``sqlite:///trackmw-demo.db`` in the working directory).
Set ``TRACKMW_DASHBOARD_TOKEN`` to open the dashboard at ``/_trackmw/dashboard``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from trackmw import get_visitor
from trackmw.asgi import TrackingMiddleware

# The pages both examples share live in examples/common (each example runs on its own,
# from its own directory, so that directory is put on the import path here).
COMMON = Path(__file__).resolve().parent.parent / "common"
sys.path.insert(0, str(COMMON))
import demo_pages as pages  # noqa: E402

MAX_FORM = 4096

tracker = pages.build_tracker()


def _html(request: Request, title: str, body: str, status: int = 200) -> HTMLResponse:
    visitor = get_visitor(request)
    path = request.url.path
    return HTMLResponse(pages.page(tracker, visitor, path, title, body), status_code=status)


async def _form(request: Request) -> dict[str, str] | None:
    """A small url-encoded form (no python-multipart needed), or ``None`` if too big."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _foreign(request: Request) -> bool:
    headers = request.headers
    return not pages.same_origin_post(
        headers.get("origin"), headers.get("referer"), headers.get("host", ""), request.url.scheme
    )


async def content(request: Request) -> Response:
    """Home, About and Blog."""
    title, body = pages.content_body(request.url.path)
    return _html(request, title, body)


async def login(request: Request) -> Response:
    """The sign-in form; a good name and password link the visitor to the user."""
    if request.method == "GET":
        return _html(request, "Sign in", pages.login_body())
    form = await _form(request)
    if form is None or _foreign(request):
        return Response("refused", status_code=403 if form is not None else 413)
    user_id = pages.check_login(form.get("username", ""), form.get("password", ""))
    if user_id is None:
        return _html(request, "Sign in", pages.login_body("Wrong name or password."), 401)
    get_visitor(request).identify(user_id)
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    """Unlink the user from the visitor cookie."""
    if _foreign(request):
        return Response("refused", status_code=403)
    get_visitor(request).forget_user()
    return RedirectResponse("/", status_code=303)


async def settings(request: Request) -> Response:
    """Privacy settings: the choice, preferences, the visitor's data and erasure."""
    visitor = get_visitor(request)
    message = None
    if request.method == "POST":
        form = await _form(request)
        if form is None or _foreign(request):
            return Response("refused", status_code=403 if form is not None else 413)
        for name, value in pages.clean_preferences(form).items():
            visitor.preferences[name] = value
        if visitor.consent.preferences:
            return RedirectResponse("/settings?saved=1", status_code=303)
        message = "Not saved: you do not allow preference cookies. Shown on this page only."
    elif request.query_params.get("saved"):
        message = "Preferences saved."
    elif request.query_params.get("erased"):
        message = "Everything this site held about you has been erased."
    return _html(request, "Privacy settings", pages.settings_body(tracker, visitor, message))


async def privacy(request: Request) -> Response:
    """The privacy statement (the ``privacy_url`` setting points here)."""
    return _html(request, "Privacy statement", pages.privacy_body(tracker))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    # Write what is still buffered and release the store before the process exits.
    await anyio.to_thread.run_sync(tracker.close)


app = Starlette(
    routes=[
        *(Route(path, content) for path in pages.CONTENT),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/settings", settings, methods=["GET", "POST"]),
        Route("/privacy", privacy),
        Mount("/static", StaticFiles(directory=COMMON / "static"), name="static"),
    ],
    lifespan=lifespan,
)
app.add_middleware(TrackingMiddleware, tracker=tracker)
