"""Both example sites do what issue 2 (item 10) and issue 3 (item 8) ask, over real HTTP.

Each site runs under its real server (``EXAMPLES``: Flask under gunicorn with one
worker, so that ``/_trackmw/me`` reads what the same process buffered; Starlette under
uvicorn) and is walked through by a small cookie-keeping client: sign in, welcome back,
preferences, sign out, see the data, erase it.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import SECRET
from tests.servers.running import (
    CHROME_UA,
    EXAMPLES,
    Server,
    free_port,
    report_via_tracker,
    request,
    running,
    server_env,
    sqlite_url,
    stopped_cleanly,
)

pytestmark = pytest.mark.server


class Browserish:
    """Keeps cookies (host-only, one site) and sends them, as a browser would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.origin = f"http://127.0.0.1:{port}"

    def send(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        origin: str | None = None,
    ) -> tuple[int, http.client.HTTPMessage, str]:
        headers = {"User-Agent": CHROME_UA}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Origin"] = origin or self.origin
        status, response_headers, raw = request(self.port, method, path, headers, body)
        for header in response_headers.get_all("set-cookie") or []:
            name, _, value = header.split(";", 1)[0].partition("=")
            if "max-age=0" in header.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return status, response_headers, raw.decode("utf-8", "replace")

    def page(self, path: str) -> str:
        status, _, html = self.send("GET", path)
        assert status == 200, (path, status)
        assert '<img src="/_trackmw/pixel.gif?' in html  # every page has the beacon
        # The browser then loads the beacon, from the page's own URL.
        pixel = self.send("GET", "/_trackmw/pixel.gif?" + urlencode({"p": path}))
        assert pixel[0] == 200
        return html

    def post(self, path: str, form: dict[str, str], origin: str | None = None) -> tuple[int, str]:
        status, headers, _ = self.send("POST", path, form, origin)
        return status, headers.get("location", "")


@pytest.fixture(params=sorted(EXAMPLES))
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    argv_for, last_line = EXAMPLES[request.param]
    db = tmp_path / "store.db"
    port = free_port()
    env = server_env(SECRET_KEYS=SECRET, STORE=sqlite_url(db))
    with running(
        argv_for(port), env=env, cwd=tmp_path, log_path=tmp_path / "server.log", port=port
    ) as server:
        yield server, db
        server.stop()
    assert stopped_cleanly(server, last_line), server.log()


def test_sign_in_preferences_sign_out_and_erasure(site: tuple[Server, Path]) -> None:
    server, db = site
    alice = Browserish(server.port)

    home = alice.page("/")
    assert "trackmw-banner" in home and '<a href="/login">Sign in</a>' in home
    assert "trackmw_id" in alice.cookies

    assert alice.post("/login", {"username": "alice", "password": "nope"})[0] == 401
    foreign = alice.post(
        "/login", {"username": "alice", "password": "wonderland"}, origin="http://evil.test"
    )
    assert foreign[0] == 403
    assert alice.post("/login", {"username": "alice", "password": "wonderland"}) == (303, "/")
    assert "Welcome back, Alice!" in alice.page("/about")
    assert "Welcome back, Alice!" in alice.page("/blog")

    # Preferences: saved in their cookie while preferences are consented (the default).
    assert alice.post("/settings", {"theme": "dark", "text_size": "large"}) == (
        303,
        "/settings?saved=1",
    )
    assert "trackmw_prefs" in alice.cookies
    settings = alice.page("/settings?saved=1")
    assert 'class="theme-dark text-large"' in settings and "Preferences saved." in settings

    me = json.loads(alice.send("GET", "/_trackmw/me")[2])
    assert me["user_id"] == "alice" and me["user_ids"] == ["alice"]
    assert me["preferences"] == {"theme": "dark", "text_size": "large"}
    assert [v["page"] for v in me["pageviews"]] == ["/", "/about", "/blog", "/settings"]

    assert alice.post("/logout", {}) == (303, "/")
    home = alice.page("/")
    assert "Welcome back" not in home and "Sign in" in home

    privacy = alice.page("/privacy")
    assert "Privacy statement" in privacy and 'href="/settings"' in privacy

    assert alice.post("/_trackmw/me/delete", {"next": "/settings?erased=1"}) == (
        303,
        "/settings?erased=1",
    )
    assert "trackmw_id" not in alice.cookies and "trackmw_prefs" not in alice.cookies
    assert "has been erased" in alice.send("GET", "/settings?erased=1")[2]

    # Bob signs in and stays: the only visitor left in the store, and a registered one.
    bob = Browserish(server.port)
    bob.page("/")
    assert bob.post("/login", {"username": "bob", "password": "builder"}) == (303, "/")
    assert "Welcome back, Bob!" in bob.page("/blog")

    server.stop()
    report = report_via_tracker(sqlite_url(db))
    assert (report["pageviews"], report["visitors"], report["registered_visitors"]) == (2, 1, 1)


def test_rejected_visitor_keeps_preferences_for_one_page_only(site: tuple[Server, Path]) -> None:
    server, _ = site
    visitor = Browserish(server.port)
    assert visitor.post("/_trackmw/consent", {"choice": "reject", "next": "/settings"}) == (
        303,
        "/settings",
    )
    assert set(visitor.cookies) == {"trackmw_consent"}
    status, _, html = visitor.send("POST", "/settings", {"theme": "dark"})
    assert status == 200
    assert "Not saved" in html and 'class="theme-dark' in html
    assert set(visitor.cookies) == {"trackmw_consent"}
    assert 'class="theme-light' in visitor.page("/settings")
