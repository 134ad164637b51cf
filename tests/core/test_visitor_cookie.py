"""The visitor cookie, parsed from real Set-Cookie headers, for both adapters."""

from __future__ import annotations

import time
from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from trackmw.settings import THIRTEEN_MONTHS

from ..conftest import OLD_SECRET, SECRET
from .harness import Client


def sign(
    payload: Any, key: str = SECRET, salt: str = "trackmw.visitor", at: float | None = None
) -> str:
    """A cookie value as trackmw would sign it, optionally dated ``at``."""

    class Dated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() if at is None else at)

    return URLSafeTimedSerializer(key, salt=salt, signer=Dated).dumps(payload)


VISITOR = "abcdefghijklmnopqrstuv"


def test_new_visitor_gets_a_signed_random_id_with_the_spec_attributes(client: Client) -> None:
    result, seen = client.page("/")
    assert result.status == 200
    cookie = result.cookies["trackmw_id"]
    assert cookie["path"] == "/"
    assert cookie["httponly"] == "true"
    assert cookie["samesite"] == "Lax"
    assert cookie["max-age"] == str(THIRTEEN_MONTHS)
    assert "domain" not in cookie and "secure" not in cookie
    assert seen["new"] is True
    assert len(seen["id"]) >= 22  # 16 random bytes, base64: 128 bits
    payload = URLSafeTimedSerializer(SECRET, salt="trackmw.visitor").loads(cookie["value"])
    assert payload == [seen["id"]]


def test_ids_are_unique(client_for: Any) -> None:
    ids = {client_for().page("/")[1]["id"] for _ in range(50)}
    assert len(ids) == 50


def test_returning_visitor_keeps_its_id_and_gets_no_new_cookie(client: Client) -> None:
    _, first = client.page("/")
    result, second = client.page("/about")
    assert second["id"] == first["id"]
    assert second["new"] is False
    assert result.all("set-cookie") == []


def test_secure_on_https(client: Client) -> None:
    result = client.get("/", scheme="https")
    assert result.cookies["trackmw_id"]["secure"] == "true"


@pytest.mark.parametrize("trusted", [True, False])
def test_secure_behind_a_proxy_only_when_trusted(client_for: Any, trusted: bool) -> None:
    client = client_for(trust_proxy=trusted)
    result = client.get("/", headers={"x-forwarded-proto": "https"})
    assert ("secure" in result.cookies["trackmw_id"]) is trusted


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("example.com", "example.com"),
        ("www.example.com", "example.com"),
        ("shop.example.com:8443", "example.com"),
        ("other.test", None),
        ("badexample.com", None),
    ],
)
def test_domain_only_when_the_host_lies_inside_cookie_domain(
    client_for: Any, host: str, domain: str | None
) -> None:
    client = client_for(cookie_domain="example.com")
    cookie = client.get("/", host=host).cookies["trackmw_id"]
    assert cookie.get("domain") == domain


def test_older_key_verifies_and_is_reissued_under_the_newest(client_for: Any) -> None:
    old_value = sign([VISITOR], key=OLD_SECRET)
    client = client_for(secret_keys=[SECRET, OLD_SECRET])
    result, seen = client.page("/", cookie=f"trackmw_id={old_value}")
    assert seen["id"] == VISITOR and seen["new"] is False
    reissued = result.cookies["trackmw_id"]["value"]
    # The new cookie verifies under the newest key alone (CVE-2025-47278's mistake).
    assert URLSafeTimedSerializer(SECRET, salt="trackmw.visitor").loads(reissued) == [VISITOR]
    result, seen = client.page("/", cookie=f"trackmw_id={reissued}")
    assert seen["id"] == VISITOR and result.all("set-cookie") == []


@pytest.mark.parametrize(
    ("key", "path", "payload"),
    [
        (OLD_SECRET, "/", [VISITOR]),  # re-issued under the newest key
        (SECRET, "/?do=login&arg=alice", [VISITOR, "alice"]),  # a user linked
        (SECRET, "/?do=login&arg=" + "a" * 60, [VISITOR, "a" * 60]),  # a payload zlib tries
        (SECRET, "/?do=logout", [VISITOR]),  # the user forgotten
    ],
)
def test_a_reissued_id_cookie_keeps_its_first_visits_date(
    client_for: Any, key: str, path: str, payload: list[str]
) -> None:
    """The 13 months run from the first visit: re-signing the cookie neither restarts
    its signature's age nor gives the browser a fresh ``Max-Age``."""
    first_visit = int(time.time()) - 365 * 86400
    sent = sign([VISITOR, "bob"] if "logout" in path else [VISITOR], key=key, at=first_visit)
    client = client_for(secret_keys=[SECRET, OLD_SECRET])
    result = client.get(path, cookie=f"trackmw_id={sent}", use_jar=False)
    cookie = result.cookies["trackmw_id"]
    got, signed_at = URLSafeTimedSerializer(SECRET, salt="trackmw.visitor").loads(
        cookie["value"], return_timestamp=True
    )
    assert got == payload and int(signed_at.timestamp()) == first_visit
    expires = first_visit + THIRTEEN_MONTHS
    assert expires - 5 <= time.time() + int(cookie["max-age"]) <= expires


def test_a_reissued_id_cookie_signed_a_little_ahead_gets_no_more_than_13_months(
    client_for: Any,
) -> None:
    """A cookie dated up to a minute ahead is fresh (another server's clock): its
    ``Max-Age`` still stops at ``cookie_max_age``."""
    client = client_for(secret_keys=[SECRET, OLD_SECRET])
    sent = sign([VISITOR], key=OLD_SECRET, at=time.time() + 45)
    cookie = client.get("/", cookie=f"trackmw_id={sent}", use_jar=False).cookies["trackmw_id"]
    assert int(cookie["max-age"]) == THIRTEEN_MONTHS


def test_a_key_no_longer_listed_is_rejected(client_for: Any) -> None:
    client = client_for(secret_keys=[SECRET])
    _, seen = client.page("/", cookie=f"trackmw_id={sign([VISITOR], key=OLD_SECRET)}")
    assert seen["id"] != VISITOR and seen["new"] is True


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "",
        sign([VISITOR])[:-2] + "xx",  # tampered signature
        sign([VISITOR]).replace("W", "X", 1),  # tampered payload
        sign([VISITOR], salt="trackmw.consent"),  # another cookie kind replayed
        sign({"id": VISITOR}),  # wrong shape
        sign(["short"]),  # not one of our ids
        sign([VISITOR], at=time.time() - THIRTEEN_MONTHS - 10),  # expired
        sign([VISITOR], at=time.time() + 3600),  # from the future
        "x" * 10_000,  # oversized
        '"\\"\\"\\"',  # quoted junk
        "é€",  # not ASCII
    ],
    ids=[
        "garbage",
        "empty",
        "tampered-sig",
        "tampered-payload",
        "other-salt",
        "wrong-shape",
        "short-id",
        "expired",
        "future",
        "oversized",
        "quoted",
        "non-ascii",
    ],
)
def test_bad_cookies_are_ignored(client: Client, value: str) -> None:
    result, seen = client.page("/", cookie=f"trackmw_id={value}".encode().decode("latin-1"))
    assert result.status == 200
    assert seen["id"] != VISITOR and seen["new"] is True
    assert "trackmw_id" in result.cookies


def test_a_planted_duplicate_cannot_shadow_the_real_cookie(client: Client) -> None:
    good = sign([VISITOR])
    header = f'=trackmw_id=bad; "trackmw_id"=bad2; trackmw_id=forged.x.y; trackmw_id={good}'
    result, seen = client.page("/", cookie=header)
    assert seen["id"] == VISITOR


def test_excluded_paths_get_no_cookie_work(client: Client) -> None:
    result = client.get("/static/app.css")
    assert result.body == b"none"
    assert result.all("set-cookie") == []
    assert result.header("vary") is None


def test_exclude_paths_match_whole_segments(client_for: Any) -> None:
    client = client_for(exclude_paths=("/static",))
    assert "trackmw_id" in client.get("/staticky").cookies


def test_identify_and_forget_user_travel_in_the_cookie(client: Client) -> None:
    _, first = client.page("/")
    result, seen = client.page("/?do=login&arg=alice")
    assert seen["user"] == "alice"
    assert "trackmw_id" in result.cookies
    _, seen = client.page("/")
    assert seen["user"] == "alice" and seen["id"] == first["id"]
    client.page("/?do=logout")
    _, seen = client.page("/")
    assert seen["user"] is None and seen["id"] == first["id"]


def test_cookie_responses_are_private_and_vary_on_cookie(client: Client) -> None:
    result = client.get("/")
    assert result.header("vary") == "Cookie"
    assert result.header("cache-control") == "private"


def test_a_public_cache_control_becomes_private(client: Client) -> None:
    result = client.get("/?cache=public, max-age=60, s-maxage=600")
    assert result.header("cache-control") == "private, max-age=60"


def test_an_app_that_forbids_storing_is_left_alone(client: Client) -> None:
    result = client.get("/?cache=no-store")
    assert result.header("cache-control") == "no-store"


def test_responses_without_cookies_are_untouched(client: Client) -> None:
    client.get("/")
    result = client.get("/?cache=public, max-age=60")
    assert result.header("cache-control") == "public, max-age=60"
    assert result.header("vary") is None


def test_several_set_cookie_headers_stay_separate(client: Client) -> None:
    result = client.get("/?do=accept")
    lines = result.all("set-cookie")
    assert len(lines) == 2
    assert {line.split("=", 1)[0] for line in lines} == {"trackmw_id", "trackmw_consent"}
    assert all(line.count("Max-Age") == 1 for line in lines)


def test_beacon_url_and_tag(client: Client) -> None:
    _, seen = client.page(
        "/docs?utm_source=x&q=1", headers={"referer": "https://news.example.org/a"}
    )
    assert seen["beacon"].startswith("/_trackmw/pixel.gif?")
    assert "p=%2Fdocs%3Futm_source%3Dx%26q%3D1" in seen["beacon"]
    assert "r=https%3A%2F%2Fnews.example.org%2Fa" in seen["beacon"]
    tag = seen["tag"]
    assert tag.startswith('<img src="/_trackmw/pixel.gif?') and 'width="1"' in tag
    assert 'height="1"' in tag and 'alt=""' in tag and "&amp;" in tag


@pytest.mark.parametrize(
    "excluded, path, expected",
    [
        (("/static",), "/static", True),
        (("/static",), "/static/app.css", True),
        (("/static/",), "/static/app.css", True),
        (("/static",), "/staticky", False),
        (("/static",), "/", False),
        (("/static", "/a/b"), "/a/b/c", True),
        (("/static", "/a/b"), "/a/bc", False),
        (("/static", "/a/b"), "/a", False),
        (("/",), "/anything/at/all", True),
        (("/",), "/", True),
    ],
)
def test_which_paths_are_excluded(
    make_tracker: Any, excluded: tuple[str, ...], path: str, expected: bool
) -> None:
    assert make_tracker(exclude_paths=excluded).core.excluded(path) is expected
