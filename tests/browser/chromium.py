"""Headless Debian Chromium driven by Playwright's sync API, for the browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import need_service
from tests.servers.running import ARTIFACTS

CHROMIUM = Path("/usr/bin/chromium")
ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: The selector of a page's beacon image.
BEACON = 'img[src^="/_trackmw/pixel.gif"]'


@contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """A headless Chromium from ``/usr/bin/chromium``, closed when the block ends."""
    need_service(CHROMIUM.is_file(), f"Chromium is not installed at {CHROMIUM}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*ARGS, *extra_args]
        )
        try:
            yield browser
        finally:
            browser.close()


def beacon_size(page: Page) -> tuple[int, int]:
    """Wait for the page's beacon image to load; its natural (width, height)."""
    page.wait_for_function(
        f"() => {{ const i = document.querySelector('{BEACON}');"
        " return i !== null && i.complete && i.naturalWidth > 0; }"
    )
    size = page.eval_on_selector(BEACON, "i => [i.naturalWidth, i.naturalHeight]")
    return int(size[0]), int(size[1])


def screenshot(page: Page, name: str) -> None:
    """Save the whole page as ``tests/artifacts/<name>.png`` (a test artefact)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
