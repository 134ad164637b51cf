"""Regression tests for the known CVEs of cookie-handling code, and their cousins.

- CVE-2023-23934 (werkzeug): a nameless cookie ``=__Host-x=bad`` was read as ``__Host-x``.
- CVE-2024-7592 (CPython ``http.cookies``): quadratic unquoting of ``"\\"\\"…`` values.
- CVE-2025-47278 (Flask 3.1.0): with key fallbacks, new sessions were signed with the
  wrong (oldest) key.
- Plus: expiry and future dates enforced, one salt per cookie kind, oversize ignored.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from tests.conftest import OLD_SECRET, SECRET
from tests.core.harness import BROWSER_UA, Client
from trackmw import Tracker
from trackmw.cookies import MAX_COOKIE_HEADER
from trackmw.messages import Request
from trackmw.signing import MAX_COOKIE_VALUE, CookieSigner

SRC = Path(__file__).resolve().parents[2] / "src" / "trackmw"


def first_visit(client: Client) -> str:
    """The signed ``trackmw_id`` value a first visit is given."""
    result = client.get("/", use_jar=False)
    value = result.cookies["trackmw_id"]["value"]
    assert value
    return value


def visitor_id_for(client: Client, cookie: str) -> tuple[str | None, bool]:
    _, seen = client.page("/", cookie=cookie, use_jar=False)
    return seen["id"], seen["new"]


def describe_request(cookie: str, now: float = 0.0) -> Request:
    return Request(
        method="GET",
        path="/",
        headers={"host": "testserver", "user-agent": BROWSER_UA, "cookie": cookie},
        now=now,
    )


# -- CVE-2023-23934: only the exact name counts -------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "={v}",
        "=trackmw_id={v}",
        '"trackmw_id"={v}',
        "xtrackmw_id={v}",
        "trackmw_id_={v}",
        "trackmw_id={v}x",
        'trackmw_id="{v}"',
        "TRACKMW_ID={v}",
    ],
)
def test_a_valid_value_under_a_lookalike_name_is_not_read(
    kind: str, make_tracker: Callable[..., Tracker], template: str
) -> None:
    client = Client(kind, make_tracker())
    real = first_visit(client)
    real_id = client.tracker.core.id_signer.loads(real).payload[0]  # type: ignore[union-attr]
    seen_id, new = visitor_id_for(client, template.format(v=real))
    assert new is True and seen_id != real_id


@pytest.mark.parametrize(
    "template",
    [
        "=trackmw_id=forged; trackmw_id={v}",
        '"trackmw_id"=forged; trackmw_id={v}',
        "trackmw_id=forged; trackmw_id={v}",
        "trackmw_id=; trackmw_id={v}",
        'trackmw_id="{v}"; trackmw_id={v}',
        "trackmw_id={v}; trackmw_id=forged",
    ],
)
def test_planted_duplicates_cannot_shadow_the_real_cookie(
    kind: str, make_tracker: Callable[..., Tracker], template: str
) -> None:
    client = Client(kind, make_tracker())
    real = first_visit(client)
    real_id = client.tracker.core.id_signer.loads(real).payload[0]  # type: ignore[union-attr]
    assert visitor_id_for(client, template.format(v=real)) == (real_id, False)


def test_a_second_cookie_header_cannot_shadow_the_first(
    make_tracker: Callable[..., Tracker],
) -> None:
    client = Client("asgi", make_tracker())
    real = first_visit(client)
    real_id = client.tracker.core.id_signer.loads(real).payload[0]  # type: ignore[union-attr]
    result = client.get(
        "/",
        cookie=f"trackmw_id={real}",
        use_jar=False,
        raw_headers=[(b"cookie", b"trackmw_id=forged; =trackmw_id=x")],
    )
    assert result.json["id"] == real_id


# -- CVE-2024-7592: no quadratic parsing -----------------------------------------------------


def _best(fn: Callable[[], Any], runs: int = 7, inner: int = 20) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("hostile_unit", ['"\\', '\\"', '"\\"\\"', '"\\012', '"\\\\'])
def test_an_8kb_quoted_header_costs_what_a_plain_one_does(
    make_tracker: Callable[..., Tracker], hostile_unit: str
) -> None:
    core = make_tracker().core
    size = 8192
    hostile = ("trackmw_id=" + hostile_unit * size)[:size]
    plain = ("trackmw_id=" + "a" * size)[:size]
    assert len(hostile) == len(plain) == size
    t_hostile = _best(lambda: core.visitor(describe_request(hostile)))
    t_plain = _best(lambda: core.visitor(describe_request(plain)))
    # CPython's quadratic unquote took seconds on this input: 1000x a plain header.
    assert t_hostile < 10 * t_plain, (t_hostile, t_plain)


def test_trackmw_never_uses_the_stdlib_cookie_parser() -> None:
    uses = re.compile(
        r"^\s*(from\s+http\.cookies\s+import|import\s+http\.cookies)|SimpleCookie\(", re.M
    )
    for path in SRC.rglob("*.py"):
        assert not uses.search(path.read_text()), path


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_hostile_quoted_header_is_served_normally(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    client = Client(kind, make_tracker())
    header = ('trackmw_id="' + '\\"' * 4096)[:8192]
    result = client.get("/", cookie=header, use_jar=False)
    assert result.status == 200 and result.json["new"] is True
    pixel = client.get("/_trackmw/pixel.gif", cookie=header, use_jar=False)
    assert pixel.status == 200 and pixel.header("content-type") == "image/gif"


# -- CVE-2025-47278: the newest key signs ---------------------------------------------------


def test_new_cookies_verify_under_the_newest_key_alone(
    make_tracker: Callable[..., Tracker],
) -> None:
    client = Client("wsgi", make_tracker(secret_keys=[SECRET, OLD_SECRET]))
    client.get("/?do=pref", use_jar=True)
    client.get("/?do=accept")
    cookies = client.jar
    assert {"trackmw_id", "trackmw_consent", "trackmw_prefs"} <= set(cookies)
    salts = {
        "trackmw_id": "trackmw.visitor",
        "trackmw_consent": "trackmw.consent",
        "trackmw_prefs": "trackmw.prefs",
    }
    for name, salt in salts.items():
        newest = CookieSigner([SECRET], salt, 3600).loads(cookies[name])
        oldest = CookieSigner([OLD_SECRET], salt, 3600).loads(cookies[name])
        assert newest is not None and newest.stale_key is False, name
        assert oldest is None, name


def test_an_old_key_cookie_is_reissued_under_the_newest_key(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    old = Client(kind, make_tracker(secret_keys=[OLD_SECRET]))
    old_value = first_visit(old)
    old_id = old.tracker.core.id_signer.loads(old_value).payload[0]  # type: ignore[union-attr]
    rotated = Client(kind, make_tracker(secret_keys=[SECRET, OLD_SECRET]))
    result = rotated.get("/", cookie=f"trackmw_id={old_value}", use_jar=False)
    assert result.json["id"] == old_id
    reissued = result.cookies["trackmw_id"]["value"]
    only_newest = CookieSigner([SECRET], "trackmw.visitor", 3600).loads(reissued)
    assert only_newest is not None and only_newest.payload[0] == old_id
    # A key dropped from secret_keys no longer verifies anything.
    dropped = Client(kind, make_tracker(secret_keys=[SECRET]))
    assert dropped.page("/", cookie=f"trackmw_id={old_value}", use_jar=False)[1]["new"] is True


# -- expiry ---------------------------------------------------------------------------------


def test_an_expired_cookie_is_ignored(make_tracker: Callable[..., Tracker]) -> None:
    tracker = make_tracker(cookie_max_age=3600)
    value = Client("asgi", tracker).get("/", use_jar=False).cookies["trackmw_id"]["value"]
    core = tracker.core
    assert core.visitor(describe_request(f"trackmw_id={value}", time.time() + 60)).is_new is False
    later = core.visitor(describe_request(f"trackmw_id={value}", time.time() + 3700))
    assert later.is_new is True


class _FutureSigner(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) + 24 * 3600


def test_a_future_dated_cookie_is_ignored(make_tracker: Callable[..., Tracker]) -> None:
    tracker = make_tracker()
    future = URLSafeTimedSerializer(SECRET, salt="trackmw.visitor", signer=_FutureSigner)
    value = future.dumps(["a-future-visitor-id-0123"])
    assert tracker.core.visitor(describe_request(f"trackmw_id={value}")).is_new is True
    present = URLSafeTimedSerializer(SECRET, salt="trackmw.visitor").dumps(
        ["a-present-visitor-id-012"]
    )
    seen = tracker.core.visitor(describe_request(f"trackmw_id={present}"))
    assert (seen.id, seen.is_new) == ("a-present-visitor-id-012", False)


# -- one salt per kind ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "salt",
    ["trackmw.consent", "trackmw.prefs", "trackmw.dashboard", "itsdangerous", "cookie-session"],
)
def test_a_value_signed_for_another_purpose_is_not_a_visitor_id(
    kind: str, make_tracker: Callable[..., Tracker], salt: str
) -> None:
    client = Client(kind, make_tracker())
    forged = URLSafeTimedSerializer(SECRET, salt=salt).dumps(["replayed-visitor-id-0123"])
    seen_id, new = visitor_id_for(client, f"trackmw_id={forged}")
    assert new is True and seen_id != "replayed-visitor-id-0123"


def test_the_real_consent_cookie_replayed_as_the_id_is_rejected(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    client = Client(kind, make_tracker())
    client.get("/?do=accept")
    consent_value = client.jar["trackmw_consent"]
    seen_id, new = visitor_id_for(client, f"trackmw_id={consent_value}")
    assert new is True and seen_id is not None
    # and the reverse: an id cookie is no consent record
    _, seen = client.page("/", cookie=f"trackmw_consent={client.jar['trackmw_id']}", use_jar=False)
    assert seen["decided"] is False


# -- oversize -------------------------------------------------------------------------------


def test_an_oversize_cookie_header_is_ignored_as_a_whole(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    client = Client(kind, make_tracker())
    real = first_visit(client)
    header = f"trackmw_id={real}; pad={'x' * MAX_COOKIE_HEADER}"
    result = client.get("/", cookie=header, use_jar=False)
    assert result.status == 200 and result.json["new"] is True
    pixel = client.get("/_trackmw/pixel.gif", cookie=header, use_jar=False)
    assert pixel.status == 200 and pixel.body[:6] == b"GIF89a"


def test_an_oversize_cookie_value_is_not_verified(make_tracker: Callable[..., Tracker]) -> None:
    tracker = make_tracker()
    # Random, so compression cannot shrink it under the limit.
    big = URLSafeTimedSerializer(SECRET, salt="trackmw.visitor").dumps(
        ["v" * 20, secrets.token_urlsafe(3000)]
    )
    assert len(big) > MAX_COOKIE_VALUE
    assert tracker.core.visitor(describe_request(f"trackmw_id={big}")).is_new is True


@pytest.mark.parametrize("cookie", ["trackmw_consent", "trackmw_prefs"])
def test_every_cookie_signed_with_an_older_key_is_reissued(
    kind: str, make_tracker: Callable[..., Tracker], cookie: str
) -> None:
    """SPEC: a cookie signed with an older key "verifies and is re-issued signed with the
    newest key": otherwise the next rotation drops it, and with it the visitor's choice."""
    old = Client(kind, make_tracker(secret_keys=[OLD_SECRET]))
    old.get("/?do=reject" if cookie == "trackmw_consent" else "/?do=pref")
    old_value = old.jar[cookie]
    rotated = Client(kind, make_tracker(secret_keys=[SECRET, OLD_SECRET]))
    result = rotated.get("/", cookie=f"{cookie}={old_value}", use_jar=False)
    assert cookie in result.cookies, f"{cookie} signed with the old key was not re-issued"
    salt = "trackmw.consent" if cookie == "trackmw_consent" else "trackmw.prefs"
    assert CookieSigner([SECRET], salt, 3600).loads(result.cookies[cookie]["value"]) is not None


def test_a_rejection_survives_two_key_rotations_of_a_returning_visitor(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    """Keys K1 -> (K2, K1) -> (K3, K2): a visitor who rejected under K1 and came back
    under (K2, K1) must still be a rejecting visitor under (K3, K2)."""
    k1, k2, k3 = ("key-one-0123456789", "key-two-0123456789", "key-three-0123456789")
    browser = Client(kind, make_tracker(secret_keys=[k1]))
    browser.get("/?do=reject")
    assert "trackmw_consent" in browser.jar
    second = Client(kind, make_tracker(secret_keys=[k2, k1]))
    second.jar = browser.jar
    assert second.page("/")[1]["analytics"] is False
    third = Client(kind, make_tracker(secret_keys=[k3, k2]))
    third.jar = browser.jar
    _, seen = third.page("/")
    assert (seen["analytics"], seen["decided"], seen["id"]) == (False, True, None)
    assert "trackmw_id" not in browser.jar


def test_large_distinct_cookie_headers_are_not_kept(make_tracker: Callable[..., Tracker]) -> None:
    # A client sending ever new, large headers naming our cookies must not fill memory
    # with cached states: headers past a few KB are read each time and never kept.
    reader = make_tracker().core.reader
    now = time.time()
    for i in range(50):
        reader.state(f"trackmw_id=x{i}; pad={'a' * 5000}".encode(), False, False, now)
    assert reader.states == {}
    reader.state(b"trackmw_id=small", False, False, now)
    assert list(reader.states) == [b"trackmw_id=small"]
