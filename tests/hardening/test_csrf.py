"""State-changing endpoints: same origin only, never on GET, no permissive CORS."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.core.harness import Client, Result
from trackmw import Tracker

FORM = {"content-type": "application/x-www-form-urlencoded"}
FOREIGN = [
    {"origin": "http://evil.example"},
    {"origin": "null"},
    {"origin": "https://testserver"},  # another scheme is another origin
    {"origin": "http://testserver:8080"},
    {"origin": "http://testserver.evil.example"},
    {"referer": "http://evil.example/page"},
    {"referer": "http://user@evil.example/"},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
    {"origin": "http://evil.example", "referer": "http://testserver/"},
]


def no_cors(result: Result) -> None:
    names = {k.lower() for k, _ in result.headers}
    assert not {n for n in names if n.startswith("access-control-")}


def consents_recorded(tracker: Tracker) -> dict[str, int]:
    return tracker.stats().consent


@pytest.mark.parametrize("headers", FOREIGN)
def test_a_cross_site_consent_post_is_refused_and_changes_nothing(
    kind: str, make_tracker: Callable[..., Tracker], headers: dict[str, str]
) -> None:
    client = Client(kind, make_tracker())
    client.get("/")
    jar = dict(client.jar)
    result = client.request(
        "POST", "/_trackmw/consent", headers={**FORM, **headers}, body=b"choice=reject"
    )
    assert result.status == 403
    assert result.all("set-cookie") == [] and client.jar == jar
    no_cors(result)
    assert consents_recorded(client.tracker) == {"accepted": 0, "rejected": 0}


@pytest.mark.parametrize("headers", FOREIGN)
@pytest.mark.parametrize(
    "method_path", [("DELETE", "/_trackmw/me"), ("POST", "/_trackmw/me/delete")]
)
def test_a_cross_site_erasure_is_refused_and_erases_nothing(
    kind: str,
    make_tracker: Callable[..., Tracker],
    headers: dict[str, str],
    method_path: tuple[str, str],
) -> None:
    client = Client(kind, make_tracker())
    client.get("/")
    client.get("/_trackmw/pixel.gif?p=/kept")
    jar = dict(client.jar)
    result = client.request(*method_path, headers=headers)
    assert result.status == 403 and client.jar == jar
    no_cors(result)
    assert client.tracker.stats().pageviews == 1
    assert client.get("/_trackmw/me").json["pageviews"][0]["page"] == "/kept"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"origin": "http://testserver"},
        {"referer": "http://testserver/x"},
        {"sec-fetch-site": "same-origin"},
    ],
)
def test_a_same_origin_consent_post_is_accepted(
    kind: str, make_tracker: Callable[..., Tracker], headers: dict[str, str]
) -> None:
    client = Client(kind, make_tracker())
    result = client.request(
        "POST", "/_trackmw/consent", headers={**FORM, **headers}, body=b"choice=reject"
    )
    assert result.status == 204
    assert consents_recorded(client.tracker) == {"accepted": 0, "rejected": 1}


@pytest.mark.parametrize(
    "path",
    [
        "/_trackmw/consent?choice=accept",
        "/_trackmw/consent?choice=reject&next=/",
        "/_trackmw/consent?analytics=0&preferences=0",
        "/_trackmw/me/delete",
        "/_trackmw/me?delete=1",
        "/_trackmw/me/delete?next=/",
    ],
)
def test_get_never_changes_state(
    kind: str, make_tracker: Callable[..., Tracker], path: str
) -> None:
    client = Client(kind, make_tracker())
    client.get("/")
    client.get("/_trackmw/pixel.gif?p=/kept")
    jar = dict(client.jar)
    for method in ("GET", "HEAD"):
        result = client.request(method, path)
        assert result.status in (200, 405)
        assert result.all("set-cookie") == [] and client.jar == jar
        no_cors(result)
    report = client.tracker.stats()
    assert report.pageviews == 1 and report.consent == {"accepted": 0, "rejected": 0}


@pytest.mark.parametrize(
    "path", ["/_trackmw/consent", "/_trackmw/me", "/_trackmw/me/delete", "/_trackmw/pixel.gif"]
)
def test_no_endpoint_answers_a_cors_preflight_permissively(
    kind: str, make_tracker: Callable[..., Tracker], path: str
) -> None:
    client = Client(kind, make_tracker())
    result = client.request(
        "OPTIONS",
        path,
        headers={
            "origin": "http://evil.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert result.status != 500
    no_cors(result)


def test_json_consent_from_another_origin_is_refused(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    client = Client(kind, make_tracker())
    result = client.request(
        "POST",
        "/_trackmw/consent",
        headers={"content-type": "application/json", "origin": "http://evil.example"},
        body=b'{"choice": "accept"}',
    )
    assert result.status == 403
    no_cors(result)


@pytest.mark.parametrize(
    "next_value",
    [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "\\\\evil.example",
        " /x",
    ],
)
def test_consent_never_redirects_elsewhere(
    kind: str, make_tracker: Callable[..., Tracker], next_value: str
) -> None:
    from urllib.parse import urlencode

    client = Client(kind, make_tracker())
    body = urlencode({"choice": "accept", "next": next_value}).encode()
    result = client.request("POST", "/_trackmw/consent", headers=FORM, body=body)
    assert result.status == 204 and result.header("location") is None
