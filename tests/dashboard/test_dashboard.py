"""``GET /_trackmw/dashboard``: the page, the login form, the session cookie, logout."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from trackmw import Tracker
from trackmw.dashboard.auth import SESSION_SECONDS

from .conftest import TOKEN, bearer, seed_hits

DASH = "/_trackmw/dashboard"
LOGIN = DASH + "/login"
LOGOUT = DASH + "/logout"
ORIGIN = {"Origin": "http://testserver"}
MakeClient = Callable[..., tuple[Tracker, TestClient]]


def test_the_page_shows_every_total_and_breakdown(make_client: MakeClient, tmp_path: Path) -> None:
    tracker, client = make_client(dashboard_token=TOKEN, store=f"sqlite:///{tmp_path / 'd.db'}")
    seed_hits(tracker)
    response = client.get(
        DASH, params={"since": "2026-11-04", "until": "2026-11-11"}, headers=bearer()
    )
    assert response.status_code == 200
    page = response.text
    for label in (
        "Page views",
        "Visitors",
        "Registered visitors",
        "Anonymous page views",
        "Bot hits",
        "Consent accepted",
        "Consent rejected",
        "Top pages",
        "Referrers",
        "Campaigns",
        "Browsers",
        "Operating systems",
        "Devices",
    ):
        assert f">{label}<" in page, label
    totals = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", page))
    assert totals["Page views"] == "7" and totals["Visitors"] == "3"
    assert totals["Registered visitors"] == "2" and totals["Bot hits"] == "1"
    for name in (
        "news.example.org",
        "t.co",
        "mail-1",
        "fall",
        "Mobile Safari",
        "iOS",
        "mobile",
        "/about?utm_campaign=fall",
    ):
        assert f">{name}<" in page, name
    # One point per day and per series: 8 days.
    assert page.count('class="pt pt-pageviews"') == 8
    assert page.count('class="pt pt-visitors"') == 8
    assert '<meta name="viewport"' in page
    assert 'type="date" name="since" value="2026-11-04"' in page


def test_the_page_needs_no_script_and_no_inline_style(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.get(DASH, headers=bearer())
    page = response.text.lower()
    assert "<script" not in page and "<style" not in page and " style=" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "style-src 'self'" in csp
    assert "script-src" not in csp  # default-src 'none' forbids every script
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
    css = client.get("/_trackmw/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_values_are_escaped(make_client: MakeClient) -> None:
    from trackmw.events import Hit

    from .conftest import CHROME, NOON

    tracker, client = make_client(dashboard_token=TOKEN)
    tracker.core.pipeline.add(
        Hit(
            NOON,
            "v1",
            None,
            "/<script>alert(1)</script>",
            "https://x.example/",
            "<b>c</b>",
            CHROME,
            "site.example",
        )
    )
    page = client.get(
        DASH, params={"since": "2026-11-10", "until": "2026-11-10"}, headers=bearer()
    ).text
    assert "<script>" not in page and "<b>c</b>" not in page
    assert "&lt;script&gt;" in page


def test_without_credentials_the_login_form_is_shown(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.get(DASH)
    assert response.status_code == 401
    assert 'action="/_trackmw/dashboard/login"' in response.text
    assert 'type="password"' in response.text
    assert "Visitors" not in re.sub(r"<title>.*?</title>|<h1>.*?</h1>", "", response.text)


def test_login_sets_a_signed_strict_httponly_session_cookie(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.post(LOGIN, data={"token": TOKEN}, headers=ORIGIN, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == DASH
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("trackmw_dash=")
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert attrs["httponly"] and attrs["samesite"] == "SameSite=Strict"
    assert attrs["path"] == "Path=/_trackmw/dashboard"
    assert attrs["max-age"] == f"Max-Age={SESSION_SECONDS}"
    assert "secure" not in attrs  # plain http here; https gets Secure
    page = client.get(DASH)
    assert page.status_code == 200 and "Log out" in page.text


def test_login_over_https_sets_a_secure_cookie(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.post(
        "https://testserver" + LOGIN,
        data={"token": TOKEN},
        headers={"Origin": "https://testserver"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and "; Secure" in response.headers["set-cookie"]


def test_a_wrong_token_shows_the_form_again(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.post(LOGIN, data={"token": "not-the-token-000000"}, headers=ORIGIN)
    assert response.status_code == 401
    assert "not right" in response.text and "set-cookie" not in response.headers
    assert client.get(DASH).status_code == 401


def test_a_token_that_is_no_text_is_a_wrong_token(make_client: MakeClient) -> None:
    """A JSON escape can name a lone surrogate, which UTF-8 cannot encode: the login
    still answers 401, not an error."""
    _, client = make_client(dashboard_token=TOKEN)
    response = client.post(
        LOGIN,
        content=b'{"token": "\\ud800"}',
        headers={**ORIGIN, "content-type": "application/json"},
    )
    assert response.status_code == 401 and "set-cookie" not in response.headers


def test_login_from_another_origin_is_refused(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.post(LOGIN, data={"token": TOKEN}, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and "set-cookie" not in response.headers


def test_login_and_logout_change_nothing_on_get(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    for path in (LOGIN, LOGOUT):
        response = client.get(path, params={"token": TOKEN})
        assert response.status_code == 405 and "set-cookie" not in response.headers


def test_login_attempts_are_rate_limited(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    for _ in range(10):
        assert client.post(LOGIN, data={"token": "wrong-wrong-wrong-1"}).status_code == 401
    limited = client.post(LOGIN, data={"token": TOKEN})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "set-cookie" not in limited.headers


def test_logout_deletes_the_cookie(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    client.post(LOGIN, data={"token": TOKEN}, headers=ORIGIN, follow_redirects=False)
    assert client.get(DASH).status_code == 200
    response = client.post(LOGOUT, headers=ORIGIN, follow_redirects=False)
    assert response.status_code == 303
    assert "trackmw_dash=;" in response.headers["set-cookie"]
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert client.get(DASH).status_code == 401


def test_logout_from_another_origin_is_refused(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.post(LOGOUT, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403


@pytest.mark.parametrize("value", ["garbage", "a.b.c", "x" * 5000])
def test_a_forged_session_cookie_is_ignored(make_client: MakeClient, value: str) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    client.cookies.set("trackmw_dash", value, path="/_trackmw/dashboard")
    assert client.get(DASH).status_code == 401


def test_a_new_token_ends_old_sessions(make_client: MakeClient) -> None:
    from trackmw.dashboard.auth import Guard

    tracker, client = make_client(dashboard_token=TOKEN)
    old = Guard(tracker.core).session_cookie(False).split(";")[0].split("=", 1)[1]
    other, client2 = make_client(dashboard_token="a-brand-new-token-123456")
    client2.cookies.set("trackmw_dash", old, path="/_trackmw/dashboard")
    assert client2.get(DASH).status_code == 401
    client.cookies.set("trackmw_dash", old, path="/_trackmw/dashboard")
    assert client.get(DASH).status_code == 200


def test_a_visitor_cookie_cannot_be_replayed_as_a_session(make_client: MakeClient) -> None:
    tracker, client = make_client(dashboard_token=TOKEN)
    forged = tracker.core.id_signer.dumps({"t": "anything"})
    client.cookies.set("trackmw_dash", forged, path="/_trackmw/dashboard")
    assert client.get(DASH).status_code == 401


def test_authorize_only_sites_get_403_not_a_token_form(make_client: MakeClient) -> None:
    _, client = make_client(authorize=lambda r: r.headers.get("x-admin") == "yes")
    refused = client.get(DASH)
    assert refused.status_code == 403 and "password" not in refused.text
    assert client.get(DASH, headers={"X-Admin": "yes"}).status_code == 200
    assert client.post(LOGIN, data={"token": "whatever-whatever"}).status_code == 403


def test_a_bad_range_is_a_400_page(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.get(DASH, params={"since": "2026-02-30"}, headers=bearer())
    assert response.status_code == 400 and "not a valid date" in response.text


def test_the_dashboard_follows_the_timezone(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN, timezone="America/Los_Angeles")
    page = client.get(DASH, headers=bearer()).text
    assert "Days are counted in America/Los_Angeles" in page
    assert page.count('class="pt pt-visitors"') == 30
