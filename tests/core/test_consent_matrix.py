"""Who is tracked: every combination of mode, DNT, GPC, choice and minor, on both adapters.

The expectation is written out plainly here (``tracked``), independently of
``trackmw.consent``, so a mistake in the rules shows up as a disagreement.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer

from trackmw.consent import ConsentRecord

from ..conftest import SECRET
from .harness import Client

MODES = ("opt-out", "opt-in")
CHOICES = ("none", "accept", "reject", "stale-accept", "stale-reject")
MINORS = ("no", "yes", "guardian")
VISITOR = "matrixvisitor000000000"


def tracked(mode: str, dnt: bool, gpc: bool, choice: str, minor: str) -> bool:
    if minor == "yes":
        return False  # a minor without guardian consent: never
    if choice in ("reject", "stale-reject"):
        return False  # a rejection is always respected
    if dnt or gpc:
        return False  # these choices were made before the signal: they do not override it
    if choice == "accept":
        return True
    if choice == "stale-accept":
        return mode == "opt-out"  # opt-in needs a current acceptance
    return mode == "opt-out"


def consent_cookie(choice: str, minor: str, *, dnt: bool = False, gpc: bool = False) -> str | None:
    if choice == "none" and minor == "no":
        return None
    record = ConsentRecord(
        decided=choice != "none",
        analytics=choice in ("accept", "stale-accept"),
        preferences=choice in ("accept", "stale-accept"),
        policy_version=("0" if choice.startswith("stale") else "1") if choice != "none" else None,
        minor=minor != "no",
        guardian=minor == "guardian",
        at=1_700_000_000,
        dnt=dnt,
        gpc=gpc,
    )
    return URLSafeTimedSerializer(SECRET, salt="trackmw.consent").dumps(record.to_payload())


def id_cookie() -> str:
    return URLSafeTimedSerializer(SECRET, salt="trackmw.visitor").dumps([VISITOR])


CASES = list(itertools.product(MODES, (False, True), (False, True), CHOICES, MINORS))


def headers_for(dnt: bool, gpc: bool) -> dict[str, str]:
    headers = {}
    if dnt:
        headers["dnt"] = "1"
    if gpc:
        headers["sec-gpc"] = "1"
    return headers


@pytest.mark.parametrize(
    ("mode", "dnt", "gpc", "choice", "minor"),
    CASES,
    ids=[f"{m}-dnt{int(d)}-gpc{int(g)}-{c}-minor_{n}" for m, d, g, c, n in CASES],
)
def test_matrix(client_for: Any, mode: str, dnt: bool, gpc: bool, choice: str, minor: str) -> None:
    client: Client = client_for(consent=mode, policy_version="1")
    expect = tracked(mode, dnt, gpc, choice, minor)
    consent = consent_cookie(choice, minor)
    jar = {"trackmw_id": id_cookie()}
    if consent:
        jar["trackmw_consent"] = consent
    cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
    headers = headers_for(dnt, gpc)

    # A returning visitor with an id cookie: kept (no Set-Cookie) or deleted.
    page = client.get("/", headers=headers, cookie=cookie, use_jar=False)
    seen = page.json
    assert seen["analytics"] is expect
    if expect:
        assert "trackmw_id" not in page.cookies
        assert seen["id"] == VISITOR
    else:
        assert page.cookies["trackmw_id"]["max-age"] == "0"
        assert page.cookies["trackmw_id"]["value"] == ""
        assert seen["id"] is None
    assert "trackmw_consent" not in page.cookies  # reading consent never rewrites it

    # A first visit without an id cookie: one is issued only when tracked.
    fresh = client.get(
        "/", headers=headers, cookie=f"trackmw_consent={consent}" if consent else "", use_jar=False
    )
    assert ("trackmw_id" in fresh.cookies) is expect
    assert "trackmw_prefs" not in fresh.cookies

    # What the pixel records: the visitor, or an anonymous page view.
    pixel = client.get(
        "/_trackmw/pixel.gif", query="p=/m", headers=headers, cookie=cookie, use_jar=False
    )
    assert pixel.status == 200 and pixel.header("content-type") == "image/gif"
    client.tracker.flush()
    [pv] = client.tracker.store._pageviews  # type: ignore[attr-defined]
    if expect:
        assert pv.visitor_id == VISITOR
    else:
        assert (pv.visitor_id, pv.user_id, pv.browser, pv.os, pv.device) == (None,) * 5


@pytest.mark.parametrize("signal", ["dnt", "gpc"])
def test_an_accept_given_while_sending_the_signal_overrides_it(
    client_for: Any, signal: str
) -> None:
    client: Client = client_for()
    headers = {"dnt" if signal == "dnt" else "sec-gpc": "1"}
    _, seen = client.page("/", headers=headers)
    assert seen["analytics"] is False and seen["reason"] == signal
    _, seen = client.page("/?do=accept", headers=headers)
    assert seen["analytics"] is True and seen["id"]
    _, again = client.page("/", headers=headers)
    assert again["analytics"] is True and again["id"] == seen["id"]


def test_an_accept_given_before_the_signal_does_not_override_it(client: Client) -> None:
    _, seen = client.page("/?do=accept")
    assert seen["analytics"] is True
    result, later = client.page("/", headers={"sec-gpc": "1"})
    assert later["analytics"] is False and later["reason"] == "gpc"
    assert result.cookies["trackmw_id"]["max-age"] == "0"


def test_accepting_again_under_a_signal_keeps_the_id_the_browser_holds(client: Client) -> None:
    # A visitor who accepted, then turned GPC on, accepts again on the next request
    # (before any page deleted the id cookie): the id it holds is kept, not replaced.
    _, first = client.page("/?do=accept")
    _, seen = client.page("/?do=accept", headers={"sec-gpc": "1"})
    assert seen["analytics"] is True
    assert (seen["id"], seen["new"]) == (first["id"], False)


def test_accepting_after_a_rejection_gets_a_new_id(client: Client) -> None:
    # Only a signal's withholding keeps the id: after an explicit rejection, an id the
    # browser still sends (its deletion did not take) is not linked again.
    result, first = client.page("/?do=accept")
    old_cookie = client.jar["trackmw_id"]
    client.page("/?do=reject")
    client.jar["trackmw_id"] = old_cookie  # a browser that kept it
    _, seen = client.page("/?do=accept")
    assert seen["analytics"] is True and seen["id"] != first["id"] and seen["new"] is True


@pytest.mark.parametrize("value", ["0", "yes", "true", " 2", "", "1, 1"])
def test_only_exactly_1_is_a_signal(client: Client, value: str) -> None:
    _, seen = client.page("/", headers={"dnt": value, "sec-gpc": value})
    assert seen["analytics"] is True


def test_signals_can_be_ignored_by_settings(client_for: Any) -> None:
    client: Client = client_for(honor_dnt=False, honor_gpc=False)
    _, seen = client.page("/", headers={"dnt": "1", "sec-gpc": "1"})
    assert seen["analytics"] is True


def test_count_rejected_none_records_nothing(client_for: Any) -> None:
    client: Client = client_for(count_rejected="none")
    client.get("/_trackmw/pixel.gif", query="p=/", headers={"sec-gpc": "1"})
    client.tracker.flush()
    assert client.tracker.store._pageviews == []  # type: ignore[attr-defined]


def test_rejecting_deletes_tracking_cookies_with_the_same_domain_and_path(client_for: Any) -> None:
    client: Client = client_for(cookie_domain="example.com")
    client.page("/?do=pref", host="www.example.com")
    first = client.get("/?do=pref&arg=light", host="www.example.com")
    assert first.cookies["trackmw_prefs"]["domain"] == "example.com"
    result = client.get("/?do=reject", host="www.example.com")
    for name in ("trackmw_id", "trackmw_prefs"):
        cookie = result.cookies[name]
        assert cookie["max-age"] == "0"
        assert cookie["domain"] == "example.com" and cookie["path"] == "/"
    assert result.cookies["trackmw_consent"]["max-age"] != "0"
    assert "httponly" not in result.cookies["trackmw_consent"]  # readable by a banner script


def test_a_minor_gets_no_tracking_until_guardian_consent(client: Client) -> None:
    _, seen = client.page("/?do=minor")
    assert seen["analytics"] is False and seen["reason"] == "minor" and seen["id"] is None
    assert "trackmw_id" not in client.jar
    _, seen = client.page("/?do=minor-guardian")
    assert seen["analytics"] is True and seen["id"]


def test_stale_acceptance_in_opt_in_stops_tracking_until_renewed(client_for: Any) -> None:
    client: Client = client_for(consent="opt-in", policy_version="2")
    cookie = consent_cookie("stale-accept", "no")
    _, seen = client.page("/", cookie=f"trackmw_consent={cookie}")
    assert seen["stale"] is True and seen["analytics"] is False
    _, seen = client.page("/?do=accept", cookie=f"trackmw_consent={cookie}")
    assert seen["stale"] is False and seen["analytics"] is True


def test_preferences_are_kept_only_while_consented(client_for: Any) -> None:
    client: Client = client_for()
    result, seen = client.page("/?do=pref&arg=dark")
    assert "trackmw_prefs" in result.cookies
    _, seen = client.page("/")
    assert seen["prefs"] == {"theme": "dark"}
    result = client.get("/?do=accept-analytics")
    assert result.cookies["trackmw_prefs"]["max-age"] == "0"
    result, seen = client.page("/?do=pref&arg=light")
    assert "trackmw_prefs" not in result.cookies and seen["prefs"] == {"theme": "light"}
    assert client.page("/")[1]["prefs"] == {}
