"""The consent and visitor-data endpoints, on both adapters."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from .harness import Client

CONSENT = "/_trackmw/consent"
ME = "/_trackmw/me"
FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}


def post(
    client: Client, path: str, body: bytes | str, headers: dict[str, str] | None = None, **kw: Any
) -> Any:
    data = body.encode() if isinstance(body, str) else body
    return client.request("POST", path, body=data, headers={**FORM, **(headers or {})}, **kw)


def test_get_consent_is_json(client: Client) -> None:
    result = client.get(CONSENT)
    assert result.status == 200
    assert result.json["analytics"] is True and result.json["reason"] == "default"
    assert result.all("set-cookie") == []  # GET changes nothing


def test_form_accept_redirects_to_next(client: Client) -> None:
    result = post(client, CONSENT, "choice=accept&next=/thanks%3Fa%3D1")
    assert result.status == 303
    assert result.header("location") == "/thanks?a=1"
    assert {"trackmw_id", "trackmw_consent"} <= set(result.cookies)
    assert result.header("cache-control") == "no-store" and result.header("vary") == "Cookie"


def test_form_reject_without_next_is_204_and_deletes(client: Client) -> None:
    client.page("/")
    result = post(client, CONSENT, "choice=reject")
    assert result.status == 204
    assert result.cookies["trackmw_id"]["max-age"] == "0"
    assert "trackmw_id" not in client.jar


def test_json_choice_answers_json(client: Client) -> None:
    result = post(client, CONSENT, json.dumps({"analytics": 1, "preferences": 0}), JSON)
    assert result.status == 200
    assert result.json["analytics"] is True and result.json["preferences"] is False
    assert result.json["decided"] is True


def test_choices_are_recorded_as_proof(client: Client) -> None:
    _, seen = client.page("/")
    post(client, CONSENT, "choice=accept")
    post(client, CONSENT, "analytics=0&preferences=1")
    client.tracker.flush()
    choices = client.tracker.store._consents  # type: ignore[attr-defined]
    assert [(c.visitor_id, c.analytics, c.preferences, c.policy_version) for c in choices] == [
        (seen["id"], True, True, "1"),
        (seen["id"], False, True, "1"),
    ]
    assert client.tracker.stats().to_dict()["consent"] == {"accepted": 1, "rejected": 1}


@pytest.mark.parametrize(
    ("target", "location"),
    [("/€", "/%E2%82%AC"), ("/日本?q=café#top", "/%E6%97%A5%E6%9C%AC?q=caf%C3%A9#top")],
)
@pytest.mark.parametrize("path", [CONSENT, ME + "/delete"])
def test_a_next_beyond_ascii_is_percent_encoded(
    client: Client, path: str, target: str, location: str
) -> None:
    """A page whose path is not ASCII puts it in the banner's ``next``: a ``Location``
    header carries ASCII only (a server refuses the rest, answering 500)."""
    client.page("/")
    body = ("choice=reject&" if path == CONSENT else "") + "next=" + quote(target, safe="")
    result = post(client, path, body)
    assert result.status == 303
    assert result.header("location") == location
    assert result.cookies["trackmw_id"]["max-age"] == "0"  # the choice's cookies go too


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "/\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "/\t/evil.example",
        "evil",
        "\\\\evil",
        " /x",
        "/\n/evil.example",
        "/" + "日" * 700,  # 6,301 characters percent-encoded: past the 2,048 cap
    ],
)
def test_open_redirects_are_refused(client: Client, target: str) -> None:
    result = post(client, CONSENT, "choice=accept&next=" + quote(target, safe=""))
    assert result.status == 204
    assert result.header("location") is None


@pytest.mark.parametrize("path", [CONSENT, ME + "/delete"])
def test_json_nested_too_deep_is_a_400(client: Client, path: str) -> None:
    result = post(client, path, "[" * 5_000, JSON)  # past the recursion limit, under MAX_BODY
    assert result.status == 400 and result.body == b"malformed JSON"


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"referer": "https://evil.example/page"},
        {"sec-fetch-site": "cross-site"},
        {"origin": "https://testserver"},
    ],  # scheme mismatch: the site is http here
)
def test_cross_origin_posts_are_refused(client: Client, headers: dict[str, str]) -> None:
    client.page("/")
    result = post(client, CONSENT, "choice=reject", headers)
    assert result.status == 403
    assert result.all("set-cookie") == []


def test_same_origin_post_is_allowed(client: Client) -> None:
    result = post(
        client,
        CONSENT,
        "choice=accept",
        {"origin": "http://testserver", "referer": "http://testserver/x"},
    )
    assert result.status == 204


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ("choice=maybe", FORM),
        ("nothing=1", FORM),
        ("analytics=2", FORM),
        ("%zz=&&==", FORM),
        (b"\xff\xfe", FORM),
        ("{not json", JSON),
        ("[1, 2]", JSON),
        ("choice=accept", {"content-type": "text/xml"}),
    ],
)
def test_malformed_bodies_get_4xx_with_a_reason(
    client: Client, body: Any, headers: dict[str, str]
) -> None:
    result = post(client, CONSENT, body, headers)
    assert 400 <= result.status < 500
    assert result.body


def test_oversized_body_is_refused(client: Client) -> None:
    result = post(client, CONSENT, "choice=accept&x=" + "a" * 70_000)
    assert result.status == 413


def test_wrong_method_is_405(client: Client) -> None:
    assert client.request("PUT", CONSENT).status == 405


def test_me_shows_everything_held(client: Client) -> None:
    _, seen = client.page("/?do=login&arg=alice")
    client.page("/?do=pref&arg=dark")
    client.get("/_trackmw/pixel.gif", query="p=/one")
    result = client.get(ME)
    assert result.status == 200 and result.header("cache-control") == "no-store"
    data = result.json
    assert data["id"] == seen["id"] and data["user_id"] == "alice"
    assert data["preferences"] == {"theme": "dark"}
    assert [pv["page"] for pv in data["pageviews"]] == ["/one"]
    assert data["pageviews"][0]["time"].endswith("+00:00")
    assert data["consent"]["analytics"] is True


@pytest.mark.parametrize("how", ["delete", "post"])
def test_erase_removes_everything_and_the_cookies(client: Client, how: str) -> None:
    _, seen = client.page("/?do=login&arg=bob")
    client.page("/?do=pref")
    client.get("/_trackmw/pixel.gif", query="p=/one")
    client.tracker.flush()
    client.get("/_trackmw/pixel.gif", query="p=/two")  # still buffered
    post(client, CONSENT, "choice=accept")
    if how == "delete":
        result = client.request("DELETE", ME)
        assert result.status == 200 and result.json["erased"] >= 3
    else:
        result = post(client, ME + "/delete", "next=/bye")
        assert result.status == 303 and result.header("location") == "/bye"
    assert result.cookies["trackmw_id"]["max-age"] == "0"
    assert result.cookies["trackmw_prefs"]["max-age"] == "0"
    client.tracker.flush()
    store = client.tracker.store
    assert store.visitor_data(seen["id"]) == {"pageviews": [], "consents": [], "user_ids": []}
    assert all(pv.user_id != "bob" for pv in store._pageviews)  # type: ignore[attr-defined]


@pytest.mark.parametrize("signal", [{"dnt": "1"}, {"sec-gpc": "1"}])
def test_a_signal_on_the_erasing_request_still_erases_the_linked_user(
    client: Client, signal: dict[str, str]
) -> None:
    """The user the id cookie names is everything held about this visitor too: a
    request sending DNT or GPC (analytics off for it) shows it and erases it."""
    other = Client(client.kind, client.tracker)  # bob's other browser
    other.page("/?do=login&arg=bob")
    other.get("/_trackmw/pixel.gif", query="p=/elsewhere")
    _, seen = client.page("/?do=login&arg=bob")
    client.get("/_trackmw/pixel.gif", query="p=/here")
    # Read without keeping its answer's cookies: with a signal, it deletes the id cookie.
    cookie = "; ".join(f"{k}={v}" for k, v in client.jar.items())
    me = client.request("GET", ME, headers=signal, cookie=cookie, use_jar=False)
    assert me.json["id"] == seen["id"] and me.json["user_id"] == "bob"
    result = client.request("DELETE", ME, headers=signal)
    assert result.status == 200 and result.json["erased"] == 2
    client.tracker.flush()
    assert client.tracker.store._pageviews == []  # type: ignore[attr-defined]


def test_erase_refuses_cross_origin(client: Client) -> None:
    client.page("/")
    result = client.request("DELETE", ME, headers={"origin": "https://evil.example"})
    assert result.status == 403
    assert post(client, ME + "/delete", "", {"origin": "https://evil.example"}).status == 403


def test_get_on_erase_changes_nothing(client: Client) -> None:
    client.page("/")
    assert client.get(ME + "/delete").status == 405
