"""The request path's shortcuts give what the general path gives."""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any
from urllib.parse import unquote_plus

import pytest
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from trackmw.pixel import GIF, _unquote_plus
from trackmw.signing import CookieSigner, base64url

KEY = "test-secret-key-0123456789"


@pytest.mark.parametrize(
    "payload",
    [
        ["abc"],
        ['a"b\\c\n\x01é€', "user-7"],
        ["0123456789abcdefghijkl"],
        {"c": 1, "v": "1"},
        {"long": "x" * 200},
    ],
)
def test_signed_values_are_plain_itsdangerous_tokens(payload: Any) -> None:
    token = CookieSigner([KEY], "trackmw.visitor", 3600).dumps(payload)
    assert URLSafeTimedSerializer(KEY, salt="trackmw.visitor").loads(token) == payload


def test_itsdangerous_tokens_load() -> None:
    token = URLSafeTimedSerializer(KEY, salt="trackmw.visitor").dumps({"big": "y" * 300})
    loaded = CookieSigner([KEY], "trackmw.visitor", 3600).loads(token)
    assert loaded is not None and loaded.payload == {"big": "y" * 300}


@pytest.mark.parametrize(
    "text", ["", "a+b", "%2Fdocs%3Fx%3D1", "%ZZ%4", "%C3%A9%E2%82%AC%FF", "a\\x41%41", "é%41"]
)
def test_pixel_decoding_is_unquote_plus(text: str) -> None:
    assert _unquote_plus(text) == unquote_plus(text, errors="replace")


def test_signed_values_are_the_bytes_itsdangerous_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: 1_790_000_000.25)
    for payload in (["abc"], ["0123456789abcdefghijkl", "user-7"], {"c": 1, "v": "é"}):
        ours = CookieSigner([KEY, "an-older-key-0123456789"], "trackmw.consent", 60).dumps(payload)
        assert ours == URLSafeTimedSerializer(KEY, salt="trackmw.consent").dumps(payload)
    long = {"p": "x" * 60}  # 48 bytes and more: compressed when zlib shortens it, as there
    ours = CookieSigner([KEY], "trackmw.prefs", 60).dumps(long)
    assert ours == URLSafeTimedSerializer(KEY, salt="trackmw.prefs").dumps(long)
    assert ours.startswith(".")


def test_a_new_ids_cookie_is_the_token_dumps_makes(
    make_tracker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dumps_id`` writes the JSON itself; its token must be ``dumps([id])``'s bytes."""
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: 1_790_000_000.25)
    core = make_tracker().core
    signer = CookieSigner([KEY], "trackmw.visitor", 60)
    plain = URLSafeTimedSerializer(KEY, salt="trackmw.visitor")
    for visitor_id in [core.new_id() for _ in range(50)] + ["-_" * 11, "0" * 22]:
        token = signer.dumps_id(visitor_id)
        assert token == signer.dumps([visitor_id])
        assert plain.loads(token) == [visitor_id]


def test_a_short_payload_is_never_compressed_and_still_loads_both_ways() -> None:
    """The one difference from itsdangerous: zlib is not tried under 48 bytes."""
    plain = URLSafeTimedSerializer(KEY, salt="trackmw.visitor")
    payload = ["v" * 22]
    assert plain.dumps(payload).startswith(".")  # itsdangerous compresses it
    ours = CookieSigner([KEY], "trackmw.visitor", 60).dumps(payload)
    assert not ours.startswith(".")
    assert plain.loads(ours) == payload
    loaded = CookieSigner([KEY], "trackmw.visitor", 60).loads(plain.dumps(payload))
    assert loaded is not None and loaded.payload == payload


@pytest.mark.parametrize("size", [0, 1, 2, 3, 16, 20, 31, 32, 33, 64])
def test_base64url_is_itsdangerous_base64(size: int) -> None:
    data = os.urandom(size)
    assert base64url(data) == base64_encode(data)


def test_new_ids_are_token_urlsafe_and_never_repeat(make_tracker: Any) -> None:
    core = make_tracker().core
    ids = [core.new_id() for _ in range(1000)]  # several draws from the OS
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)
    # Each is what token_urlsafe(16) writes for its 16 bytes, and all 128 bits are
    # random: each bit is set in about half of the ids (the mean is 500 and the
    # standard deviation 16; a bit the encoding fixed would be set in 0 or 1,000).
    raw = [base64.urlsafe_b64decode(i + "==") for i in ids]
    assert all(len(r) == 16 for r in raw)
    assert [base64.urlsafe_b64encode(r)[:22].decode() for r in raw] == ids
    numbers = [int.from_bytes(r, "big") for r in raw]
    for bit in range(128):
        assert 380 < sum(n >> bit & 1 for n in numbers) < 620, bit


def _ids_of_a_child(new_id: Any, n: int) -> set[str]:
    """The ids a forked child hands out with ``n`` calls of ``new_id``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the ids it would hand out
        try:
            os.write(write, " ".join(new_id() for _ in range(n)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return set(f.read().split())


def test_a_forked_child_never_hands_out_its_parents_ids(make_tracker: Any) -> None:
    core = make_tracker().core
    core.new_id()  # the parent now holds ids drawn but not handed out
    child = _ids_of_a_child(core.new_id, 70)
    parent = {core.new_id() for _ in range(70)}
    assert len(child) == 70 and not child & parent


class _Clock:
    """itsdangerous' clock, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _signing_at(
    now: float, make_tracker: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[_Clock, CookieSigner, Any, list[str]]:
    """A visitor id signer on a clock the test sets, and a ``new_id`` that keeps the
    ids it draws."""
    clock = _Clock(now)
    monkeypatch.setattr("itsdangerous.timed.time.time", clock)
    core = make_tracker().core
    drawn: list[str] = []

    def new_id() -> str:
        drawn.append(core.new_id())
        return drawn[-1]

    return clock, CookieSigner([KEY], "trackmw.visitor", 60), new_id, drawn


def test_ids_signed_ahead_are_the_tokens_signing_then_makes(
    make_tracker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, signer, new_id, drawn = _signing_at(1_790_000_000.25, make_tracker, monkeypatch)
    issued = [signer.new_id_token(new_id) for _ in range(500)]  # all within one second
    # Signed ahead, in blocks of 1, 2, 4, ... 64: 511 ids drawn, 11 not yet handed out.
    assert len(issued) < len(drawn) < len(issued) + 64
    assert signer._ahead_block == 64
    ids = [i for i, _ in issued]
    assert len(set(ids)) == len(ids) and set(ids) <= set(drawn)
    for visitor_id, token in issued:
        assert token == signer.dumps_id(visitor_id)
    clock.now += 0.5  # the same second: what was signed ahead still goes out
    visitor_id, token = signer.new_id_token(new_id)
    assert token == signer.dumps_id(visitor_id) and visitor_id in drawn


def test_an_id_signed_ahead_never_goes_out_after_its_second(
    make_tracker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, signer, new_id, drawn = _signing_at(1_790_000_000.0, make_tracker, monkeypatch)
    for _ in range(200):
        signer.new_id_token(new_id)
    left = {i for _, i, _ in signer._ahead}
    assert left  # ids signed ahead, not handed out
    block = signer._ahead_block
    clock.now += 1
    for n in range(100):
        visitor_id, token = signer.new_id_token(new_id)
        if n == 0:  # too many had been signed ahead: fewer now
            assert signer._ahead_block == block // 2
        assert visitor_id not in left
        assert token == signer.dumps_id(visitor_id)  # this second's timestamp


def test_at_one_new_visitor_a_second_nothing_is_signed_ahead(
    make_tracker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, signer, new_id, drawn = _signing_at(1_790_000_000.5, make_tracker, monkeypatch)
    for n in range(1, 30):
        visitor_id, token = signer.new_id_token(new_id)
        assert drawn == drawn[:n] and len(drawn) == n  # each id drawn when handed out
        assert token == signer.dumps_id(visitor_id)
        clock.now += 1


def test_threads_never_get_the_same_id_signed_ahead(make_tracker: Any) -> None:
    import threading

    core = make_tracker().core
    signer = CookieSigner([KEY], "trackmw.visitor", 60)
    out: list[list[tuple[str, str]]] = [[] for _ in range(4)]

    def work(mine: list[tuple[str, str]]) -> None:
        for _ in range(2000):
            mine.append(signer.new_id_token(core.new_id))

    threads = [threading.Thread(target=work, args=(mine,)) for mine in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    issued = [pair for mine in out for pair in mine]
    assert len({i for i, _ in issued}) == len(issued) == 8000
    for visitor_id, token in issued:
        hit = signer.verify(token)
        assert hit is not None and hit.payload == [visitor_id]


def test_a_forked_child_never_hands_out_ids_its_parent_signed_ahead(
    make_tracker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("itsdangerous.timed.time.time", _Clock(1_790_000_000.0))
    core = make_tracker().core
    signer = core.id_signer
    for _ in range(300):  # within a second: some ids are now signed ahead
        signer.new_id_token(core.new_id)
    ahead = {i for _, i, _ in signer._ahead}
    assert ahead
    child = _ids_of_a_child(lambda: signer.new_id_token(core.new_id)[0], 100)
    assert len(child) == 100 and not child & ahead


# -- the pixel's quick path (Core.quick_beacon) against the general one (Core.pixel) --------

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0"


def _beacon(
    kind: str, tracker: Any, query: str, headers: list[tuple[str, str]], method: str = "GET"
) -> Any:
    """Send one beacon to the ASGI or WSGI middleware; (status, body, set-cookies, buffered)."""
    if kind == "wsgi":
        return _wsgi_beacon(tracker, query, headers, method)
    import asyncio

    from trackmw.asgi import TrackingMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the pixel never reaches the app")

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": method,
        "scheme": "http",
        "path": "/_trackmw/pixel.gif",
        "query_string": query.encode("latin-1"),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("10.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    middleware = TrackingMiddleware(app, tracker)
    asyncio.run(middleware(scope, receive, send))
    buffered = [hit._replace(ts=0) for hit in tracker.core.pipeline._buffer]
    tracker.core.pipeline._buffer.clear()
    start = sent[0]
    cookies = [v for k, v in start["headers"] if k == b"set-cookie"]
    return start["status"], sent[1]["body"], cookies, buffered


def _wsgi_beacon(tracker: Any, query: str, headers: list[tuple[str, str]], method: str) -> Any:
    import io

    from trackmw.wsgi import TrackingMiddleware

    def app(environ: Any, start_response: Any) -> Any:
        raise AssertionError("the pixel never reaches the app")

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": "/_trackmw/pixel.gif",
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "10.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
    }
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = environ[key] + "; " + value if key in environ else value
    seen: list[Any] = []
    body = b"".join(
        TrackingMiddleware(app, tracker)(environ, lambda s, h, e=None: seen.append((s, h)))
    )
    buffered = [hit._replace(ts=0) for hit in tracker.core.pipeline._buffer]
    tracker.core.pipeline._buffer.clear()
    status, response_headers = seen[0]
    cookies = [v.encode() for k, v in response_headers if k.lower() == "set-cookie"]
    return int(status[:3]), body, cookies, buffered


def _returning_cookie(tracker: Any, user: str | None = None) -> str:
    from trackmw.consent import ConsentRecord

    core = tracker.core
    visitor = core.id_signer.dumps(["v" * 22] if user is None else ["v" * 22, user])
    record = ConsentRecord(decided=True, analytics=True, preferences=True, policy_version="1")
    consent = core.consent_signer.dumps(record.to_payload())
    return f"a=1; trackmw_consent={consent}; trackmw_id={visitor}"


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "user",
        "referrer-and-campaign",
        "upper-case-host",
        "long-user-agent",
        "blank-user-agent",
        "no-page",
        "new-visitor",
        "dnt",
        "prefetch",
        "head",
        "repeated-cookie-headers",
        "rate-limited",
        "rate-limited-429",
        "allowed-hosts",
    ],
)
def test_the_quick_pixel_path_counts_what_the_general_path_counts(
    make_tracker: Any, kind: str, case: str
) -> None:
    settings: dict[str, Any] = {"policy_version": "1"}
    if case.startswith("rate-limited"):
        settings["pixel_rate_limit"] = 1
        if case.endswith("429"):
            settings["pixel_rate_limit_status"] = 429
    if case == "allowed-hosts":
        settings["allowed_hosts"] = ["site.example"]
    outcomes = []
    taken: list[Any] = []
    for quick in (True, False):
        tracker = make_tracker(flush_interval=3600, **settings)
        if quick:

            def quick_beacon(*args: Any, real: Any = tracker.core.quick_beacon) -> Any:
                taken.append(real(*args))
                return taken[-1]

            tracker.core.quick_beacon = quick_beacon
        else:
            tracker.core.quick_beacon = lambda *args: None  # the general path only,
            tracker.core.beacon_caches = None  # and not quick_beacon's C version either
        cookie = _returning_cookie(tracker, "user-7" if case == "user" else None)
        query = "p=%2Fdocs%3Fx%3D1"
        headers = [("host", "site.example"), ("user-agent", UA), ("cookie", cookie)]
        method = "GET"
        if case == "referrer-and-campaign":
            query += "&r=https%3A%2F%2Fnews.example%2Fa&c=mail"
        elif case == "upper-case-host":
            headers[0] = ("host", "Site.EXAMPLE:8000")
        elif case == "long-user-agent":
            headers[1] = ("user-agent", UA * 10)
        elif case == "blank-user-agent":
            headers[1] = ("user-agent", "  ")
        elif case == "no-page":
            query = ""
            headers.append(("referer", "https://site.example/from?q=1"))
        elif case == "new-visitor":
            headers.pop()
        elif case == "dnt":
            headers.append(("dnt", "1"))
        elif case == "prefetch":
            headers.append(("sec-purpose", "prefetch"))
        elif case == "head":
            method = "HEAD"
        elif case == "repeated-cookie-headers":
            first, _, rest = cookie.partition("; ")
            headers[2] = ("cookie", first)
            headers.append(("cookie", rest))
        outcome = []
        for status, body, cookies, buffered in (
            _beacon(kind, tracker, query, headers, method) for _ in range(2)
        ):
            assert body == (b"" if method == "HEAD" else GIF)
            if case == "new-visitor":  # a random id each time: compare the rest
                cookies = [c.split(b"=", 1)[0] for c in cookies]
                buffered = [hit._replace(visitor_id="new") for hit in buffered]
            outcome.append((status, cookies, buffered))
        outcomes.append(outcome)
    assert outcomes[0] == outcomes[1]
    common = case in (
        "plain",
        "user",
        "referrer-and-campaign",
        "upper-case-host",
        "long-user-agent",
        "repeated-cookie-headers",
        "rate-limited",
        "rate-limited-429",
    )
    assert any(status is not None for status in taken) is common


@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_json_made_once_is_json_dumps(ensure_ascii: bool, separators: tuple[str, str]) -> None:
    from trackmw._json import dumps_function

    dumps = dumps_function(ensure_ascii=ensure_ascii, separators=separators)
    for value in (
        ["abc"],
        [1.5, 1e16, -0.0, 10**20, None, True, False, 'a"b\\c\n\x01é€\u2028'],
        {"c": 1, "v": "1", "nested": {"k": [1, {"x": None}]}},
        [],
        {},
        "plain",
    ):
        assert dumps(value) == json.dumps(value, ensure_ascii=ensure_ascii, separators=separators)
    with pytest.raises(TypeError):
        dumps([object()])


def test_the_pixel_headers_are_a_fresh_list_each_time(make_tracker: Any) -> None:
    # Middleware around trackmw may append to a response's headers in place: neither
    # path may hand it the list that every later pixel response is built from.
    import asyncio

    from trackmw.asgi import TrackingMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the pixel never reaches the app")

    tracker = make_tracker(policy_version="1")
    middleware = TrackingMiddleware(app, tracker)
    cookie = _returning_cookie(tracker)
    starts: list[Any] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            message["headers"].append((b"x-request-id", str(len(starts)).encode()))
            starts.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    for extra in ([], [("dnt", "1")], [], [("dnt", "1")]):  # the quick and general paths
        headers = [("host", "site.example"), ("user-agent", UA), ("cookie", cookie), *extra]
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/_trackmw/pixel.gif",
            "query_string": b"p=%2F",
            "headers": [(k.encode(), v.encode()) for k, v in headers],
        }
        asyncio.run(middleware(scope, receive, send))
    for i, start in enumerate(starts):
        assert [v for k, v in start["headers"] if k == b"x-request-id"] == [str(i).encode()]


@pytest.mark.parametrize("secure, scheme, expected", [
    (None, "http", False), (None, "https", True), (True, "http", True), (False, "https", False),
    (1, "http", True),  # any true value, as for the other cookies
])
def test_a_new_ids_cookie_is_secure_as_the_settings_say(
    make_tracker: Any, secure: Any, scheme: str, expected: bool
) -> None:
    def describe() -> Any:
        raise AssertionError("only the scheme bears on this cookie")

    _, cookie = make_tracker(cookie_secure=secure).core.new_id_cookie(scheme, describe)
    assert ("; Secure" in cookie) is expected
