"""``GET /_trackmw/api/stats``: the auth matrix, date validation, the document."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from starlette.testclient import TestClient

from trackmw import Tracker
from trackmw.events import Hit

from .conftest import CHROME, EXPECTED, NOON, TOKEN, bearer, seed_hits

API = "/_trackmw/api/stats"
RANGE = {"since": "2026-11-10", "until": "2026-11-11"}
MakeClient = Callable[..., tuple[Tracker, TestClient]]

# -- the feature switch and authentication ------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        API,
        "/_trackmw/dashboard",
        "/_trackmw/dashboard.css",
    ],
)
def test_everything_is_404_without_a_token_or_authorize(make_client: MakeClient, path: str) -> None:
    _, client = make_client()
    assert client.get(path, headers=bearer()).status_code == 404


@pytest.mark.parametrize("path", ["/_trackmw/dashboard/login", "/_trackmw/dashboard/logout"])
def test_login_and_logout_are_404_when_off(make_client: MakeClient, path: str) -> None:
    _, client = make_client()
    assert client.post(path, data={"token": TOKEN}).status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
        ({"Authorization": f"Bearer {TOKEN}x"}, 401),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": TOKEN}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 200),
        ({"Authorization": f"bearer {TOKEN}"}, 200),
        ({"Authorization": f"Bearer   {TOKEN}  "}, 200),
    ],
)
def test_token_matrix(make_client: MakeClient, headers: dict[str, str], status: int) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.get(API, headers=headers)
    assert response.status_code == status
    assert response.headers["cache-control"] == "no-store"
    assert not any(h.startswith("access-control-") for h in response.headers)
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "Bearer" in response.text


def test_the_token_is_compared_in_constant_time(make_client: MakeClient, monkeypatch: Any) -> None:
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    _, client = make_client(dashboard_token=TOKEN)
    assert client.get(API, headers=bearer("nope-nope-nope-nope")).status_code == 401
    assert (b"nope-nope-nope-nope", TOKEN.encode()) in compared


def test_the_session_cookie_does_not_open_the_api(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    login = client.post("/_trackmw/dashboard/login", data={"token": TOKEN}, follow_redirects=False)
    assert login.status_code == 303
    assert client.get("/_trackmw/dashboard").status_code == 200  # the cookie works there
    assert client.get(API).status_code == 401  # but never for the API


@pytest.mark.parametrize(("allow", "status"), [(True, 200), (False, 401)])
def test_authorize_receives_the_starlette_request(
    make_client: MakeClient, allow: bool, status: int
) -> None:
    seen: list[Any] = []

    def authorize(request: Any) -> bool:
        seen.append(request)
        return allow and request.headers.get("x-admin") == "yes"

    _, client = make_client(authorize=authorize)
    assert client.get(API, headers={"X-Admin": "yes"}).status_code == status
    from starlette.requests import Request

    assert isinstance(seen[0], Request)


def test_authorize_and_token_both_work(make_client: MakeClient) -> None:
    _, client = make_client(
        dashboard_token=TOKEN, authorize=lambda r: r.cookies.get("admin") == "1"
    )
    assert client.get(API, headers=bearer()).status_code == 200
    client.cookies.set("admin", "1")
    assert client.get(API).status_code == 200


def test_an_authorize_that_raises_refuses(make_client: MakeClient, caplog: Any) -> None:
    def authorize(request: Any) -> bool:
        raise RuntimeError("boom")

    _, client = make_client(authorize=authorize)
    assert client.get(API).status_code == 401
    assert "authorize setting raised" in caplog.text


def test_authorize_receives_the_werkzeug_request(make_tracker: Callable[..., Tracker]) -> None:
    from flask import Flask
    from werkzeug.wrappers import Request as WerkzeugRequest

    from trackmw.dashboard import install
    from trackmw.wsgi import TrackingMiddleware

    seen: list[Any] = []

    def authorize(request: Any) -> bool:
        seen.append(request)
        return bool(request.headers.get("X-Admin") == "yes")

    tracker = make_tracker(authorize=authorize)
    install(tracker.core)
    app = Flask(__name__)
    app.wsgi_app = TrackingMiddleware(app.wsgi_app, tracker)  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get(API, headers={"X-Admin": "yes"}).status_code == 200
    assert client.get(API).status_code == 401
    assert isinstance(seen[0], WerkzeugRequest)


def test_only_get_reads(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    assert client.post(API, headers=bearer()).status_code == 405
    assert client.delete(API, headers=bearer()).status_code == 405


# -- dates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"since": "2026-13-01"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-11-31"}, "until"),
        ({"until": "20261101"}, "until"),
        ({"since": "2026-11-01T00:00"}, "since"),
        ({"since": "2026-11-20", "until": "2026-11-10"}, "after"),
        ({"since": "2020-01-01", "until": "2026-11-10"}, "at most 366"),
        ({"since": "٢٠٢٦-١١-٠١"}, "since"),
        ({"until": "0001-01-05"}, "no 30 days before it"),  # the calendar's first month
    ],
)
def test_bad_dates_get_400_with_a_reason(
    make_client: MakeClient, query: dict[str, str], reason: str
) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    response = client.get(API, params=query, headers=bearer())
    assert response.status_code == 400
    assert reason in response.text


def test_the_longest_range_allowed_is_max_report_days(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN, max_report_days=7)
    ok = client.get(API, params={"since": "2026-11-01", "until": "2026-11-07"}, headers=bearer())
    assert ok.status_code == 200 and len(ok.json()["days"]) == 7
    too_long = client.get(
        API, params={"since": "2026-11-01", "until": "2026-11-08"}, headers=bearer()
    )
    assert too_long.status_code == 400


def test_malformed_query_strings_are_never_a_500(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    for raw in (
        "since=%zz",
        "since=%ff%fe",
        "&&&",
        "since",
        "x=" + "a" * 10_000,
        "&".join(f"k{i}=1" for i in range(100)),
    ):
        response = client.get(f"{API}?{raw}", headers=bearer())
        assert response.status_code in (200, 400), raw


def test_the_default_range_is_the_last_30_days_in_the_timezone(make_client: MakeClient) -> None:
    zone = "Pacific/Kiritimati"  # UTC+14: usually not UTC's day
    _, client = make_client(dashboard_token=TOKEN, timezone=zone)
    before = datetime.now(ZoneInfo(zone)).date()
    doc = client.get(API, headers=bearer()).json()
    after = datetime.now(ZoneInfo(zone)).date()
    until = date.fromisoformat(doc["until"])
    assert until in (before, after)
    assert date.fromisoformat(doc["since"]) == until - timedelta(days=29)
    assert len(doc["days"]) == 30


# -- the document --------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
def test_the_document_equals_the_hand_computed_report(
    make_client: MakeClient, tmp_path: Path, store: str
) -> None:
    url = store if store != "sqlite" else f"sqlite:///{tmp_path / 'api.db'}"
    tracker, client = make_client(dashboard_token=TOKEN, store=url)
    seed_hits(tracker)  # still buffered: the API flushes first
    response = client.get(API, params=RANGE, headers=bearer())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == EXPECTED


def test_the_document_has_the_specs_shape(make_client: MakeClient) -> None:
    _, client = make_client(dashboard_token=TOKEN)
    doc = client.get(
        API, params={"since": "2026-11-01", "until": "2026-11-25"}, headers=bearer()
    ).json()
    spec = {
        "since": "2026-11-01",
        "until": "2026-11-25",
        "pageviews": 0,
        "visitors": 0,
        "registered_visitors": 0,
        "anonymous_pageviews": 0,
        "bot_hits": 0,
        "days": [],
        "pages": [],
        "browsers": [],
        "os": [],
        "devices": [],
        "referrers": [],
        "campaigns": [],
        "consent": {"accepted": 0, "rejected": 0},
    }
    assert list(doc) == list(spec)
    assert [d["day"] for d in doc["days"]] == [f"2026-11-{i:02d}" for i in range(1, 26)]
    assert all(set(d) == {"day", "pageviews", "visitors"} for d in doc["days"])


def test_days_follow_the_timezone_near_midnight(make_client: MakeClient, tmp_path: Path) -> None:
    # 2026-11-10 14:30 UTC is 23:30 in Tokyo; 15:30 UTC is 00:30 on the 11th there.
    tracker, client = make_client(
        dashboard_token=TOKEN, timezone="Asia/Tokyo", store=f"sqlite:///{tmp_path / 'tz.db'}"
    )
    add = tracker.core.pipeline.add
    add(Hit(NOON + 9_000, "late", None, "/night", None, None, CHROME, "site.example"))
    add(Hit(NOON + 12_600, "early", None, "/morning", None, None, CHROME, "site.example"))
    doc = client.get(API, params=RANGE, headers=bearer()).json()
    assert doc["days"] == [
        {"day": "2026-11-10", "pageviews": 1, "visitors": 1},
        {"day": "2026-11-11", "pageviews": 1, "visitors": 1},
    ]
    only_11th = client.get(
        API, params={"since": "2026-11-11", "until": "2026-11-11"}, headers=bearer()
    ).json()
    assert [p["path"] for p in only_11th["pages"]] == ["/morning"]


def test_a_store_that_is_down_gets_503(make_client: MakeClient, tmp_path: Path) -> None:
    tracker, client = make_client(
        dashboard_token=TOKEN, store=f"sqlite:///{tmp_path}/no/such/dir.db"
    )
    response = client.get(API, headers=bearer())
    assert response.status_code == 503
