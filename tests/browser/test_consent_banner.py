"""In a real browser, the consent banner and the privacy settings work (issue 3).

Each example (Flask under gunicorn, Starlette under uvicorn; opt-out mode) shows the
banner on the first visit. Clicking Reject leaves no ``trackmw_id`` in the browser's
cookie jar and the following page views are counted as anonymous; clicking Accept on
the privacy settings page brings the cookie back. The counts are read from the store
after the server shuts down.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.browser.chromium import beacon_size, chromium, screenshot
from tests.conftest import SECRET
from tests.servers.running import (
    EXAMPLES,
    free_port,
    report_via_tracker,
    running,
    server_env,
    sqlite_url,
    stopped_cleanly,
)

pytestmark = [pytest.mark.browser, pytest.mark.server]


def _names(context: BrowserContext) -> set[str]:
    return {c["name"] for c in context.cookies()}


def _click_and_land(page: Page, button: str, url: str) -> None:
    """Click a form button, follow the 303 to ``url`` and wait for that page's beacon."""
    with page.expect_navigation(url=url):
        page.get_by_role("button", name=button, exact=True).click()
    assert beacon_size(page) == (1, 1)


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_reject_then_accept_in_the_browser(tmp_path: Path, example: str) -> None:
    argv_for, last_line = EXAMPLES[example]
    db = tmp_path / "store.db"
    port = free_port()
    env = server_env(SECRET_KEYS=SECRET, STORE=sqlite_url(db))
    base = f"http://127.0.0.1:{port}"
    with (
        running(
            argv_for(port), env=env, cwd=tmp_path, log_path=tmp_path / "server.log", port=port
        ) as server,
        chromium() as browser,
    ):
        context = browser.new_context()
        page = context.new_page()

        # First visit: the banner, and (opt-out mode) a visitor cookie.
        page.goto(base + "/")
        banner = page.get_by_role("region", name="Cookies")
        assert banner.is_visible()
        assert beacon_size(page) == (1, 1)
        assert "trackmw_id" in _names(context)
        screenshot(page, f"browser_consent_banner_{example}")

        # Reject: back on the same page, no tracking cookie, no banner.
        _click_and_land(page, "Reject", base + "/")
        assert "trackmw_id" not in _names(context)
        assert "trackmw_consent" in _names(context)
        assert page.get_by_role("region", name="Cookies").count() == 0

        # The next page view is anonymous, and it gets no cookie either.
        page.goto(base + "/about")
        assert beacon_size(page) == (1, 1)
        assert "trackmw_id" not in _names(context)

        # Accept on the privacy settings page: the cookie comes back.
        page.goto(base + "/settings")
        assert beacon_size(page) == (1, 1)
        assert "Visit counting: refused." in page.inner_text("main")
        _click_and_land(page, "Accept cookies", base + "/settings")
        assert "trackmw_id" in _names(context)
        assert "Visit counting: allowed." in page.inner_text("main")
        screenshot(page, f"browser_consent_settings_{example}")
        context.close()

        server.stop()
    assert stopped_cleanly(server, last_line), server.log()
    report = report_via_tracker(sqlite_url(db))
    # Tracked: "/" before the choice and "/settings" after Accept (a new id: the old one
    # was deleted with the rejection). Anonymous: "/" after Reject, "/about", "/settings".
    assert report["pageviews"] == 5
    assert report["anonymous_pageviews"] == 3
    assert report["visitors"] == 2
    assert report["consent"] == {"accepted": 1, "rejected": 1}
    assert {p["path"]: p["pageviews"] for p in report["pages"]} == {
        "/": 2,
        "/about": 1,
        "/settings": 2,
    }
