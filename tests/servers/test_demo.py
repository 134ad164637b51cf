"""``make demo`` serves the tracked example site (issue 2, item 10).

The command line is read from the Makefile's ``demo`` recipe, so the test follows it;
only the port changes (a free one, not 8000) and the working directory is a temporary
one, where the demo's default SQLite file lands.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.servers.running import (
    BIN,
    CHROME_UA,
    FLASK_DIR,
    REPO,
    STARLETTE_DIR,
    UVICORN_DONE,
    free_port,
    request,
    running,
    server_env,
    set_cookie,
    stopped_cleanly,
)

pytestmark = pytest.mark.server


def demo_argv(port: int) -> list[str]:
    """The ``make demo`` recipe as an argv, with ``$(BIN)`` expanded and ``port``."""
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, "the Makefile has no demo target"
    recipe = [line.strip() for line in match.group(1).splitlines() if "uvicorn" in line]
    assert len(recipe) == 1, recipe
    argv = shlex.split(recipe[0].replace("$(BIN)", str(BIN)))
    assert argv[argv.index("--port") + 1] == "8000"
    argv[argv.index("--port") + 1] = str(port)
    # Relative to the repository's root, where make runs it.
    app_dir = argv.index("--app-dir") + 1
    argv[app_dir] = str(REPO / argv[app_dir])
    return argv


def test_make_demo_serves_the_tracked_home_page(tmp_path: Path) -> None:
    port = free_port()
    argv = demo_argv(port)
    assert Path(argv[argv.index("--app-dir") + 1]) == STARLETTE_DIR
    with running(
        argv, env=server_env(), cwd=tmp_path, log_path=tmp_path / "demo.log", port=port
    ) as server:
        status, headers, body = request(port, "GET", "/", {"User-Agent": CHROME_UA})
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        html = body.decode()
        assert '<img src="/_trackmw/pixel.gif?p=%2F" width="1" height="1" alt="">' in html
        assert 'action="/_trackmw/consent"' in html  # the banner, on a first visit
        assert set_cookie(headers, "trackmw_id")
        gif_status, gif_headers, gif = request(
            port, "GET", "/_trackmw/pixel.gif?p=%2F", {"User-Agent": CHROME_UA}
        )
        assert (gif_status, gif_headers["content-type"], gif[:6]) == (200, "image/gif", b"GIF89a")
        server.stop()
    assert stopped_cleanly(server, UVICORN_DONE), server.log()
    assert "using the demo secret key" in server.log()
    assert (tmp_path / "trackmw-demo.db").is_file()  # the demo's default store


def test_static_files_get_no_cookie_work(tmp_path: Path) -> None:
    port = free_port()
    with running(
        demo_argv(port),
        env=server_env(),
        cwd=tmp_path,
        log_path=tmp_path / "demo.log",
        port=port,
    ):
        status, headers, body = request(port, "GET", "/static/style.css")
    assert status == 200
    assert headers["content-type"].startswith("text/css")
    assert headers.get_all("set-cookie") is None
    assert body


def test_dashboard_link_only_with_a_dashboard_token(tmp_path: Path) -> None:
    pages: dict[bool, str] = {}
    for with_token in (False, True):
        port = free_port()
        token = {"DASHBOARD_TOKEN": "demo-dashboard-token-0123"} if with_token else {}
        env = server_env(**token)
        with running(
            demo_argv(port), env=env, cwd=tmp_path, log_path=tmp_path / "demo.log", port=port
        ):
            pages[with_token] = request(port, "GET", "/about")[2].decode()
    link = '<a href="/_trackmw/dashboard">'
    assert link in pages[True] and link not in pages[False]


def test_both_examples_share_one_page_module() -> None:
    # One copy of the pages and the stylesheet, in examples/common, for both sites.
    examples = FLASK_DIR.parent
    assert [p.relative_to(examples).as_posix() for p in examples.rglob("demo_pages.py")] == [
        "common/demo_pages.py"
    ]
    assert [p.relative_to(examples).as_posix() for p in examples.rglob("style.css")] == [
        "common/static/style.css"
    ]
    for app in (FLASK_DIR / "app.py", STARLETTE_DIR / "app.py"):
        assert '"common"' in app.read_text()
