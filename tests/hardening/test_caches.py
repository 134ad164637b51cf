"""A shared cache must never hand one visitor's cookie to another.

Every response on which trackmw sets or deletes a cookie carries ``Vary: Cookie`` and
``Cache-Control: private`` (unless the app already said ``no-store`` or ``private``), and
each cookie is a ``Set-Cookie`` header of its own: in-process on both adapters, and on
the wire under uvicorn and gunicorn (read from a raw socket).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.core.harness import Client, Result
from tests.hardening.servers import SERVERS, argv_for, env_for, header_lines, raw_get
from tests.servers.running import REPO, free_port, running
from trackmw import Tracker
from trackmw.messages import private_headers

TRACKMW = ("trackmw_id", "trackmw_consent", "trackmw_prefs")


def assert_private(result: Result, app_cache: str | None = None) -> None:
    cookies = result.all("set-cookie")
    assert cookies, "this response should set or delete a trackmw cookie"
    for line in cookies:  # one cookie per header, never folded
        assert sum(line.count(name + "=") for name in TRACKMW) == 1, line
    vary = [t.strip().lower() for v in result.all("vary") for t in v.split(",")]
    assert "cookie" in vary or "*" in vary
    cache = [d.strip().lower() for v in result.all("cache-control") for d in v.split(",")]
    assert "private" in cache or "no-store" in cache
    assert "public" not in cache and not any(d.startswith("s-maxage") for d in cache)
    if app_cache and "no-store" in app_cache:
        assert "no-store" in cache


@pytest.mark.parametrize(
    "app_cache",
    [None, "public, max-age=600", "s-maxage=600, public", "max-age=60", "no-store", "private"],
)
def test_a_first_visit_is_private_whatever_the_app_said(
    kind: str, make_tracker: Callable[..., Tracker], app_cache: str | None
) -> None:
    client = Client(kind, make_tracker())
    query = {"cache": app_cache} if app_cache else {}
    path = "/" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    assert_private(client.get(path.replace(" ", "%20")), app_cache)


@pytest.mark.parametrize("action", ["accept", "reject", "pref", "login", "minor"])
def test_every_cookie_change_from_app_code_is_private(
    kind: str, make_tracker: Callable[..., Tracker], action: str
) -> None:
    client = Client(kind, make_tracker())
    client.get("/?do=accept")
    assert_private(client.get(f"/?do={action}&cache=public,%20max-age=60"))


def test_a_returning_visitor_without_cookie_changes_is_left_alone(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    client = Client(kind, make_tracker())
    client.get("/")
    result = client.get("/?cache=public,%20max-age=60")
    assert result.all("set-cookie") == []
    assert result.header("cache-control") == "public, max-age=60"


@pytest.mark.parametrize(
    "request_args",
    [
        ("POST", "/_trackmw/consent", b"choice=accept"),
        ("POST", "/_trackmw/consent", b"choice=reject"),
        ("POST", "/_trackmw/me/delete", b""),
        ("DELETE", "/_trackmw/me", b""),
        ("GET", "/_trackmw/pixel.gif?p=/x", b""),
    ],
)
def test_trackmw_endpoints_that_set_cookies_are_private(
    kind: str, make_tracker: Callable[..., Tracker], request_args: tuple[str, str, bytes]
) -> None:
    method, path, body = request_args
    client = Client(kind, make_tracker())
    if method != "GET":
        client.get("/?do=pref")
    headers = {"content-type": "application/x-www-form-urlencoded"} if body else {}
    assert_private(client.request(method, path, body=body, headers=headers))


def test_vary_is_extended_not_replaced() -> None:
    merged = private_headers([("Vary", "Accept-Encoding")], ["trackmw_id=v"])
    assert ("Vary", "Accept-Encoding, Cookie") in merged
    assert ("Vary", "*") in private_headers([("Vary", "*")], ["trackmw_id=v"])
    assert ("set-cookie", "trackmw_id=v") in merged


# -- on the wire ----------------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("server", SERVERS)
def test_on_the_wire_every_cookie_is_its_own_header_and_private(
    server: str, tmp_path: Path
) -> None:
    port = free_port()
    with running(
        argv_for(server, port),
        env=env_for(tmp_path / "t.db"),
        cwd=REPO,
        log_path=tmp_path / "server.log",
        port=port,
    ):
        head = raw_get(port, "/accept")
        assert head.startswith(b"HTTP/1.1 200")
        cookies = header_lines(head, b"set-cookie")
        names = sorted(c.split(b"=", 1)[0].decode() for c in cookies)
        assert names == ["trackmw_consent", "trackmw_id", "trackmw_prefs"], head
        for line in cookies:
            assert sum(line.count(n.encode() + b"=") for n in TRACKMW) == 1, line
        assert any(b"cookie" in v.lower() for v in header_lines(head, b"vary"))
        assert b"private" in b",".join(header_lines(head, b"cache-control")).lower()

        public = raw_get(port, "/public")
        cache = b",".join(header_lines(public, b"cache-control")).lower()
        assert b"private" in cache and b"public" not in cache and b"s-maxage" not in cache
        vary = b",".join(header_lines(public, b"vary")).lower()
        assert b"accept-encoding" in vary and b"cookie" in vary

        cookie = "; ".join(c.split(b";", 1)[0].decode() for c in cookies)
        rejected = raw_get(port, "/reject", {"Cookie": cookie})
        deleted = [c for c in header_lines(rejected, b"set-cookie") if b"Max-Age=0" in c]
        assert sorted(c.split(b"=", 1)[0] for c in deleted) == [b"trackmw_id", b"trackmw_prefs"]
        assert b"private" in b",".join(header_lines(rejected, b"cache-control")).lower()

        pixel = raw_get(port, "/_trackmw/pixel.gif?p=/")
        assert pixel.startswith(b"HTTP/1.1 200")
        assert len(header_lines(pixel, b"set-cookie")) == 1
        assert b"no-store" in b",".join(header_lines(pixel, b"cache-control"))
        assert not any(
            header_lines(h, b"access-control-allow-origin") for h in (head, public, pixel)
        )
