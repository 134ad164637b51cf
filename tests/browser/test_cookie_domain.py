"""In a real browser, the visitor cookie follows ``cookie_domain`` (issue 2).

The Starlette example runs with ``TRACKMW_COOKIE_DOMAIN=example.test``; Chromium maps
``*.example.test`` and ``other.test`` to 127.0.0.1. A page on ``www.example.test`` sets
``trackmw_id`` for ``.example.test``; ``shop.example.test`` receives the same visitor;
``other.test`` does not. Each page's beacon loads as a 1x1 image, and after the server
shuts down the store holds those page views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.browser.chromium import beacon_size, chromium, screenshot
from tests.conftest import SECRET
from tests.servers.running import (
    UVICORN_DONE,
    free_port,
    report_via_tracker,
    running,
    server_env,
    sqlite_url,
    stopped_cleanly,
    uvicorn_argv,
)

pytestmark = [pytest.mark.browser, pytest.mark.server]

HOST_RULES = "--host-resolver-rules=MAP *.example.test 127.0.0.1, MAP other.test 127.0.0.1"


def _me(page: Page) -> dict[str, Any]:
    """What ``/_trackmw/me`` says about the browser, fetched by the page itself."""
    me: dict[str, Any] = page.evaluate(
        "async () => (await fetch('/_trackmw/me', {credentials: 'same-origin'})).json()"
    )
    return me


def _sent_cookie(page: Page, url: str) -> str:
    """Navigate to ``url``; the ``Cookie`` header the browser sent with it."""
    response = page.goto(url)
    assert response is not None and response.status == 200
    return response.request.all_headers().get("cookie", "")


def test_cookie_domain_spans_subdomains_only(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    port = free_port()
    env = server_env(SECRET_KEYS=SECRET, STORE=sqlite_url(db), COOKIE_DOMAIN="example.test")
    with (
        running(
            uvicorn_argv(port), env=env, cwd=tmp_path, log_path=tmp_path / "server.log", port=port
        ) as server,
        chromium(HOST_RULES) as browser,
    ):
        context = browser.new_context()
        page = context.new_page()

        www = f"http://www.example.test:{port}/"
        assert "trackmw_id" not in _sent_cookie(page, www)
        assert beacon_size(page) == (1, 1)
        jar = {c["name"]: c for c in context.cookies()}
        cookie = jar["trackmw_id"]
        assert cookie["domain"] == ".example.test"
        assert (cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == ("/", True, "Lax")
        visitor = _me(page)["id"]
        assert visitor

        shop = f"http://shop.example.test:{port}/"
        assert f"trackmw_id={cookie['value']}" in _sent_cookie(page, shop)
        assert beacon_size(page) == (1, 1)
        assert _me(page)["id"] == visitor
        screenshot(page, "browser_cookie_domain_shop")

        other = f"http://other.test:{port}/"
        assert not [c for c in context.cookies(other) if c["name"] == "trackmw_id"]
        assert "trackmw_id" not in _sent_cookie(page, other)
        assert beacon_size(page) == (1, 1)
        own = [c for c in context.cookies(other) if c["name"] == "trackmw_id"]
        assert [c["domain"] for c in own] == ["other.test"]  # a host-only cookie of its own
        assert _me(page)["id"] not in (None, visitor)
        screenshot(page, "browser_cookie_domain_other")
        context.close()

        server.stop()
    assert stopped_cleanly(server, UVICORN_DONE), server.log()
    report = report_via_tracker(sqlite_url(db))
    # www and shop: one visitor; other.test: another. Each page's beacon counted once.
    assert (report["pageviews"], report["visitors"], report["anonymous_pageviews"]) == (3, 2, 0)
    assert report["pages"] == [{"path": "/", "pageviews": 3, "visitors": 2}]
    assert [b["visitors"] for b in report["browsers"]] == [2]  # (Headless)Chrome
    assert report["devices"] == [{"name": "desktop", "visitors": 2}]


def test_reject_on_a_subdomain_deletes_the_domain_cookie(tmp_path: Path) -> None:
    port = free_port()
    env = server_env(
        SECRET_KEYS=SECRET, STORE=sqlite_url(tmp_path / "store.db"), COOKIE_DOMAIN="example.test"
    )
    with (
        running(
            uvicorn_argv(port), env=env, cwd=tmp_path, log_path=tmp_path / "server.log", port=port
        ),
        chromium(HOST_RULES) as browser,
    ):
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://www.example.test:{port}/")
        assert [c["domain"] for c in context.cookies() if c["name"] == "trackmw_id"] == [
            ".example.test"
        ]
        # Reject on another subdomain: the deletion must carry the same Domain to work.
        page.goto(f"http://shop.example.test:{port}/")
        with page.expect_navigation(url=f"http://shop.example.test:{port}/"):
            page.get_by_role("button", name="Reject", exact=True).click()
        names = {(c["name"], c["domain"]) for c in context.cookies()}
        assert ("trackmw_consent", ".example.test") in names
        assert not [name for name, _ in names if name == "trackmw_id"]
        page.goto(f"http://www.example.test:{port}/")
        assert page.get_by_role("region", name="Cookies").count() == 0  # the choice is shared
        screenshot(page, "browser_cookie_domain_reject")
        context.close()
