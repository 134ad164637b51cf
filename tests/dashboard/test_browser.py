"""The dashboard in a real Chromium, served by a real uvicorn, under a strict site CSP.

The app (written to a temporary directory) wraps a Starlette site with trackmw, installs
the dashboard, and sends ``Content-Security-Policy: default-src 'self'`` on every
response, trackmw's included. The browser logs in with the token through the form; the
dashboard must render with no console error, no CSP violation and no request to another
origin, and its chart must have one point per day of the range.
"""

from __future__ import annotations

import textwrap
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.browser.chromium import chromium, screenshot
from tests.servers.running import BIN, free_port, running, server_env, sqlite_url
from trackmw.events import PageView
from trackmw.stores.sqlite import SQLiteStore

from .conftest import TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.server]

APP = textwrap.dedent('''
    import os

    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from trackmw import Tracker
    from trackmw.asgi import TrackingMiddleware
    from trackmw.dashboard import install

    tracker = Tracker.from_env()
    install(tracker.core)


    async def home(request):
        return HTMLResponse("<!doctype html><title>site</title><p>home</p>")


    class StrictCSP:
        """The site's own policy, on every response (trackmw's endpoints too)."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def send_csp(message):
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"content-security-policy", b"default-src 'self'"),
                    ]
                await send(message)

            await self.app(scope, receive, send_csp if scope["type"] == "http" else send)


    site = Starlette(routes=[Route("/", home)])
    site.add_middleware(TrackingMiddleware, tracker=tracker)
    app = StrictCSP(site)
''')


def seed(url: str, since: date, days: int) -> None:
    """Some traffic on every other day of the range, from a few visitors."""
    store = SQLiteStore(url)
    rows = []
    for i in range(0, days, 2):
        day = (since + timedelta(days=i)).isoformat()
        for v in range(1 + i % 5):
            for page in ("/", "/pricing", "/blog/hello")[: 1 + v % 3]:
                rows.append(
                    PageView(
                        0.0,
                        day,
                        f"v{v}",
                        "u1" if v == 0 else None,
                        page,
                        "news.example.org" if v == 1 else None,
                        None,
                        "Chrome",
                        "Windows",
                        "desktop",
                        False,
                    )
                )
    store.write(rows, [])
    store.close()


def test_login_and_dashboard_in_chromium(tmp_path: Path) -> None:
    until = date.today()
    since = until - timedelta(days=20)
    store = sqlite_url(tmp_path / "site.db")
    seed(store, since, 21)
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    env = server_env(
        SECRET_KEYS="browser-test-secret-0123456789",
        STORE=store,
        DASHBOARD_TOKEN=TOKEN,
        TIMEZONE="UTC",
    )
    argv = [
        str(BIN / "uvicorn"),
        "app:app",
        "--app-dir",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    with (
        running(argv, env=env, cwd=tmp_path, log_path=tmp_path / "server.log", port=port) as server,
        chromium() as browser,
    ):
        origin = f"http://127.0.0.1:{port}"
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        console: list[str] = []
        foreign: list[str] = []
        page.on(
            "console",
            lambda m: (
                console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
            ),
        )
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.on(
            "request",
            lambda r: foreign.append(r.url) if not r.url.startswith(origin + "/") else None,
        )
        failed: list[tuple[int, str]] = []
        page.on(
            "response",
            lambda r: failed.append((r.status, r.url[len(origin) :])) if r.status >= 400 else None,
        )

        first = page.goto(server.url("/_trackmw/dashboard"))
        assert first is not None and first.status == 401
        page.fill("#token", TOKEN)
        with page.expect_navigation():
            page.click("button[type=submit]")
        assert page.url == server.url("/_trackmw/dashboard"), page.content()
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["trackmw_dash"]["httpOnly"] is True
        assert cookies["trackmw_dash"]["sameSite"] == "Strict"

        # Pick the range with the form (a GET, no JavaScript involved).
        page.fill("input[name=since]", since.isoformat())
        page.fill("input[name=until]", until.isoformat())
        with page.expect_navigation():
            page.click("form.range button[type=submit]")
        assert f"since={since.isoformat()}" in page.url
        assert page.locator("svg.chart circle.pt-visitors").count() == 21
        assert page.locator("svg.chart circle.pt-pageviews").count() == 21
        assert page.locator("svg.chart polyline").count() == 2
        # The stylesheet applied (a CSP block would leave the default black fill).
        fill = page.eval_on_selector(
            "svg.chart circle.pt-visitors", "c => getComputedStyle(c).fill"
        )
        assert fill not in ("", "rgb(0, 0, 0)")
        assert page.locator("#pages td.name").first.inner_text() == "/"
        assert page.locator("#referrers td.name").first.inner_text() == "news.example.org"
        # Readable on a phone: nothing wider than the screen.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        screenshot(page, "dashboard")

        with page.expect_navigation():
            page.click("text=Log out")
        assert page.locator("#token").count() == 1  # back to the login form
        assert "trackmw_dash" not in {c["name"] for c in page.context.cookies()}

        assert foreign == []
        # The only failed loads: the login page's own 401 (twice: before login and after
        # logout) and the browser's guess at /favicon.ico, which this site does not have.
        assert {f for f in failed if f[1] != "/favicon.ico"} == {(401, "/_trackmw/dashboard")}
        errors = [line for line in console if "Failed to load resource" not in line]
        assert errors == []  # no script errors, no CSP violation reports
