"""The stats API and the dashboard: token checks, no-store, no CORS, same-origin login
and logout, no state change on GET, login attempts limited per client only."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from itsdangerous import URLSafeTimedSerializer

from tests.conftest import SECRET
from tests.core.harness import Client, Result
from trackmw import Tracker
from trackmw.dashboard import install
from trackmw.messages import Request

TOKEN = "dashboard-token-0123456789"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def site(kind: str, make_tracker: Callable[..., Tracker], **settings: object) -> Client:
    tracker = make_tracker(dashboard_token=TOKEN, **settings)
    install(tracker.core)
    return Client(kind, tracker)


def log_in(client: Client) -> Result:
    """Log in to the dashboard with the right token, as its form does."""
    return client.request(
        "POST", "/_trackmw/dashboard/login", headers=FORM, body=f"token={TOKEN}".encode()
    )


def no_cors(result: Result) -> None:
    assert not [k for k, _ in result.headers if k.lower().startswith("access-control-")]


def no_store(result: Result) -> None:
    assert "no-store" in (result.header("cache-control") or ""), result.headers


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN.upper()}",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Bearer x{TOKEN}",
        "Bearer \x00",
    ],
)
def test_the_stats_api_needs_the_exact_token(
    kind: str, make_tracker: Callable[..., Tracker], authorization: str | None
) -> None:
    client = site(kind, make_tracker)
    headers = {"authorization": authorization} if authorization is not None else {}
    result = client.get("/_trackmw/api/stats", headers=headers)
    assert result.status == 401
    assert b"pageviews" not in result.body
    no_store(result)
    no_cors(result)


@pytest.mark.parametrize(
    "query",
    ["", "?since=2026-01-01&until=2026-01-31", "?since=bad", "?since=2026-02-01&until=2026-01-01"],
)
def test_stats_answers_are_never_stored_or_shared(
    kind: str, make_tracker: Callable[..., Tracker], query: str
) -> None:
    client = site(kind, make_tracker)
    result = client.get(
        "/_trackmw/api/stats" + query,
        headers={"authorization": f"Bearer {TOKEN}", "origin": "http://evil.example"},
    )
    assert result.status in (200, 400)
    no_store(result)
    no_cors(result)
    if result.status == 200:
        assert "pageviews" in json.loads(result.body)


def test_the_dashboard_session_cookie_never_unlocks_the_api(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    client = site(kind, make_tracker)
    login = log_in(client)
    assert login.status == 303 and "trackmw_dash" in login.cookies
    cookie = "trackmw_dash=" + login.cookies["trackmw_dash"]["value"]
    assert client.get("/_trackmw/dashboard", cookie=cookie).status == 200
    assert client.get("/_trackmw/api/stats", cookie=cookie).status == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"referer": "http://evil.example/"},
        {"sec-fetch-site": "cross-site"},
    ],
)
@pytest.mark.parametrize("path", ["/_trackmw/dashboard/login", "/_trackmw/dashboard/logout"])
def test_dashboard_login_and_logout_refuse_cross_site_posts(
    kind: str, make_tracker: Callable[..., Tracker], headers: dict[str, str], path: str
) -> None:
    client = site(kind, make_tracker)
    result = client.request(
        "POST", path, headers={**FORM, **headers}, body=f"token={TOKEN}".encode()
    )
    assert result.status == 403
    assert result.all("set-cookie") == []
    no_cors(result)


@pytest.mark.parametrize(
    "path",
    [
        f"/_trackmw/dashboard/login?token={TOKEN}",
        "/_trackmw/dashboard/logout",
        f"/_trackmw/dashboard?token={TOKEN}",
    ],
)
def test_get_never_logs_in_or_out(
    kind: str, make_tracker: Callable[..., Tracker], path: str
) -> None:
    client = site(kind, make_tracker)
    result = client.get(path)
    assert result.status in (401, 405)
    assert not [c for c in result.all("set-cookie") if c.startswith("trackmw_dash")]


def test_the_session_cookie_is_strict_httponly_and_scoped(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    client = site(kind, make_tracker)
    login = log_in(client)
    cookie = login.cookies["trackmw_dash"]
    assert cookie["httponly"] == "true" and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/_trackmw/dashboard"
    no_store(login)


@pytest.mark.parametrize("salt", ["trackmw.visitor", "trackmw.consent", "trackmw.prefs"])
def test_a_cookie_of_another_kind_is_no_dashboard_session(
    kind: str, make_tracker: Callable[..., Tracker], salt: str
) -> None:
    client = site(kind, make_tracker)
    login = log_in(client)
    payload = URLSafeTimedSerializer(SECRET, salt="trackmw.dashboard").loads(
        login.cookies["trackmw_dash"]["value"]
    )
    forged = URLSafeTimedSerializer(SECRET, salt=salt).dumps(payload)
    result = client.get("/_trackmw/dashboard", cookie=f"trackmw_dash={forged}")
    assert result.status == 401


def login_attempt(tracker: Tracker, client: str, token: str) -> int:
    req = Request(
        method="POST",
        path="/_trackmw/dashboard/login",
        headers={"host": "testserver", "content-type": FORM["content-type"]},
        client=client,
    )
    return tracker.core.handle(req, f"token={token}".encode()).status


def test_login_attempts_are_limited_per_client_only(make_tracker: Callable[..., Tracker]) -> None:
    tracker = make_tracker(dashboard_token=TOKEN)
    install(tracker.core)
    statuses = [login_attempt(tracker, "198.51.100.7", "wrong-token-000000") for _ in range(30)]
    assert statuses[0] == 401 and statuses[-1] == 429
    limited_from = statuses.index(429)
    assert set(statuses[limited_from:]) == {429}
    # The right token from the limited client waits too (no guessing around the limit) ...
    assert login_attempt(tracker, "198.51.100.7", TOKEN) == 429
    # ... and another client is not affected.
    assert login_attempt(tracker, "198.51.100.8", TOKEN) == 303


def test_a_spoofed_forwarded_for_does_not_reset_the_limit(
    make_tracker: Callable[..., Tracker],
) -> None:
    tracker = make_tracker(dashboard_token=TOKEN)  # trust_proxy is off
    install(tracker.core)
    for n in range(30):
        req = Request(
            method="POST",
            path="/_trackmw/dashboard/login",
            headers={
                "host": "testserver",
                "content-type": FORM["content-type"],
                "x-forwarded-for": f"192.0.2.{n}",
            },
            client="198.51.100.9",
        )
        last = tracker.core.handle(req, b"token=wrong-token-000000").status
    assert last == 429


def test_without_a_token_there_is_no_dashboard(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker()
    install(tracker.core)
    client = Client(kind, tracker)
    for path in ("/_trackmw/api/stats", "/_trackmw/dashboard"):
        assert (
            client.get(path, headers={"authorization": "Bearer anything-at-all-000"}).status == 404
        )
