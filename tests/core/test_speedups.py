"""The ASGI middleware's C speedups (``trackmw._speedups``) against its Python path.

Every behaviour test of ``tests/core`` runs through both (the ``asgi`` and ``asgi-py``
kinds of ``harness.Client``); these tests hold the C code to what the Python path
decides, and check its objects' memory handling.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.harness import PurePythonMiddleware
from trackmw import Tracker
from trackmw.asgi import SPEEDUPS, LazyVisitor, PyLazyVisitor, TrackingMiddleware, _ASGIVisitor
from trackmw.consent import ConsentRecord
from trackmw.cookiestate import _CACHED_HEADER, state_key
from trackmw.events import PageView

needs_speedups = pytest.mark.skipif(not SPEEDUPS, reason="trackmw._speedups is not built here")

T0 = 1_800_000_000.0


def test_the_speedups_are_built_where_they_are_required() -> None:
    """CI sets TRACKMW_REQUIRE_SPEEDUPS: a build that silently fell back to pure
    Python would leave the C code untested."""
    if os.environ.get("TRACKMW_REQUIRE_SPEEDUPS") == "1":
        assert SPEEDUPS, "trackmw._speedups did not build (see the pip install output)"
    elif not SPEEDUPS:
        pytest.skip("trackmw._speedups is not built here (no C compiler at install?)")
    assert LazyVisitor is not PyLazyVisitor
    assert issubclass(LazyVisitor, _ASGIVisitor) and issubclass(PyLazyVisitor, _ASGIVisitor)


@pytest.mark.parametrize(("value", "on"), [("1", False), ("yes", False), ("0", True), ("", True)])
def test_the_environment_can_turn_the_speedups_off(value: str, on: bool) -> None:
    code = ("import trackmw.asgi as a, trackmw.normalize as n; "
            "print(a.SPEEDUPS, a.LazyVisitor is a.PyLazyVisitor, "
            "n.speedup('normalize_run') is not None)")
    env = {**os.environ, "TRACKMW_NO_EXTENSIONS": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    # Built here? (Not SPEEDUPS: this run itself may have them turned off.)
    built = importlib.util.find_spec("trackmw._speedups") is not None
    speedups = on and built
    assert out.stdout.split() == [str(speedups), str(not speedups), str(speedups)], out.stderr


@pytest.mark.parametrize(
    ("error", "warned"),
    [("ImportError('libcrypto.so.9: cannot open shared object file')", True),
     ("ModuleNotFoundError(name)", False)],
)
def test_speedups_that_are_built_but_cannot_load_are_said_once(error: str, warned: bool) -> None:
    """A module built against a library that is gone (a wheel moved to another machine)
    turns the speedups off, with a warning; one that was never built is no news."""
    code = f"""
import logging, sys
class Broken:
    def find_spec(self, name, path, target=None):
        if name == "trackmw._speedups":
            raise {error}
sys.meta_path.insert(0, Broken())
logging.basicConfig()
import trackmw.asgi, trackmw.normalize
print(trackmw.asgi.SPEEDUPS, trackmw.normalize.speedup("normalize_run"))
"""
    env = {**os.environ, "TRACKMW_NO_EXTENSIONS": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "None"], out.stderr
    assert out.stderr.count("could not be loaded") == (1 if warned else 0), out.stderr
    if warned:
        assert "libcrypto.so.9" in out.stderr


# -- the lookup: the C code finds what the Python path finds, or leaves it to it ---------


def _cookie(tracker: Tracker, signed_at: float) -> bytes:
    """A returning visitor's Cookie header, its values signed at ``signed_at``."""
    from unittest import mock

    core = tracker.core
    with mock.patch("time.time", return_value=signed_at):
        visitor = core.id_signer.dumps(["v" * 22])
        record = ConsentRecord(decided=True, analytics=True, preferences=True, policy_version="1")
        consent = core.consent_signer.dumps(record.to_payload())
    return f"a=1; trackmw_consent={consent}; trackmw_id={visitor}".encode()


@pytest.fixture(scope="module")
def lookup_tracker() -> Any:
    tracker = Tracker(secret_keys=["s" * 32], store="memory://", cookie_max_age=3600)
    yield tracker
    tracker.close()


NAMES = [b"cookie", b"dnt", b"sec-gpc", b"host", b"Cookie", b"cookies", b"x-cookie", b"dn"]
PATHS = ["/", "/a/b", "/_trackmw/pixel.gif", "/_trackmw", "/_trackmwx", "/static", "/static/x"]


def _python_lookup(core: Any, scope: dict[str, Any], prefixes: tuple[str, ...], now: float) -> Any:
    """The Python path's answer for a cached state: the middleware's header pass and
    ``Core.request_state``'s cache hit, without computing a missing state."""
    if scope["type"] != "http" or scope["path"].startswith(prefixes):
        return None
    cookie = dnt = gpc = None
    for name, value in scope["headers"]:
        if name == b"cookie":
            cookie = value if cookie is None else cookie + b"; " + value
        elif name == b"dnt":
            dnt = value if dnt is None else dnt
        elif name == b"sec-gpc" and gpc is None:
            gpc = value
    if dnt is not None or gpc is not None:
        return None
    states = core.reader.states
    cached = states.get(cookie)
    if cached is not None and cached[0] <= now <= cached[1]:
        return cached[2]
    if cookie is not None and len(cookie) > _CACHED_HEADER:  # read each time, never cached
        return None
    cached = states.get(state_key(cookie))  # CookieReader.state's second lookup
    return cached[2] if cached is not None and cached[0] <= now <= cached[1] else None


@needs_speedups
@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["http", "http", "http", "websocket", "lifespan"]),
    path=st.sampled_from(PATHS),
    headers=st.lists(
        st.tuples(
            st.sampled_from(NAMES),
            st.sampled_from(["none", "plain", "early", "late", "garbage", "other"]),
            st.sampled_from(["tuple", "tuple", "tuple", "list", "str-name", "triple"]),
        ),
        max_size=6,
    ),
    offset=st.sampled_from([-120.0, -30.0, 0.0, 1800.0, 3590.0, 3700.0, 7300.0]),
)
def test_the_c_lookup_agrees_with_the_python_path(
    lookup_tracker: Any, kind: str, path: str, headers: list[Any], offset: float
) -> None:
    from trackmw import _speedups

    core = lookup_tracker.core
    values = {
        "plain": b"a=1",
        "early": _cached_cookie(lookup_tracker, T0),
        "late": _cached_cookie(lookup_tracker, T0 + 3600),
        "garbage": b"trackmw_id=garbage",
        "other": b"b=2",
    }
    for value in (None, *values.values()):  # cache every state, each at a time inside its window
        core.request_state(value, None, None, T0 + 3600)
    raw: list[Any] = []
    for name, value_kind, shape in headers:
        value = values.get(value_kind, b"x")
        if shape == "list":
            raw.append([name, value])
        elif shape == "str-name":
            raw.append((name.decode(), value))
        elif shape == "triple":
            raw.append((name, value, b""))
        else:
            raw.append((name, value))
    scope = {"type": kind, "path": path, "headers": raw}
    prefixes = (core.prefix, "/static")
    now = T0 + offset
    found = _speedups.cached_state(scope, prefixes, core.reader.states, now)
    well_formed = all(type(h) is tuple and len(h) == 2 and type(h[0]) is bytes for h in raw)
    if not well_formed:
        assert found is None  # malformed: left to the Python path
        return
    expected = _python_lookup(core, scope, prefixes, now)
    if sum(1 for name, _ in raw if name == b"cookie") > 1:
        assert found is None  # repeated Cookie headers are joined by the Python path
    else:
        assert found is expected
    assert "trackmw" not in scope


_COOKIES: dict[float, bytes] = {}


def _cached_cookie(tracker: Tracker, signed_at: float) -> bytes:
    if signed_at not in _COOKIES:
        _COOKIES[signed_at] = _cookie(tracker, signed_at)
    return _COOKIES[signed_at]


@needs_speedups
def test_a_cached_entry_of_another_shape_is_left_to_the_python_path(lookup_tracker: Any) -> None:
    from trackmw import _speedups

    state = lookup_tracker.core.request_state(b"a=1", None, None, T0)
    scope = {"type": "http", "path": "/", "headers": [(b"cookie", b"a=1")]}
    for key in (b"a=1", state_key(b"a=1")):  # the header's entry, or its cookies'
        for entry in [(0, 1e20, state), (0.0, 1e20), [0.0, 1e20, state], state]:
            assert _speedups.cached_state(scope, (), {key: entry}, T0) is None
        assert _speedups.cached_state(scope, (), {key: (0.0, 1e20, state)}, T0) is state


@needs_speedups
def test_the_lookup_checks_its_arguments() -> None:
    from trackmw import _speedups

    scope = {"type": "http", "path": "/", "headers": []}
    with pytest.raises(TypeError, match="takes 4 arguments"):
        _speedups.cached_state(scope, (), {})  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _speedups.cached_state(scope, (), {}, "now")  # type: ignore[arg-type]
    # Not a dict, tuple or list where one is expected: not the common case.
    assert _speedups.cached_state([], (), {}, T0) is None  # type: ignore[arg-type]
    assert _speedups.cached_state(scope, ["/x"], {}, T0) is None  # type: ignore[arg-type]
    assert _speedups.cached_state({**scope, "headers": ()}, (), {}, T0) is None
    assert _speedups.cached_state({"type": "http"}, (), {}, T0) is None
    assert _speedups.cached_state({**scope, "path": b"/"}, (), {}, T0) is None


BEACON_NAMES = [b"cookie", b"user-agent", b"host", b"dnt", b"sec-gpc", b"sec-purpose",
                b"purpose", b"x-moz", b"accept", b"User-Agent", b"hostname"]


@needs_speedups
@settings(max_examples=400, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(BEACON_NAMES),
            st.sampled_from([b"a", b"b", b""]),
            st.sampled_from(["tuple", "tuple", "tuple", "tuple", "list", "str-value"]),
        ),
        max_size=7,
    )
)
def test_the_c_beacon_pass_agrees_with_the_python_pass(headers: list[Any]) -> None:
    from trackmw import _speedups, asgi

    raw: list[Any] = []
    for name, value, shape in headers:
        if shape == "list":
            raw.append([name, value])
        elif shape == "str-value":
            raw.append((name, value.decode()))
        else:
            raw.append((name, value))
    found = _speedups.beacon_headers(raw)
    if not all(type(h) is tuple and type(h[1]) is bytes for h in raw):
        assert found is None  # left to the Python pass
        return
    expected = asgi.beacon_headers(raw)
    if sum(1 for name, _ in raw if name == b"cookie") > 1:
        assert found is None  # repeated Cookie headers are joined by the Python pass
    else:
        assert found == expected
        if found is not None:  # the header values themselves, not copies
            assert all(x is None or any(x is v for _, v in raw) for x in found)


# -- the beacon's common case: the C count against Core.quick_beacon ---------------------


@pytest.fixture(scope="module")
def beacon_tracker() -> Any:
    tracker = Tracker(
        secret_keys=["s" * 32], store="memory://", cookie_max_age=3600,
        pixel_rate_limit=3, pixel_rate_limit_status=429,
    )
    yield tracker
    tracker.close()


BEACON_QUERIES = [b"p=%2Fa&r=https%3A%2F%2Fexample.org%2F&c=news", b"p=%2Fb", b"r=x", b"",
                  b"p=&r=x", b"p=%2Fc%0A", b"p=%2Fd&c=spring", b"p=%2Fe&r=x", b"c=x&p=%2Ff"]


def _beacon_effects(tracker: Tracker, run: Callable[[], Any]) -> tuple[Any, ...]:
    """What ``run`` answered, and what it changed: the hits buffered and the counts."""
    core = tracker.core
    core.pipeline._buffer.clear()
    before = dict(core.rate_limiter._counts)
    status = run()
    return status, list(core.pipeline._buffer), dict(core.rate_limiter._counts), before


@needs_speedups
@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "GET", "GET", "POST", "get"]),
    cookies=st.lists(st.sampled_from(["accepted", "accepted", "rejected", "garbage"]), max_size=2),
    query=st.sampled_from(BEACON_QUERIES),
    agent=st.sampled_from([b"Mozilla/5.0 test", b"Mozilla/5.0 test", b"  ", None, b"curl/8"]),
    host=st.sampled_from([b"example.org", b"Example.ORG", None]),
    extra=st.sampled_from(
        [None, (b"dnt", b"1"), (b"sec-purpose", b"prefetch"), (b"accept", b"*/*")]
    ),
    counted=st.integers(min_value=0, max_value=4),
    warm=st.booleans(),
)
def test_the_c_beacon_counts_what_quick_beacon_counts(
    beacon_tracker: Any, method: str, cookies: list[str], query: bytes, agent: bytes | None,
    host: bytes | None, extra: Any, counted: int, warm: bool,
) -> None:
    """``_speedups.beacon`` answers only where the Python quick path would, with the
    same status, hit and rate-limit count; where it answers None it changed nothing."""
    from tests.core.harness import PurePythonMiddleware
    from trackmw import _speedups

    core = beacon_tracker.core
    values = {
        "accepted": _cached_cookie(beacon_tracker, T0 + 3600),
        "rejected": b"trackmw_consent=garbage",
        "garbage": b"trackmw_id=garbage",
    }
    headers = [(b"cookie", values[c]) for c in cookies]
    if agent is not None:
        headers.append((b"user-agent", agent))
    if host is not None:
        headers.append((b"host", host))
    if extra is not None:
        headers.append(extra)
    scope = {"type": "http", "method": method, "path": "/_trackmw/pixel.gif",
             "query_string": query, "headers": headers}
    now = T0 + 3650 + (counted * 1e-3)
    python = PurePythonMiddleware(_middleware(beacon_tracker).app, beacon_tracker)
    core.rate_limiter.allow("v" * 22, now)  # the minute's window, for the counts below
    core.rate_limiter._counts = {"v" * 22: counted}
    if warm:  # the Python path has seen this beacon: its caches hold what it read
        _beacon_effects(beacon_tracker, lambda: python._quick_pixel(dict(scope)))
        core.rate_limiter._counts = {"v" * 22: counted}

    from unittest import mock

    with mock.patch("trackmw.asgi._time", return_value=now):
        status, hits, counts, before = _beacon_effects(
            beacon_tracker, lambda: _speedups.beacon(dict(scope), core.beacon_caches, core, now)
        )
        if status is None:
            assert (hits, counts) == ([], before)  # nothing done: Python decides
            return
        core.rate_limiter._counts = dict(before)
        expected = _beacon_effects(beacon_tracker, lambda: python._quick_pixel(dict(scope)))
    assert (status, hits, counts) == expected[:3]
    assert type(hits[0]) is type(expected[1][0]) if hits else status == 429


@needs_speedups
def test_the_c_beacon_counts_a_returning_visitors_beacon(beacon_tracker: Any) -> None:
    """The common case is taken in C once the Python path has filled the caches."""
    from unittest import mock

    from tests.core.harness import PurePythonMiddleware
    from trackmw import _speedups

    core = beacon_tracker.core
    scope = {"type": "http", "method": "GET", "path": "/_trackmw/pixel.gif",
             "query_string": BEACON_QUERIES[0],
             "headers": [(b"host", b"example.org"), (b"user-agent", b"Mozilla/5.0 test"),
                         (b"cookie", _cached_cookie(beacon_tracker, T0 + 3600))]}
    now = T0 + 3650
    core.rate_limiter._counts = {}
    python = PurePythonMiddleware(_middleware(beacon_tracker).app, beacon_tracker)
    with mock.patch("trackmw.asgi._time", return_value=now):
        assert python._quick_pixel(dict(scope)) == 200
    status, hits, counts, _ = _beacon_effects(
        beacon_tracker, lambda: _speedups.beacon(dict(scope), core.beacon_caches, core, now)
    )
    assert status == 200 and counts == {"v" * 22: 2}
    assert hits == [(now, "v" * 22, None, "/a", "https://example.org/", "news",
                     "Mozilla/5.0 test", "example.org")]
    assert type(hits[0]).__name__ == "Hit"
    for _ in range(2):
        _speedups.beacon(dict(scope), core.beacon_caches, core, now)
    assert _speedups.beacon(dict(scope), core.beacon_caches, core, now) == 429  # over 3 a minute

    # The state's ids are read from CookieState's slots: a state of another class (here
    # a subclass) is left to the Python path, with nothing counted.
    from trackmw.cookiestate import CookieState

    class Odd(CookieState):
        __slots__ = ()

    cookie = scope["headers"][2][1]
    keys = (cookie, state_key(cookie))  # the header's entry, and its cookies' (state_key)
    not_before, not_after, state = core.beacon_caches[0][cookie]
    odd = Odd.__new__(Odd)
    for name in CookieState.__slots__:
        setattr(odd, name, getattr(state, name))
    for key in keys:
        core.beacon_caches[0][key] = (not_before, not_after, odd)
    core.rate_limiter._counts = {}
    try:
        status, hits, counts, _ = _beacon_effects(
            beacon_tracker, lambda: _speedups.beacon(dict(scope), core.beacon_caches, core, now)
        )
    finally:
        for key in keys:
            core.beacon_caches[0][key] = (not_before, not_after, state)
    assert (status, hits, counts) == (None, [], {})


@needs_speedups
@pytest.mark.parametrize("query", BEACON_QUERIES)
def test_the_c_beacon_reads_the_query_as_the_python_path_does(
    beacon_tracker: Any, query: bytes
) -> None:
    """Each beacon query, its caches warm: the C count buffers the hit the Python
    path buffers (page, referrer and campaign), or leaves the beacon to it."""
    from unittest import mock

    from tests.core.harness import PurePythonMiddleware
    from trackmw import _speedups

    core = beacon_tracker.core
    scope = {"type": "http", "method": "GET", "path": "/_trackmw/pixel.gif",
             "query_string": query,
             "headers": [(b"host", b"example.org"), (b"user-agent", b"Mozilla/5.0 test"),
                         (b"cookie", _cached_cookie(beacon_tracker, T0 + 3600))]}
    now = T0 + 3650
    python = PurePythonMiddleware(_middleware(beacon_tracker).app, beacon_tracker)
    core.rate_limiter._counts = {}
    with mock.patch("trackmw.asgi._time", return_value=now):
        expected = _beacon_effects(beacon_tracker, lambda: python._quick_pixel(dict(scope)))
    core.rate_limiter._counts = {}
    got = _beacon_effects(
        beacon_tracker, lambda: _speedups.beacon(dict(scope), core.beacon_caches, core, now)
    )
    if got[0] is None:
        assert expected[0] is None and got[1:3] == ([], {})
    else:
        assert got[:3] == expected[:3] and got[0] == 200


@needs_speedups
def test_the_c_beacon_leaves_odd_arguments_to_python(beacon_tracker: Any) -> None:
    from trackmw import _speedups

    core = beacon_tracker.core
    caches = core.beacon_caches
    scope = {"type": "http", "method": "GET", "path": "/_trackmw/pixel.gif",
             "query_string": b"", "headers": []}
    odd_caches = [caches[:4], caches[:6], (*caches[:4], list, *caches[5:]),
                  (*caches[:4], dict, *caches[5:]), [*caches], (caches[0], [], *caches[2:])]
    for odd in odd_caches:
        assert _speedups.beacon(scope, odd, core, T0) is None
    assert _speedups.beacon(scope, caches, core, 1) is None  # an int time
    assert _speedups.beacon([], caches, core, T0) is None
    assert _speedups.beacon({**scope, "method": b"GET"}, caches, core, T0) is None
    assert _speedups.beacon({**scope, "query_string": "p=1"}, caches, core, T0) is None
    assert _speedups.beacon({"type": "http", "headers": []}, caches, core, T0) is None
    with pytest.raises(TypeError):
        _speedups.beacon(scope, caches, core)


# -- the per-request object --------------------------------------------------------------


def _middleware(tracker: Tracker) -> TrackingMiddleware:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    return TrackingMiddleware(app, tracker)


@needs_speedups
def test_enter_makes_the_lazy_visitor_and_puts_it_in_the_scope(
    make_tracker: Callable[..., Tracker],
) -> None:
    tracker = make_tracker()
    middleware = _middleware(tracker)
    core = tracker.core
    state = core.request_state(None, None, None, T0)

    async def send(message: Any) -> None:
        return None

    scope: dict[str, Any] = {"type": "http", "path": "/page", "headers": [(b"host", b"x")]}
    lazy = LazyVisitor.enter(scope, middleware._special, core.reader.states, T0, core, send)
    assert type(lazy) is LazyVisitor and scope["trackmw"] is lazy
    assert lazy._core is core and lazy._state is state and lazy._scope is scope
    assert lazy._send is send and lazy.visitor is None and lazy.issued_id is None
    # Not the common case: nothing made, the scope untouched.
    for other in [{**scope, "path": "/static/x"}, {**scope, "type": "websocket"}]:
        other.pop("trackmw")
        assert LazyVisitor.enter(other, ("/static",), core.reader.states, T0, core, send) is None
        assert "trackmw" not in other
    with pytest.raises(TypeError, match="takes 6 arguments"):
        LazyVisitor.enter(scope, (), {}, T0, core)  # type: ignore[call-arg]


@needs_speedups
def test_the_constructor_takes_what_the_python_one_takes(
    make_tracker: Callable[..., Tracker],
) -> None:
    core = make_tracker().core
    state = core.request_state(None, None, None, T0)
    scope: dict[str, Any] = {}
    for lazy in (
        LazyVisitor(core, scope, state, print),
        LazyVisitor(core=core, scope=scope, state=state, send=print),
    ):
        assert (lazy._core, lazy._state, lazy._scope, lazy._send) == (core, state, scope, print)
        assert lazy.visitor is None and lazy.issued_id is None
        lazy._scope, lazy._send = None, len  # as the middleware's finally does
        assert lazy._scope is None and lazy._send is len
    with pytest.raises(TypeError):
        LazyVisitor(core, scope, state)  # type: ignore[call-arg]


@needs_speedups
def test_send_quiet_passes_messages_on_until_the_app_reads_its_visitor(
    make_tracker: Callable[..., Tracker], monkeypatch: pytest.MonkeyPatch
) -> None:
    core = make_tracker().core
    state = core.request_state(None, None, None, T0)
    sent: list[Any] = []

    def send(message: Any) -> str:
        sent.append(message)
        return "awaitable"

    lazy = LazyVisitor(core, {}, state, send)
    start = {"type": "http.response.start", "status": 200, "headers": []}
    assert lazy.send_quiet(start) == "awaitable" and sent == [start]
    calls: list[Any] = []
    monkeypatch.setattr(LazyVisitor, "send_full", lambda self, m: calls.append(m) or "full")
    lazy.visitor = object()  # type: ignore[assignment]
    assert lazy.send_quiet(start) == "full" and calls == [start] and sent == [start]


@needs_speedups
def test_a_lazy_visitor_and_its_scope_are_collected_together(
    make_tracker: Callable[..., Tracker],
) -> None:
    """The object and the scope refer to each other until the request ends; if a
    request never ends (a cancelled task), the collector must still free both."""
    core = make_tracker().core
    core.request_state(None, None, None, T0)  # the state enter finds

    class Marker:
        pass

    marker = Marker()
    alive = weakref.ref(marker)
    scope: dict[str, Any] = {"type": "http", "path": "/", "headers": [], "marker": marker}
    lazy = LazyVisitor.enter(scope, (), core.reader.states, T0, core, print)
    assert lazy is not None
    del marker, scope, lazy
    gc.collect()
    assert alive() is None


@needs_speedups
def test_the_c_objects_hold_no_reference_after_they_go(
    make_tracker: Callable[..., Tracker],
) -> None:
    core = make_tracker().core
    state = core.request_state(None, None, None, T0)
    states = core.reader.states
    scope: dict[str, Any] = {"type": "http", "path": "/", "headers": [(b"a", b"b")]}

    def send(message: Any) -> None:
        return None

    from trackmw import _speedups

    header = (b"content-type", b"text/plain")
    start = {"type": "http.response.start", "status": 200, "headers": [header]}
    added = [(b"cache-control", b"private")]
    agent, host = (b"user-agent", b"x"), (b"host", b"y")
    beacon = [agent, host, (b"cookie", b"a=1")]
    watched = (core, state, scope, send, states, header, start, added, agent, host, beacon)
    gc.collect()
    before = [sys.getrefcount(x) for x in watched]
    for _ in range(1000):
        lazy = LazyVisitor.enter(scope, (), states, T0, core, send)
        assert lazy is not None
        lazy.send_quiet({"type": "http.response.body"})
        assert _speedups.cached_state(scope, (), states, T0) is not None
        lazy._scope, lazy._send = None, len
        del scope["trackmw"], lazy
        assert _speedups.add_cookies(start, added, ["a=1"]) is not None
        with pytest.raises(UnicodeEncodeError):
            _speedups.add_cookies(start, added, ["a=1", "b=€"])
        assert _speedups.beacon_headers(beacon) is not None
    assert [sys.getrefcount(x) for x in watched] == before


# -- odd objects: left to the Python path, or refused as Python would refuse them --------


@pytest.mark.parametrize("kind", [LazyVisitor, PyLazyVisitor], ids=["c", "python"])
@pytest.mark.parametrize("field", ["visitor", "_send"])
def test_a_deleted_field_raises_as_in_python(kind: type, field: str) -> None:
    lazy = kind(None, {}, None, print)
    delattr(lazy, field)
    with pytest.raises(AttributeError):
        lazy.send_quiet({"type": "http.response.body"})


class _Str(str):
    pass


class _Bytes(bytes):
    pass


class _Dict(dict):  # type: ignore[type-arg]
    pass


@needs_speedups
def test_subclasses_and_odd_values_are_left_to_the_python_path(lookup_tracker: Any) -> None:
    from trackmw import _speedups

    core = lookup_tracker.core
    state = core.request_state(b"a=1", None, None, T0)
    states = core.reader.states
    scope: dict[str, Any] = {"type": "http", "path": "/", "headers": [(b"cookie", b"a=1")]}
    assert _speedups.cached_state(scope, (), states, T0) is state
    assert _speedups.cached_state(scope, (), states, int(T0)) is state  # an int is a time
    for odd in (
        {**scope, "type": _Str("http")},
        {**scope, "path": _Str("/")},
        {**scope, "headers": [(_Bytes(b"cookie"), b"a=1")]},
        {**scope, "headers": [(b"cookie", _Bytes(b"a=1"))]},
        _Dict(scope),
    ):
        assert _speedups.cached_state(odd, (), states, T0) is None
    assert _speedups.cached_state(scope, (), _Dict(states), T0) is None
    assert _speedups.cached_state(scope, ("",), states, T0) is None  # "" starts every path
    assert _speedups.cached_state(scope, (_Str("/x"),), states, T0) is None
    assert _speedups.cached_state(scope, (), states, float("nan")) is None  # no window holds it
    empty = core.request_state(b"", None, None, T0)
    assert _speedups.cached_state({**scope, "headers": [(b"cookie", b"")]}, (), states, T0) is empty
    with pytest.raises(TypeError):
        _speedups.cached_state(scope, (), states, None)  # type: ignore[arg-type]


@needs_speedups
def test_enter_makes_the_class_it_is_called_on(make_tracker: Callable[..., Tracker]) -> None:
    core = make_tracker().core
    core.request_state(None, None, None, T0)

    class WithDict(LazyVisitor):  # type: ignore[misc,valid-type]
        pass  # no __slots__: instances have a __dict__

    scope: dict[str, Any] = {"type": "http", "path": "/", "headers": []}
    lazy = WithDict.enter(scope, (), core.reader.states, T0, core, print)
    assert type(lazy) is WithDict and scope["trackmw"] is lazy
    lazy.note = "kept"
    marker = type("Marker", (), {})()
    alive = weakref.ref(marker)
    lazy.marker = marker
    del marker, lazy, scope
    gc.collect()
    assert alive() is None


@needs_speedups
def test_an_abstract_subclass_cannot_be_made() -> None:
    from abc import abstractmethod

    class Abstract(LazyVisitor):  # type: ignore[misc,valid-type]
        @abstractmethod
        def more(self) -> None: ...

    with pytest.raises(TypeError, match="abstract"):
        Abstract(None, {}, None, print)
    with pytest.raises(TypeError, match="abstract"):
        Abstract.enter({"type": "http", "path": "/", "headers": []}, (), {None: (0.0, 1e20, 1)},
                       T0, None, print)


# -- the middleware: both ways through it decide the same ---------------------------------


def test_the_middleware_takes_the_c_path_for_a_cached_state(
    make_tracker: Callable[..., Tracker],
) -> None:
    """A returning visitor's second request is taken in C: the Python path's way of
    making the LazyVisitor is not used."""
    import asyncio

    tracker = make_tracker()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["trackmw"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        return None

    middleware = TrackingMiddleware(app, tracker)
    assert (middleware._plan is not None) is SPEEDUPS
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"cookie", b"a=1")]}
    asyncio.run(middleware(dict(scope), None, send))  # the state is read and cached

    def refuse(*args: Any) -> Any:
        raise AssertionError("the Python path made the LazyVisitor")

    if SPEEDUPS:
        middleware._lazy = refuse
    asyncio.run(middleware(dict(scope), None, send))
    assert [type(lazy) for lazy in seen] == [LazyVisitor, LazyVisitor]


def _wrapper(send: Any) -> str | None:
    """The name of the send wrapper an app was given. The C path gives a quiet state's
    app the request's ``Call`` itself, which does what ``send_quiet`` does."""
    if type(send).__name__ == "Call":
        return "send_quiet"
    return getattr(send, "__name__", None)


def _run(
    kind: type[TrackingMiddleware], tracker: Tracker, scope: dict[str, Any]
) -> tuple[Any, ...]:
    """What the app saw (its visitor's state, the send wrapper) and what was sent."""
    import asyncio

    seen: list[Any] = []
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        lazy = scope.get("trackmw")
        seen.append((None if lazy is None else lazy._state, _wrapper(send)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(kind(app, tracker)(scope, None, send))
    start = sent[0]
    headers = [(k, v) for k, v in start["headers"] if k != b"set-cookie"]
    cookies = [v.split(b"=")[0] for k, v in start["headers"] if k == b"set-cookie"]
    return tuple(seen), start["status"], headers, cookies


@needs_speedups
@settings(max_examples=150, deadline=None)
@given(
    path=st.sampled_from(
        ["/", "/a", "/static/x", "/staticky", "/_trackmw/consent", "/_trackmw/pixel.gif"]
    ),
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"cookie", b"dnt", b"sec-gpc", b"host", b"user-agent", b"purpose"]),
            st.sampled_from(["none", "returning", "rejected", "garbage", "one"]),
        ),
        max_size=5,
    ),
)
def test_both_ways_through_the_middleware_decide_the_same(
    lookup_tracker: Any, path: str, headers: list[tuple[bytes, str]]
) -> None:
    from tests.core.harness import PurePythonMiddleware

    values = {
        "none": b"",
        "returning": _cached_cookie(lookup_tracker, T0 + 3600).replace(b"a=1; ", b""),
        "rejected": b"trackmw_consent=garbage",
        "garbage": b"trackmw_id=garbage",
        "one": b"1",
    }
    raw = [(name, values[value]) for name, value in headers]
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "query_string": b"p=%2Fa&r=https%3A%2F%2Fexample.org%2F",
        "headers": raw,
    }
    from unittest import mock

    buffer = lookup_tracker.core.pipeline._buffer

    def run(kind: type[TrackingMiddleware]) -> tuple[Any, ...]:
        buffer.clear()
        result = _run(kind, lookup_tracker, dict(scope))
        hits = [hit._replace(ts=0) for hit in buffer if hasattr(hit, "_replace")]
        # A new visitor's id is new each time: only whether the hit has one is compared.
        return *result, [
            h if h.visitor_id in (None, "v" * 22) else h._replace(visitor_id="new") for h in hits
        ]

    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        first = run(PurePythonMiddleware)  # reads the state and caches it
        assert run(TrackingMiddleware) == first
        assert run(PurePythonMiddleware) == first
    assert first[0] or not path.startswith("/a")  # a tracked page reached the app


# -- cookies added to a response: the C copy against the Python one ------------------------

HEADER_NAMES = [b"content-type", b"vary", b"Vary", b"VARY", b"cache-control", b"Cache-Control",
                b"x-vary", b"set-cookie", b"varies"]


def _python_add_headers(message: dict[str, Any], cookies: list[str]) -> dict[str, Any]:
    from trackmw import asgi

    copy = dict(message)
    copy["headers"] = asgi._with_cookies(copy.get("headers", []), cookies)
    return copy


@needs_speedups
@settings(max_examples=400, deadline=None)
@given(
    headers=st.one_of(
        st.none(),
        st.lists(
            st.tuples(
                st.sampled_from(HEADER_NAMES),
                st.sampled_from(["tuple", "tuple", "tuple", "list", "str-value"]),
            ),
            max_size=4,
        ),
    ),
    cookies=st.lists(st.sampled_from(["a=1; Path=/", "b=é", "c=€", ""]), max_size=3),
)
def test_the_c_cookie_headers_are_the_python_ones(
    headers: list[Any] | None, cookies: list[str]
) -> None:
    from trackmw import _speedups, asgi

    message: dict[str, Any] = {"type": "http.response.start", "status": 200}
    if headers is not None:
        raw: list[Any] = []
        for name, shape in headers:
            if shape == "list":
                raw.append([name, b"v"])
            elif shape == "str-value":
                raw.append((name, "v"))
            else:
                raw.append((name, b"v"))
        message["headers"] = raw
    before = repr(message)

    def outcome(add: Callable[[], Any]) -> Any:
        try:
            return add()
        except Exception as exc:  # the Python path's own errors, e.g. a str header value
            return type(exc)

    expected = outcome(lambda: _python_add_headers(message, cookies))
    found = outcome(lambda: _speedups.add_cookies(message, asgi._PRIVATE_RAW, cookies))
    assert repr(message) == before  # the app's message is never changed
    raw = message.get("headers", [])
    shapes_known = all(type(h) is tuple and type(h[1]) is bytes for h in raw)
    cache_named = any(bytes(h[0]).lower() in (b"vary", b"cache-control") for h in raw)
    if not shapes_known or cache_named:
        assert found is None  # left to the Python path
    else:
        assert found == expected
    assert outcome(lambda: asgi._add_headers(message, cookies)) == expected


# -- the middleware's call in C (Entry): the app's awaitable awaited by a Guard -------------


def _returning_scope(tracker: Tracker) -> dict[str, Any]:
    """A page request whose cookie state is cached, as the C path takes it."""
    tracker.core.request_state(b"a=1", None, None, T0)
    return {"type": "http", "method": "GET", "scheme": "http", "path": "/",
            "headers": [(b"cookie", b"a=1")]}


async def _discard(message: Any) -> None:
    return None


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    """An app answering 200 with an empty body."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@needs_speedups
@pytest.mark.parametrize(
    ("quiet", "fresh", "wrapper"),
    [(True, False, "send_quiet"), (False, True, "send_fresh"), (False, False, "send_full"),
     (1, 0, "send_quiet"), (0, 1, "send_fresh"), (0, 0, "send_full"), ([], "yes", "send_fresh")],
)
def test_the_c_path_picks_the_send_wrapper_the_state_calls_for(
    make_tracker: Callable[..., Tracker], quiet: Any, fresh: Any, wrapper: str
) -> None:
    """The C path reads a cookie state's ``quiet`` and ``fresh`` from their slots when
    they are bools, and by their truth otherwise, as the Python path does."""
    import asyncio

    tracker = make_tracker()
    picked: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        picked.append(_wrapper(send))
        await _ok_app(scope, receive, send)

    scope = _returning_scope(tracker)
    state = tracker.core.reader.states[b"a=1"][2]
    state.quiet, state.fresh = quiet, fresh
    middleware = TrackingMiddleware(app, tracker)
    call = middleware(dict(scope), None, _discard)
    assert type(call).__name__ == "Call"
    asyncio.run(_await(call))
    asyncio.run(_pure()(app, tracker)(dict(scope), None, _discard))
    assert picked == [wrapper, wrapper]


def test_the_middleware_is_an_asgi3_app_to_servers_that_inspect_it(
    make_tracker: Callable[..., Tracker],
) -> None:
    """uvicorn and Starlette tell ASGI 3 from 2 by asking whether ``app.__call__`` is
    a coroutine function: with ``__call__`` in C, it must still say so."""
    import asyncio
    import inspect

    import uvicorn

    middleware = TrackingMiddleware(_middleware(make_tracker()).app, make_tracker())
    assert inspect.iscoroutinefunction(middleware.__call__)
    assert asyncio.iscoroutinefunction(middleware.__call__)
    assert inspect.iscoroutinefunction(TrackingMiddleware.__call__)
    config = uvicorn.Config(middleware, lifespan="off")
    config.load()
    assert config.interface == "asgi3"


@needs_speedups
def test_a_quiet_states_send_is_the_requests_call(make_tracker: Callable[..., Tracker]) -> None:
    """For a quiet state the C path gives the app the request's ``Call`` as its send
    (one object a request less than a bound ``send_quiet``), which does what
    ``send_quiet`` does: messages pass on as they are until the app reads its visitor,
    then go through ``send_full``, which adds the cookies the app's changes call for.
    It takes one message, and once the request is over a send raises, as the Python
    path's does."""
    import asyncio
    import time

    tracker = make_tracker(secret_keys=["s" * 32], cookie_max_age=3600)
    seen: list[Any] = []
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, app_send: Any) -> None:
        seen.append(app_send)
        start = {"type": "http.response.start", "status": 200, "headers": []}
        if scope["path"] == "/reject":
            scope["trackmw"]().reject()
        await app_send(start)
        await app_send({"type": "http.response.body", "body": b"ok"})

    middleware = TrackingMiddleware(app, tracker)
    scope = {"type": "http", "method": "GET", "scheme": "http", "path": "/",
             "headers": [(b"cookie", _cookie(tracker, time.time() - 60))]}
    asyncio.run(middleware(dict(scope), None, send))  # the Python path caches the state
    sent.clear()
    call = middleware(dict(scope), None, send)
    assert type(call).__name__ == "Call"
    asyncio.run(_await(call))
    assert seen[-1] is call
    assert sent[0] == {"type": "http.response.start", "status": 200, "headers": []}
    with pytest.raises(RuntimeError, match="the response is over"):
        call({"type": "http.response.body", "body": b"late"})
    with pytest.raises(TypeError, match="exactly one argument"):
        call()
    with pytest.raises(TypeError, match="exactly one argument"):
        call(message={})

    sent.clear()
    call = middleware({**scope, "path": "/reject"}, None, send)
    assert type(call).__name__ == "Call"
    asyncio.run(_await(call))
    assert seen[-1] is call
    cookies = [v for k, v in sent[0]["headers"] if k == b"set-cookie"]
    assert any(v.startswith(b"trackmw_consent=") for v in cookies)


@needs_speedups
def test_a_patched_send_quiet_is_the_apps_send_as_in_python(
    make_tracker: Callable[..., Tracker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request's ``Call`` stands in for ``send_quiet`` only while that is
    ``LazyBase``'s own: patched on the class (or overridden in the class the middleware
    makes), the app gets the patched method, as on the Python path."""
    import asyncio

    tracker = make_tracker()
    scope = _returning_scope(tracker)
    state = tracker.core.reader.states[b"a=1"][2]
    state.quiet, state.fresh = True, False
    seen: list[Any] = []
    patched: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(send)
        await _ok_app(scope, receive, send)

    def send_quiet(self: Any, message: Any) -> Any:
        patched.append(message["type"])
        return self._send(message)

    middleware = TrackingMiddleware(app, tracker)
    with monkeypatch.context() as patch:
        patch.setattr(LazyVisitor, "send_quiet", send_quiet)
        call = middleware(dict(scope), None, _discard)
        assert type(call).__name__ == "Call"
        asyncio.run(_await(call))
        assert seen[-1] is not call and seen[-1].__func__ is send_quiet
        assert patched == ["http.response.start", "http.response.body"]
    call = middleware(dict(scope), None, _discard)
    asyncio.run(_await(call))
    assert seen[-1] is call and len(patched) == 2


@needs_speedups
def test_an_app_cannot_drive_its_send_before_the_middleware_returns(
    make_tracker: Callable[..., Tracker],
) -> None:
    """The ``Call`` an app gets as its send is the middleware's awaitable, made before
    the app is called: an app that drives it (``send``, ``throw``, ``close``) from its
    synchronous call is refused, as a running coroutine refuses, and the request goes
    on."""
    import asyncio

    tracker = make_tracker()
    scope = _returning_scope(tracker)
    state = tracker.core.reader.states[b"a=1"][2]
    state.quiet, state.fresh = True, False
    refused: list[str] = []

    def app(scope: Any, receive: Any, send: Any) -> Any:
        for drive in (lambda: send.send(None), lambda: send.throw(ValueError), send.close):
            try:
                drive()
            except ValueError as exc:
                refused.append(str(exc))
        return _ok_app(scope, receive, send)

    sent: list[Any] = []

    async def record(message: Any) -> None:
        sent.append(message["type"])

    call = TrackingMiddleware(app, tracker)(dict(scope), None, record)
    assert type(call).__name__ == "Call"
    assert refused == ["trackmw call already executing"] * 3
    asyncio.run(_await(call))
    assert sent == ["http.response.start", "http.response.body"]


@needs_speedups
def test_the_c_paths_read_the_clock_time_time_reads(
    make_tracker: Callable[..., Tracker],
) -> None:
    """Unpatched, ``trackmw.asgi._time`` is ``time.time``, whose clock the C paths read
    themselves rather than call it: a cached state is taken only within its window, and
    a beacon's hit has the time ``time.time`` gives. (The tests that patch ``_time``
    check that another clock is called.)"""
    import asyncio
    import time

    from trackmw import asgi

    assert asgi._time is time.time
    tracker = make_tracker()
    scope = _returning_scope(tracker)
    state = tracker.core.reader.states[b"a=1"][2]
    middleware = TrackingMiddleware(_ok_app, tracker)

    def taken(since: float, until: float) -> bool:
        now = time.time()
        for key in (b"a=1", state_key(b"a=1")):  # the header's entry, and its cookies'
            tracker.core.reader.states[key] = (now + since, now + until, state)
        call = middleware(dict(scope), None, _discard)
        asyncio.run(_await(call))
        return type(call).__name__ == "Call"

    assert taken(-60, 60)
    assert not taken(60, 120)
    assert not taken(-120, -60)

    tracker = make_tracker(secret_keys=["s" * 32], cookie_max_age=3600)
    middleware = TrackingMiddleware(_middleware(tracker).app, tracker)
    beacon = {**_pixel_scope(tracker), "headers": [
        (b"host", b"example.org"), (b"user-agent", b"Mozilla/5.0 test"),
        (b"cookie", _cookie(tracker, time.time() - 60))]}
    asyncio.run(middleware(dict(beacon), None, _discard))  # the Python path fills the caches
    buffer = tracker.core.pipeline._buffer
    buffer.clear()
    before = time.time()
    call = middleware(dict(beacon), None, _discard)
    after = time.time()
    assert type(call).__name__ == "Call" and len(buffer) == 1
    assert before <= buffer[0].ts <= after
    asyncio.run(_await(call))


@needs_speedups
@pytest.mark.parametrize("ending", ["returns", "raises", "cancelled", "thrown", "closed"])
def test_the_visitor_is_let_go_however_the_request_ends(
    make_tracker: Callable[..., Tracker], ending: str
) -> None:
    """What the Python path's ``finally`` does, the Guard does: whatever ends the
    app's awaitable, the visitor drops its scope and send, and the ending passes
    through unchanged."""
    import asyncio

    from trackmw.asgi import _over

    tracker = make_tracker()
    seen: list[Any] = []

    class Caught(Exception):
        pass

    async def app(scope: Any, receive: Any, send: Any) -> str:
        seen.append(scope["trackmw"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if ending == "raises":
            raise ValueError("the app failed")
        if ending in ("cancelled", "closed", "thrown"):
            try:
                if ending == "cancelled":
                    await asyncio.sleep(3600)
                else:
                    await _Pause()
            except Caught:
                seen.append("caught")
            finally:
                seen.append("app's finally")
        await send({"type": "http.response.body", "body": b"ok"})
        return "the app's value"  # not ASGI's: the middleware returns None, as Python's

    middleware = TrackingMiddleware(app, tracker)
    scope = _returning_scope(tracker)
    call = middleware(dict(scope), None, _discard)
    assert type(call).__name__ == "Call"  # the C path took it

    async def drive() -> Any:
        task = asyncio.ensure_future(call)
        await asyncio.sleep(0)
        if ending == "cancelled":
            task.cancel()
        return await task

    async def awaiting() -> Any:
        return await call

    if ending in ("returns", "raises", "cancelled"):
        expected = {"returns": None, "raises": ValueError, "cancelled": asyncio.CancelledError}
        with pytest.raises(expected[ending]) if expected[ending] else _no_error():  # type: ignore[attr-defined]
            assert asyncio.run(drive()) is None
    else:  # driven by hand, as an event loop drives a task's coroutine
        coro = awaiting()
        coro.send(None)  # to the app's sleep
        if ending == "thrown":
            with pytest.raises(StopIteration) as stop:
                coro.throw(Caught())
            assert stop.value.value is None and "caught" in seen
        else:
            coro.close()
    lazy = seen[0]
    assert lazy._scope is None and lazy._send is _over
    if ending not in ("returns", "raises"):
        assert "app's finally" in seen


class _Pause:
    """An awaitable that yields once, for a coroutine driven by hand."""

    def __await__(self) -> Any:
        yield "paused"


def _no_error() -> Any:
    import contextlib

    return contextlib.nullcontext()


@needs_speedups
def test_a_call_never_awaited_lets_its_visitor_go(make_tracker: Callable[..., Tracker]) -> None:
    import warnings

    tracker = make_tracker()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not run")

    middleware = TrackingMiddleware(app, tracker)
    scope = dict(_returning_scope(tracker))
    call = middleware(scope, None, _discard)
    seen.append(scope["trackmw"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the app's coroutine, never awaited
        del call
        gc.collect()
    assert seen[0]._scope is None


@needs_speedups
@pytest.mark.parametrize("awaitable", ["future", "custom", "none"])
def test_any_awaitable_the_app_returns_is_awaited_as_python_awaits_it(
    make_tracker: Callable[..., Tracker], awaitable: str
) -> None:
    """An app need not be a coroutine function; what it returns is awaited as
    ``await`` would, and a value that cannot be awaited raises the same TypeError."""
    import asyncio

    tracker = make_tracker()
    sent: list[Any] = []

    class Custom:
        def __await__(self) -> Any:
            yield from asyncio.sleep(0).__await__()
            sent.append("custom")

    def app(scope: Any, receive: Any, send: Any) -> Any:
        if awaitable == "future":
            future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.set_result, "x")
            return future
        return Custom() if awaitable == "custom" else None

    async def both() -> list[Any]:
        outcomes = []
        for kind in (TrackingMiddleware, _pure()):
            try:
                outcomes.append(await kind(app, tracker)(dict(scope), None, _discard))
            except TypeError as exc:
                outcomes.append(str(exc))
        return outcomes

    scope = _returning_scope(tracker)
    c, python = asyncio.run(both())
    assert c == python
    if awaitable == "none":
        assert "can't be used in 'await' expression" in c
    if awaitable == "custom":
        assert sent == ["custom", "custom"]


def _pure() -> type[TrackingMiddleware]:
    from tests.core.harness import PurePythonMiddleware

    return PurePythonMiddleware


@needs_speedups
def test_the_call_works_under_a_tracer(make_tracker: Callable[..., Tracker]) -> None:
    """Under ``sys.settrace`` (coverage, debuggers) CPython drives an awaited object
    through ``send`` and ``__next__`` rather than its C slot."""
    import asyncio

    tracker = make_tracker()
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: Any) -> None:
        sent.append(message["type"])

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return tracer

    middleware = TrackingMiddleware(app, tracker)
    scope = dict(_returning_scope(tracker))
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        assert asyncio.run(middleware(scope, None, send)) is None
    finally:
        sys.settrace(old)
    assert sent == ["http.response.start", "http.response.body"]
    assert scope["trackmw"]._scope is None


@needs_speedups
def test_the_call_is_awaited_as_a_coroutine_is(make_tracker: Callable[..., Tracker]) -> None:
    tracker = make_tracker()

    class Step:
        def __await__(self) -> Any:
            got = yield "first"
            assert got == "sent"
            return "done"

    async def app(scope: Any, receive: Any, send: Any) -> str:
        return await Step()

    middleware = TrackingMiddleware(app, tracker)
    guard = middleware(dict(_returning_scope(tracker)), None, _discard)
    assert guard.__await__() is guard and iter(guard) is guard
    assert next(guard) == "first"
    with pytest.raises(StopIteration) as stop:
        guard.send("sent")
    assert stop.value.value is None
    with pytest.raises(RuntimeError, match="already awaited"):
        next(guard)
    guard.close()  # done already: nothing to do
    with pytest.raises(RuntimeError, match="cannot reuse already awaited"):
        guard.throw(KeyError("after the end"))  # as a finished coroutine answers
    with pytest.raises(TypeError):
        guard.throw()
    fresh = middleware(dict(_returning_scope(tracker)), None, _discard)
    with pytest.raises(TypeError, match="just-started"):
        fresh.send("a value before the start")
    fresh.close()


@needs_speedups
def test_an_error_of_the_c_path_is_logged_and_python_takes_the_request(
    make_tracker: Callable[..., Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    """A cached state's key whose comparison raises: the C lookup fails, which is
    logged, and the Python path serves the page (untracked, since its lookup fails
    the same way, and says so)."""
    import asyncio

    tracker = make_tracker()
    served: list[Any] = []

    class Clash:
        def __hash__(self) -> int:
            return hash(state_key(b"a=1"))  # the cache's key for the header

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        served.append(scope.get("trackmw"))
        await send({"type": "http.response.start", "status": 200, "headers": []})

    tracker.core.reader.states.clear()
    tracker.core.reader.states[Clash()] = (0.0, 1e20, None)  # type: ignore[index]
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"cookie", b"a=1")]}
    with caplog.at_level("ERROR", logger="trackmw"):
        asyncio.run(TrackingMiddleware(app, tracker)(scope, None, _discard))
    assert served == [None]
    messages = [r.getMessage() for r in caplog.records]
    assert "trackmw: the middleware's C path failed" in messages
    assert any("serving the page untracked" in m for m in messages)


@needs_speedups
def test_the_c_call_holds_no_reference_after_the_request(
    make_tracker: Callable[..., Tracker],
) -> None:
    import asyncio

    tracker = make_tracker()

    app = _ok_app

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError

    middleware, broken = TrackingMiddleware(app, tracker), TrackingMiddleware(failing, tracker)
    scope = _returning_scope(tracker)
    plan = middleware._plan
    watched = (middleware, plan, app, failing, _discard, tracker.core)

    async def many() -> None:
        for _ in range(1000):
            await middleware(dict(scope), None, _discard)
            with pytest.raises(ValueError):
                await broken(dict(scope), None, _discard)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(many())
        gc.collect()
        before = [sys.getrefcount(x) for x in watched]
        loop.run_until_complete(many())
        gc.collect()
        assert [sys.getrefcount(x) for x in watched] == before
    finally:
        loop.close()


def test_the_plan_takes_only_a_lazy_visitor_class(make_tracker: Callable[..., Tracker]) -> None:
    if not SPEEDUPS:
        pytest.skip("trackmw._speedups is not built here")
    from trackmw import _speedups

    core = make_tracker().core
    with pytest.raises(TypeError, match="LazyBase"):
        _speedups.Plan(print, (), {}, core, PyLazyVisitor, True, {}, print, print, "/p", None,
                       {}, {})
    with pytest.raises(TypeError):
        _speedups.Entry(print, print)
    with pytest.raises(TypeError):
        _speedups.Entry(1)


@needs_speedups
def test_the_first_call_settles_once_then_reads_the_plan_again(
    make_tracker: Callable[..., Tracker],
) -> None:
    """A plan's ``settle`` runs at the first call only, before anything else; that call
    goes on with the plan it came with, and later calls take the plan ``settle`` left
    (here, one calling another app)."""
    import asyncio

    tracker = make_tracker()
    calls: list[Any] = []

    async def first(scope: Any, receive: Any, send: Any) -> None:
        calls.append("first app")
        await _ok_app(scope, receive, send)

    async def other(scope: Any, receive: Any, send: Any) -> None:
        calls.append("other app")
        await _ok_app(scope, receive, send)

    def settle(middleware: Any, scope: Any) -> None:
        calls.append(("settle", scope["path"], middleware._plan.app))
        middleware._plan = middleware._make_plan(None, other)

    middleware = TrackingMiddleware(first, tracker)
    middleware._plan = middleware._make_plan(settle)
    scope = _returning_scope(tracker)
    for _ in range(3):
        call = middleware(dict(scope), None, _discard)
        assert type(call).__name__ == "Call"  # the C path took it
        asyncio.run(call)
    assert calls == [("settle", "/", first), "first app", "other app", "other app"]

    def failing(middleware: Any, scope: Any) -> None:
        raise KeyboardInterrupt

    broken = TrackingMiddleware(_ok_app, tracker)
    broken._plan = broken._make_plan(failing)
    with pytest.raises(KeyboardInterrupt):  # (trackmw's own settle never raises)
        broken(dict(scope), None, _discard)
    asyncio.run(broken(dict(scope), None, _discard))  # settled: it is not called again
    with pytest.raises(TypeError, match="settle"):
        middleware._make_plan(1)


# -- the beacon answered in C (Entry and Sends) ----------------------------------------------


def _pixel_scope(tracker: Tracker) -> dict[str, Any]:
    """A returning visitor's beacon (``tracker`` has the ``lookup_tracker``'s key)."""
    return {"type": "http", "method": "GET", "scheme": "http", "path": "/_trackmw/pixel.gif",
            "query_string": b"p=%2Fa", "headers": [
                (b"host", b"example.org"), (b"user-agent", b"Mozilla/5.0 test"),
                (b"cookie", _cached_cookie(tracker, T0 + 3600))]}


@needs_speedups
@pytest.mark.parametrize("limited", [False, True])
def test_a_returning_visitors_beacon_is_answered_in_c(
    make_tracker: Callable[..., Tracker], limited: bool
) -> None:
    """Once the Python path has filled the caches, the middleware's call counts the
    hit and sends the GIF itself, with fresh messages each time (middleware around
    this one may edit them in place)."""
    import asyncio
    from unittest import mock

    from trackmw.asgi import _PIXEL_RAW
    from trackmw.pixel import GIF

    tracker = make_tracker(
        secret_keys=["s" * 32], cookie_max_age=3600, pixel_rate_limit=1 if limited else 100,
        pixel_rate_limit_status=429,
    )
    middleware = TrackingMiddleware(_middleware(tracker).app, tracker)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = _pixel_scope(tracker)
    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        asyncio.run(middleware(dict(scope), None, send))  # the Python path fills the caches
        calls = [middleware(dict(scope), None, send) for _ in range(2)]
        assert [type(c).__name__ for c in calls] == ["Call", "Call"]
        for call in calls:
            assert asyncio.run(_await(call)) is None
    starts, bodies = sent[0::2], sent[1::2]
    assert [s["status"] for s in starts] == ([200, 429, 429] if limited else [200, 200, 200])
    assert all(s["headers"] == list(_PIXEL_RAW) for s in starts)
    assert len({id(s) for s in starts}) == len({id(s["headers"]) for s in starts}) == 3
    assert bodies == [{"type": "http.response.body", "body": GIF}] * 3
    assert len({id(b) for b in bodies}) == 3
    hits = list(tracker.core.pipeline._buffer)
    assert len(hits) == (1 if limited else 3) and hits[-1].page == "/a"


async def _await(awaitable: Any) -> Any:
    return await awaitable


@needs_speedups
@pytest.mark.parametrize("fault", ["send raises", "send not awaitable", "thrown", "closed",
                                   "thrown and caught"])
def test_the_beacons_sends_end_as_pythons_awaits_would(
    make_tracker: Callable[..., Tracker], fault: str
) -> None:
    from unittest import mock

    tracker = make_tracker(secret_keys=["s" * 32], cookie_max_age=3600)
    middleware = TrackingMiddleware(_middleware(tracker).app, tracker)
    sent: list[Any] = []

    class Caught(Exception):
        pass

    async def send(message: Any) -> None:
        sent.append(message["type"])
        if fault == "send raises":
            raise ConnectionError("gone")
        if fault.startswith("thrown") or fault == "closed":
            try:
                await _Pause()
            except Caught:
                if fault == "thrown":
                    raise
                sent.append("caught")

    def plain_send(message: Any) -> None:
        sent.append(message["type"])

    scope = _pixel_scope(tracker)
    outcomes: list[list[str]] = []
    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        for kind in (_pure(), TrackingMiddleware):  # the first fills the caches
            sent.clear()
            chosen = plain_send if fault == "send not awaitable" else send
            call = kind(middleware.app, tracker)(dict(scope), None, chosen)
            coro = _await(call)
            if fault == "send raises":
                with pytest.raises(ConnectionError):
                    coro.send(None)
            elif fault == "send not awaitable":
                with pytest.raises(TypeError, match="await"):
                    coro.send(None)
            else:
                assert coro.send(None) == "paused"
                if fault == "closed":
                    coro.close()
                elif fault == "thrown":
                    with pytest.raises(Caught):
                        coro.throw(Caught())
                else:  # caught: the body is sent next, and paused on in turn
                    assert coro.throw(Caught()) == "paused"
                    assert sent[-1] == "http.response.body"
                    with pytest.raises(StopIteration):
                        coro.throw(Caught())
            outcomes.append(list(sent))
            assert type(call).__name__ == ("Call" if kind is TrackingMiddleware else "coroutine")
    assert outcomes[0] == outcomes[1]  # the Python path's messages, then the C path's


# -- the rate limit and the buffer, as the beacon's count in C makes them -------------------


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    limit=st.sampled_from([0, 1, 2, 3]),
    max_keys=st.sampled_from([1, 2, 100]),
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from([0.0, 1.0, 59.9, 60.0, 61.0,
                                                                   -30.0, 125.0])),
        max_size=12,
    ),
)
def test_the_c_rate_limit_counts_as_allow_counts(
    limit: int, max_keys: int, steps: list[tuple[str, float]]
) -> None:
    from trackmw import _speedups
    from trackmw.ratelimit import RateLimiter

    python, c = RateLimiter(limit, max_keys), RateLimiter(limit, max_keys)
    for key, offset in steps:
        now = T0 + offset
        assert _speedups.allow(c, key, now) is python.allow(key, now)
        assert (c._counts, c._since, c._until) == (python._counts, python._since, python._until)


@needs_speedups
def test_the_c_rate_limit_leaves_a_subclass_and_odd_values_to_allow() -> None:
    from trackmw import _speedups
    from trackmw.ratelimit import RateLimiter

    class Always(RateLimiter):
        def allow(self, key: str, now: float | None = None) -> bool:
            return True

    limiter = Always(1)
    limiter.allow("a", T0)
    assert all(_speedups.allow(limiter, "a", T0) for _ in range(3))
    odd = RateLimiter(1)
    odd.allow("a", T0)
    odd._counts = {"a": 2**70}  # not a C long: allow decides
    assert _speedups.allow(odd, "a", T0) is False and odd._counts["a"] == 2**70 + 1
    odd.limit = "1"  # type: ignore[assignment]
    with pytest.raises(TypeError):
        _speedups.allow(odd, "a", T0)  # as allow itself raises


@needs_speedups
@pytest.mark.parametrize("started", [False, True])
def test_the_c_add_buffers_as_add_buffers(started: bool) -> None:
    """In C only while the writer runs and the item neither fills a batch (its wake-up)
    nor overflows the buffer: otherwise Pipeline.add does all it does."""
    from trackmw import _speedups
    from trackmw.pipeline import Pipeline
    from trackmw.stores.memory import MemoryStore

    pipelines = [
        Pipeline(lambda: MemoryStore("memory://"), batch_size=3, flush_interval=3600,
                 buffer_size=5)
        for _ in "pc"
    ]
    python, c = pipelines
    for p in pipelines:  # no writer thread: it would take from the buffer meanwhile
        p._start = lambda p=p: setattr(p, "_thread", "running")  # type: ignore[method-assign]
        if started:
            p._start()
    try:
        for i in range(9):
            python.add(i)  # type: ignore[arg-type]
            _speedups.add(c, i)  # type: ignore[arg-type]
            assert list(c._buffer) == list(python._buffer)
            assert (c.dropped, c._wake.is_set()) == (python.dropped, python._wake.is_set())
            assert (c._thread is None) == (python._thread is None)
            for p in pipelines:
                p._wake.clear()
    finally:
        for p in pipelines:
            p._buffer.clear()
            if p._thread == "running":
                p._thread = None
            p.close()


@needs_speedups
@pytest.mark.parametrize("method", ["close", "send", "throw"])
@pytest.mark.parametrize("path", ["page", "pixel"])
def test_the_call_refuses_to_be_driven_while_it_runs(
    make_tracker: Callable[..., Tracker], method: str, path: str
) -> None:
    """A server's send that drives the awaitable it is called from gets the error a
    running coroutine gives (found by review: it freed the running coroutine)."""
    import asyncio
    from unittest import mock

    tracker = make_tracker(secret_keys=["s" * 32], cookie_max_age=3600)
    errors: list[str] = []
    holder: dict[str, Any] = {}

    app = _ok_app

    async def send(message: Any) -> None:
        call = holder["call"]
        try:
            if method == "throw":
                call.throw(KeyError("re-entered"))
            else:
                getattr(call, method)(None) if method == "send" else call.close()
        except ValueError as exc:
            errors.append(str(exc))

    scope = _returning_scope(tracker) if path == "page" else _pixel_scope(tracker)
    middleware = TrackingMiddleware(app, tracker)
    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        if path == "pixel":
            _pure()(app, tracker)._quick_pixel(dict(scope))  # fills the caches
        holder["call"] = middleware(dict(scope), None, send)
        assert type(holder["call"]).__name__ == "Call"
        asyncio.run(_await(holder["call"]))
    assert errors == ["trackmw call already executing"] * 2


@needs_speedups
def test_an_interrupt_in_the_c_path_propagates(make_tracker: Callable[..., Tracker]) -> None:
    """Only an Exception is logged and left to the Python path, as its ``except
    Exception`` would; a KeyboardInterrupt goes through (found by review)."""
    import asyncio
    from unittest import mock

    tracker = make_tracker(secret_keys=["s" * 32], cookie_max_age=3600)
    middleware = TrackingMiddleware(_middleware(tracker).app, tracker)
    scope = _pixel_scope(tracker)

    from trackmw.ratelimit import RateLimiter

    real, interrupted = RateLimiter.allow, []

    def allow(self: RateLimiter, key: str, now: float | None = None) -> bool:
        if not interrupted:  # once: the Python path would not raise it
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(self, key, now)

    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        _pure()(middleware.app, tracker)._quick_pixel(dict(scope))  # fills the caches
        with mock.patch.object(RateLimiter, "allow", allow), pytest.raises(KeyboardInterrupt):
            asyncio.run(_await(middleware(dict(scope), None, _discard)))
    assert interrupted


@needs_speedups
def test_a_dropped_call_closes_the_app_before_letting_the_visitor_go(
    make_tracker: Callable[..., Tracker],
) -> None:
    """A request's awaitable dropped mid-way (its task gone) is closed as a coroutine
    is finalized: the app's ``finally`` still has its visitor (found by review)."""
    tracker = make_tracker()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await _Pause()
        finally:
            lazy = scope["trackmw"]
            seen.append((lazy._scope is scope, lazy._send is not None))

    scope = dict(_returning_scope(tracker))
    call = TrackingMiddleware(app, tracker)(scope, None, _discard)
    assert call.send(None) == "paused"
    del call  # not closed: finalized
    gc.collect()
    assert seen == [(True, True)]
    assert scope["trackmw"]._scope is None


@needs_speedups
def test_a_generator_based_coroutine_app_is_awaited(make_tracker: Callable[..., Tracker]) -> None:
    import asyncio
    import types

    tracker = make_tracker()
    sent: list[Any] = []

    @types.coroutine
    def app(scope: Any, receive: Any, send: Any) -> Any:
        yield from send({"type": "http.response.start", "status": 200, "headers": []}).__await__()

    async def send(message: Any) -> None:
        sent.append(message["status"])

    asyncio.run(_await(TrackingMiddleware(app, tracker)(_returning_scope(tracker), None, send)))
    assert sent == [200]


@needs_speedups
def test_the_c_beacon_holds_what_it_reads_while_a_lookup_runs_code(beacon_tracker: Any) -> None:
    """A cached state's key whose ``__eq__`` empties the request's headers list while
    the C count looks the cookie up: the header values it goes on with must be its
    own references (found by review: they were borrowed from the list)."""
    from unittest import mock

    from trackmw import _speedups

    core = beacon_tracker.core
    cookie = _cached_cookie(beacon_tracker, T0 + 3600)

    def fresh_headers() -> list[tuple[bytes, bytes]]:  # values only this list holds
        return [(bytes(bytearray(name)), bytes(bytearray(value))) for name, value in (
            (b"host", b"example.org"), (b"user-agent", b"Mozilla/5.0 test"), (b"cookie", cookie)
        )]

    scope = {"type": "http", "method": "GET", "path": "/_trackmw/pixel.gif",
             "query_string": b"p=%2Fa", "headers": fresh_headers()}
    python = PurePythonMiddleware(_middleware(beacon_tracker).app, beacon_tracker)
    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        python._quick_pixel(dict(scope))  # fills the caches
    headers = scope["headers"] = fresh_headers()
    states = core.reader.states
    entry = states.pop(cookie)

    class Clash:
        armed = False

        def __hash__(self) -> int:
            return hash(cookie)

        def __eq__(self, other: object) -> bool:
            if Clash.armed:
                Clash.armed = False
                headers.clear()
                [bytes(16) for _ in range(1000)]  # reuse what was freed
            return False

    try:
        states[Clash()] = entry  # type: ignore[index]
        states[cookie] = entry  # after the clash: a lookup compares with it first
        Clash.armed = True
        core.rate_limiter._counts = {}
        core.pipeline._buffer.clear()
        assert _speedups.beacon(scope, core.beacon_caches, core, T0 + 3650) == 200
        hit = core.pipeline._buffer[-1]
        assert (hit.user_agent, hit.host) == ("Mozilla/5.0 test", "example.org")
    finally:
        states.clear()


@needs_speedups
def test_the_c_tests_pass_under_the_debug_allocator() -> None:
    """This file again under CPython's debug allocator, which fills freed memory: a
    use of a freed object in the C code crashes there where it may pass unseen
    otherwise (as a review's reproduction of a borrowed reference did)."""
    if os.environ.get("TRACKMW_UNDER_DEBUG_ALLOCATOR"):
        pytest.skip("this is that run")
    env = {**os.environ, "PYTHONMALLOC": "debug", "TRACKMW_UNDER_DEBUG_ALLOCATOR": "1"}
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _both_outcomes(
    tracker: Tracker, scope: dict[str, Any], drive: Callable[[Any], Any]
) -> list[Any]:
    """``drive(call)`` for the Python path's call and then the C path's (the first
    fills the beacon's caches): what each gave or raised, as (type name, text)."""
    from unittest import mock

    outcomes = []
    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        for kind in (_pure(), TrackingMiddleware):
            send = drive.send  # type: ignore[attr-defined]
            call = kind(_middleware(tracker).app, tracker)(dict(scope), None, send)
            try:
                outcomes.append(("returned", drive(call)))
            except BaseException as exc:  # the outcome is what is compared
                outcomes.append((type(exc).__name__, str(exc)))
            assert type(call).__name__ == ("Call" if kind is TrackingMiddleware else "coroutine")
    return outcomes


@needs_speedups
def test_a_stop_iteration_from_send_is_a_runtime_error_as_in_a_coroutine(
    make_tracker: Callable[..., Tracker],
) -> None:
    """PEP 479: a task driving the call must not take it for the call's return (found
    by review: an asyncio task driving it directly never completed)."""
    import asyncio

    tracker = make_tracker(secret_keys=["s" * 32], cookie_max_age=3600)

    def drive(call: Any) -> Any:  # the call itself as the task's coroutine
        return asyncio.run(asyncio.wait_for(call, 10))

    def send(message: Any) -> Any:
        raise StopIteration

    drive.send = send  # type: ignore[attr-defined]
    c = _both_outcomes(tracker, _pixel_scope(tracker), drive)
    assert c[0] == c[1] == ("RuntimeError", "coroutine raised StopIteration")


@needs_speedups
def test_a_throw_of_generator_exit_closes_as_in_a_coroutine(
    make_tracker: Callable[..., Tracker],
) -> None:
    tracker = make_tracker(secret_keys=["s" * 32], cookie_max_age=3600)

    async def send(message: Any) -> None:
        try:
            await _Pause()
        except GeneratorExit:
            await _Pause()  # ignores it

    def drive(call: Any) -> Any:  # by hand, as a task drives its coroutine
        call.send(None)
        try:
            return call.throw(GeneratorExit)
        finally:
            call.close()

    drive.send = send  # type: ignore[attr-defined]
    python, c = _both_outcomes(tracker, _pixel_scope(tracker), drive)
    assert python == c and "ignored GeneratorExit" in c[1]


@needs_speedups
def test_the_c_beacon_calls_allow_and_add_where_they_are_patched(
    make_tracker: Callable[..., Tracker],
) -> None:
    """The C mirrors of RateLimiter.allow and Pipeline.add stand aside for a method
    patched on the class or the instance, or overridden (found by review). The rate
    limiter has slots: its instances cannot be patched, so there is no such patch to
    miss."""
    import asyncio
    from unittest import mock

    from trackmw.pipeline import Pipeline
    from trackmw.ratelimit import RateLimiter

    tracker = make_tracker(secret_keys=["s" * 32], cookie_max_age=3600)
    middleware = TrackingMiddleware(_middleware(tracker).app, tracker)
    scope = _pixel_scope(tracker)
    core = tracker.core
    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        _pure()(middleware.app, tracker)._quick_pixel(dict(scope))  # fills the caches
        core.pipeline._thread = core.pipeline._thread or "running"  # type: ignore[assignment]
        with pytest.raises(AttributeError):
            mock.patch.object(core.rate_limiter, "allow", wraps=core.rate_limiter.allow).start()
        # One beacon unpatched first: the C code then knows the classes as they were
        # (class_own keeps that with their version tags), and must still see a patch.
        asyncio.run(_await(middleware(dict(scope), None, _discard)))
        targets = ((core.pipeline, "add"), (RateLimiter, "allow"), (Pipeline, "add"))
        for target, name in targets:
            real = getattr(target, name)
            patch = (  # on the class, a function that binds as the method does
                mock.patch.object(target, name, autospec=True, side_effect=real)
                if isinstance(target, type)
                else mock.patch.object(target, name, wraps=real)
            )
            with patch as patched:
                call = middleware(dict(scope), None, _discard)
                assert type(call).__name__ == "Call"
                asyncio.run(_await(call))
            assert patched.call_count == 1, (target, name)


@needs_speedups
def test_a_call_is_awaited_once_and_warns_when_never_awaited(
    make_tracker: Callable[..., Tracker],
) -> None:
    import asyncio
    import warnings

    tracker = make_tracker()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await _Pause()

    call = TrackingMiddleware(app, tracker)(_returning_scope(tracker), None, _discard)
    assert call.__qualname__ == "TrackingMiddleware.__call__"
    assert call.send(None) == "paused"
    with pytest.raises(RuntimeError, match="being awaited already"):
        call.__await__()
    call.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unawaited = TrackingMiddleware(app, tracker)(_returning_scope(tracker), None, _discard)
        del unawaited
        gc.collect()
    assert any("'TrackingMiddleware.__call__' was never awaited" in str(w.message)
               for w in caught)
    assert asyncio.iscoroutine(call)  # send, throw, close and __await__: asyncio's test


# -- the writer's normalize loop -----------------------------------------------------------

_AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/120.0 Safari/537.36", "Googlebot/2.1 (+http://www.google.com/bot.html)"]


class _Text(str):
    """A str subclass: not the C loop's common case."""


def _normalized_both_ways(items: list[Any], tz: str = "Europe/Paris") -> list[Any]:
    """``normalize_batch``'s page views, other items and failures, with the C loop and
    then without it, each from empty caches; both are returned."""
    from zoneinfo import ZoneInfo

    from trackmw import normalize
    from trackmw._ext import speedup

    outcomes = []
    for run in (normalize.speedup("normalize_run"), None):
        assert (run is None) == (outcomes != [])
        for cache in (normalize._fixed, normalize._pages, normalize._referrers):
            cache.clear()
        normalize.speedup = lambda name, run=run: run  # type: ignore[assignment]
        try:
            pageviews: list[Any] = []
            others: list[Any] = []
            failed: list[Any] = []
            normalize.normalize_batch(list(items), ZoneInfo(tz), pageviews, others,
                                      lambda item, exc, failed=failed: failed.append(
                                          (item, type(exc))))
            again: list[Any] = []  # and once more, from the caches the first pass filled
            normalize.normalize_batch(list(items), ZoneInfo(tz), again, [], lambda i, e: None)
        finally:
            normalize.speedup = speedup  # type: ignore[assignment]
        outcomes.append(([(type(pv), pv) for pv in pageviews], others, failed, again))
    return outcomes


@needs_speedups
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    # 53,999.5 and 54,000: the last half second of a day in Paris, and the next day
    st.sampled_from([T0, T0 + 0.5, T0 + 59.99, T0 + 60.0, T0 + 3600.25, T0 + 53_999.5,
                     T0 + 54_000.0, T0 - 86_400.0, 1e12, int(T0), "bad"]),
    st.sampled_from(["v" * 22, None, _Text("v" * 22)]),
    st.sampled_from([None, "u1"]),
    st.sampled_from(["/a", "/b?utm_campaign=x&y=1", _Text("/a"), "/" + "x" * 300]),
    st.sampled_from([None, "https://news.example/x", "https://example.org/in"]),
    st.sampled_from([None, "spring"]),
    st.sampled_from(_AGENTS),
    st.sampled_from(["example.org", "other.example"]),
    st.sampled_from(["hit", "subclass", "choice"]),
), max_size=20))
def test_the_c_normalize_loop_gives_what_the_python_loop_gives(items: list[Any]) -> None:
    from trackmw.events import ConsentChoice, Hit

    class Late(Hit):
        __slots__ = ()

    made = []
    for *fields, kind in items:
        if kind == "choice":
            made.append(ConsentChoice(T0, "2027-01-15", "v" * 22, True, False, "1"))
        else:
            made.append((Hit if kind == "hit" else Late)(*fields))
    with_c, without = _normalized_both_ways(made)
    assert with_c == without


@needs_speedups
def test_the_c_normalize_loop_takes_the_cached_hits_and_leaves_the_rest() -> None:
    from zoneinfo import ZoneInfo

    from trackmw import _speedups, normalize
    from trackmw.events import Hit, PageView

    tz = ZoneInfo("UTC")
    cached = Hit(T0, "v" * 22, None, "/a", None, None, _AGENTS[0], "example.org")
    bot = cached._replace(user_agent=_AGENTS[1], user_id="u1")
    normalize.normalize_batch([cached, bot], tz, [], [])  # fills the cache
    minute = T0 // 60 * 60
    items = [cached, bot, cached._replace(visitor_id=None), cached._replace(ts=T0 + 60),
             cached]
    views: list[Any] = []
    day = normalize.local_day(T0, tz)
    args = (normalize._fixed, minute, minute + 60, day, Hit, PageView, views)
    assert _speedups.normalize_run(items, 0, *args) == 3  # the next minute is Python's
    assert views == [PageView(T0, day, "v" * 22, None, "/a", None, None, "Chrome", "Linux",
                              "desktop", False),
                     PageView(T0, day, None, None, "/a", None, None, None, None, None, True),
                     PageView(T0, day, None, None, "/a", None, None, None, None, None, False)]
    assert all(type(v) is PageView for v in views)
    assert _speedups.normalize_run(items, 4, *args) == 5
    assert _speedups.normalize_run(tuple(items), 5, *args) == 5
    uncached = cached._replace(page="/not-yet")
    assert _speedups.normalize_run([uncached], 0, *args) == 0
    # Odd arguments: nothing done, Python decides.
    for odd in ([*args[:4], dict, *args[5:]], [*args[:5], list, views], [*args[:6], ()]):
        assert _speedups.normalize_run(items, 0, *odd) == 0
    # A hit type that is not a tuple's: left to Python, not read as one (found by review).
    assert _speedups.normalize_run([b"12345678"], 0, *args[:4], bytes, *args[5:]) == 0
    assert _speedups.normalize_run(iter(items), 0, *args) == 0
    assert _speedups.normalize_run(items, -5, *args) == 0
    with pytest.raises(TypeError):
        _speedups.normalize_run(items, 0, *args[:-1])


@needs_speedups
def test_the_c_normalize_loop_survives_a_key_that_runs_code() -> None:
    """A cached key whose ``__eq__`` empties the list of items and frees them while the
    C loop looks a hit up: it holds the hit it reads, and reads the list's size again.
    An Exception raised there leaves the hit to Python; a KeyboardInterrupt goes
    through."""
    from zoneinfo import ZoneInfo

    from trackmw import normalize
    from trackmw.events import Hit, PageView

    tz = ZoneInfo("UTC")
    text = "".join(["/", "fresh"])

    def items() -> list[Hit]:  # each hit alone holds its time, visitor id and page
        return [Hit(float(repr(T0 + i)), "".join(["v"] * 22), None, text + str(i), None, None,
                    _AGENTS[0], "example.org") for i in range(3)]

    normalize.normalize_batch(items(), tz, [], [])  # fills the cache
    key = (text + "1", None, None, _AGENTS[0], "example.org")
    fixed = normalize._fixed.pop(key)
    minute = T0 // 60 * 60

    class Clash:
        action: Any = staticmethod(lambda: None)

        def __hash__(self) -> int:
            return hash(key)

        def __eq__(self, other: object) -> bool:
            Clash.action()
            return False

    normalize._fixed[Clash()] = fixed  # type: ignore[index]
    normalize._fixed[key] = fixed  # after the clash: a lookup compares with it first
    try:
        batch = items()
        views: list[Any] = []
        Clash.action = staticmethod(lambda: (  # frees the hits, and reuses their memory
            batch.clear(), [float(i) for i in range(1000)], ["".join("x" * 22) for _ in "x" * 99]
        ))
        args = (normalize._fixed, minute, minute + 60, normalize.local_day(T0, tz), Hit,
                PageView, views)
        from trackmw import _speedups

        assert _speedups.normalize_run(batch, 0, *args) == 2  # the list is empty by then
        assert [(v.ts, v.visitor_id, v.path) for v in views] == [
            (T0, "v" * 22, "/fresh0"), (T0 + 1, "v" * 22, "/fresh1")]

        def fail() -> None:
            raise ValueError("from a key")

        Clash.action = staticmethod(fail)
        views.clear()
        assert _speedups.normalize_run(items(), 0, *args) == 1  # left to Python
        assert [v.path for v in views] == ["/fresh0"]

        def interrupt() -> None:
            raise KeyboardInterrupt

        Clash.action = staticmethod(interrupt)
        with pytest.raises(KeyboardInterrupt):
            _speedups.normalize_run(items(), 0, *args)
    finally:
        normalize._fixed.clear()


# -- the SQLite store's grouping ----------------------------------------------------------


def _grouped_both_ways(views: list[Any]) -> list[Any]:
    """``sqlite_pageviews.group`` of ``views`` with the C loop, then without it."""
    from trackmw._ext import speedup
    from trackmw.stores import sqlite_pageviews

    outcomes = []
    for run in (speedup("group_run"), None):
        assert (run is None) == (outcomes != [])
        sqlite_pageviews.speedup = lambda name, run=run: run  # type: ignore[assignment]
        try:
            groups = sqlite_pageviews.group(list(views))
        finally:
            sqlite_pageviews.speedup = speedup  # type: ignore[assignment]
        outcomes.append([(key, [(type(v), v) for v in found]) for key, found in groups.items()])
    return outcomes


@needs_speedups
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from([T0, T0 + 0.0005, T0 + 0.1234, 1e8, 1e8 - 0.5, 1e11, 1e11 - 1.0, 5.0,
                     int(T0), -1.0]),
    st.sampled_from(["2027-01-15", "2027-01-16", _Text("2027-01-15")]),
    st.sampled_from(["v" * 22, None, _Text("v" * 22)]),
    st.sampled_from([None, "u1"]),
    st.sampled_from(["/a", "/b", _Text("/a")]),
    st.sampled_from([None, "news.example"]),
    st.sampled_from([None, "spring"]),
    st.sampled_from([("Chrome", "Linux", "desktop"), (None, None, None),
                     (_Text("Chrome"), "Linux", "desktop")]),
    st.sampled_from([False, True, 0, 1]),
    st.sampled_from(["view", "subclass", "tuple"]),
), max_size=25))
def test_the_c_grouping_gives_what_the_python_grouping_gives(items: list[Any]) -> None:
    from trackmw.events import PageView

    class Late(PageView):
        __slots__ = ()

    views = []
    for ts, day, visitor, user, path, referrer, campaign, names, bot, kind in items:
        fields = (ts, day, visitor, user, path, referrer, campaign, *names, bot)
        views.append(tuple(fields) if kind == "tuple" else (
            PageView if kind == "view" else Late)(*fields))
    with_c, without = _grouped_both_ways(views)
    assert with_c == without


@needs_speedups
def test_the_c_grouping_takes_the_common_case_and_leaves_the_rest() -> None:
    from trackmw import _speedups
    from trackmw.events import PageView
    from trackmw.stores.sqlite_pageviews import _MS_FROM, _MS_TO

    view = PageView(T0 + 0.25, "2027-01-15", "v" * 22, None, "/a", None, None, "Chrome",
                    "Linux", "desktop", False)
    later = view._replace(ts=T0 + 1.5, path="/b", referrer="news.example")
    views = [view, later, view._replace(ts=int(T0)), view]
    groups: dict[Any, Any] = {}
    assert _speedups.group_run(views, 0, groups, PageView, _MS_FROM, _MS_TO) == 2
    key = ("2027-01-15", "v" * 22, None, "Chrome", "Linux", "desktop", False)
    assert groups == {key: [int((T0 + 0.25) * 1000), "/a", None, None,
                            int((T0 + 1.5) * 1000), "/b", "news.example", None]}
    assert _speedups.group_run(tuple(views), 3, groups, PageView, _MS_FROM, _MS_TO) == 4
    assert len(groups[key]) == 12
    groups[key] = "not a list"
    assert _speedups.group_run(views, 0, groups, PageView, _MS_FROM, _MS_TO) == 0
    for odd in ([views, 0, [], PageView], [iter(views), 0, {}, PageView], [views, 0, {}, tuple],
                [views, -3, {}, PageView]):
        assert _speedups.group_run(*odd, _MS_FROM, _MS_TO) == 0
    with pytest.raises(TypeError):
        _speedups.group_run(views, 0, {}, PageView, _MS_FROM)
    # A type that is not a tuple's: left to Python, not read as one (found by review).
    assert _speedups.group_run([{i: i for i in range(11)}], 0, {}, dict, _MS_FROM, _MS_TO) == 0
    assert _speedups.group_run(views, 0, {}, PageView, -1e20, _MS_TO) == 0  # ms past a C long


@needs_speedups
def test_the_c_grouping_adds_a_view_s_four_values_or_none() -> None:
    """An allocation failing after some of a view's four values are added to its group:
    they are taken out again, and the view left to Python (which adds all four)."""
    _testcapi = pytest.importorskip("_testcapi")
    from trackmw import _speedups
    from trackmw.events import PageView
    from trackmw.stores.sqlite_pageviews import _MS_FROM, _MS_TO

    view = PageView(T0, "2027-01-15", "v" * 22, None, "/a", None, None, None, None, None, False)
    key = ("2027-01-15", "v" * 22, None, None, None, None, False)
    outcomes = set()
    for failing in range(8):  # each allocation of the call in turn
        views = [0] * 4
        for value in (1, 2, 3):  # seven values, room for eight: the 2nd append reallocates
            views.append(value)
        groups = {key: views}
        args = ([view], 0, groups, PageView, _MS_FROM, _MS_TO)
        _testcapi.set_nomemory(failing, failing + 1)
        try:
            taken: int | None = _speedups.group_run(*args)
        except MemoryError:  # the call's own allocation, before the C loop
            taken = None
        finally:
            _testcapi.remove_mem_hooks()
        before = [0, 0, 0, 0, 1, 2, 3]
        assert (taken, views) in ((None, before), (0, before),
                                  (1, [*before, int(T0 * 1000), "/a", None, None]))
        outcomes.add(taken)
    assert {0, 1} <= outcomes


@needs_speedups
def test_the_c_grouping_survives_a_key_that_runs_code() -> None:
    """A group's key whose ``__eq__`` empties the list of views and frees them while
    the C loop looks a view's group up: it holds the view it reads, and reads the list's
    size again. An Exception raised there leaves the view to Python; a KeyboardInterrupt
    goes through."""
    from trackmw import _speedups
    from trackmw.events import PageView
    from trackmw.stores.sqlite_pageviews import _MS_FROM, _MS_TO

    day = "".join(["2027-", "01-15"])  # only the views hold it

    def views() -> list[PageView]:
        return [PageView(T0 + i, day + "", "v" * 22, None, "/p" + str(i), None, None, None,
                         None, None, bool(i == 1)) for i in range(3)]

    key = (day, "v" * 22, None, None, None, None, True)  # the second view's

    class Clash:
        action: Any = staticmethod(lambda: None)

        def __hash__(self) -> int:
            return hash(key)

        def __eq__(self, other: object) -> bool:
            Clash.action()
            return False

    batch = views()
    groups: dict[Any, Any] = {Clash(): []}
    Clash.action = staticmethod(lambda: (batch.clear(), [bytes(64) for _ in range(1000)]))
    assert _speedups.group_run(batch, 0, groups, PageView, _MS_FROM, _MS_TO) == 2
    assert [v[1] for k, v in groups.items() if type(k) is tuple] == ["/p0", "/p1"]

    def fail() -> None:
        raise ValueError("from a key")

    Clash.action = staticmethod(fail)
    groups = {Clash(): []}
    assert _speedups.group_run(views(), 0, groups, PageView, _MS_FROM, _MS_TO) == 1
    assert len(groups) == 2  # the clash and the first view's group

    def interrupt() -> None:
        raise KeyboardInterrupt

    Clash.action = staticmethod(interrupt)
    with pytest.raises(KeyboardInterrupt):
        _speedups.group_run(views(), 0, {Clash(): []}, PageView, _MS_FROM, _MS_TO)


# -- the stores' daily counts --------------------------------------------------------------


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["2027-01-15", "2027-01-16", _Text("2027-01-15")]),
    st.sampled_from(["v" * 22, None, _Text("v" * 22)]),
    st.sampled_from(["/a", "/b", "", _Text("/a")]),
    st.sampled_from([None, "news.example", "", _Text("news.example")]),
    st.sampled_from([None, "spring", "", _Text("spring")]),
    st.sampled_from([False, True, 0, 1]),
    st.sampled_from(["view", "subclass", "tuple"]),
), max_size=30), st.sampled_from([list, tuple, iter]))
def test_the_c_daily_counts_are_the_python_ones(items: list[Any], kind: Any) -> None:
    from trackmw.events import PageView
    from trackmw.stores import base

    class Late(PageView):
        __slots__ = ()

    views = []
    for day, visitor, path, referrer, campaign, bot, made in items:
        fields = (T0, day, visitor, None, path, referrer, campaign, "Chrome", None, None, bot)
        views.append(tuple(fields) if made == "tuple" else (
            PageView if made == "view" else Late)(*fields))
    with_c = base.daily_counts(kind(views))
    assert with_c == base._counted_in_python(views)
    assert with_c == Counter(key for v in views for key in base.daily_count_keys(PageView(*v)))
    assert all(n > 0 for n in with_c.values())


@needs_speedups
def test_the_c_daily_counts_take_the_common_case_and_leave_the_rest() -> None:
    from trackmw import _speedups
    from trackmw.events import PageView

    view = PageView(T0, "2027-01-15", None, None, "/a", "news.example", "", None, None, None,
                    False)
    bot = view._replace(bot=True, visitor_id="v")
    views = [view, bot, view._replace(bot=1), view]
    tallies: dict[str, Any] = {}
    assert _speedups.tally_run(views, 0, tallies, PageView) == 2
    assert tallies == {"2027-01-15": [1, 1, 1, {"/a": 1}, {"news.example": 1}, {}]}
    assert _speedups.tally_run(tuple(views), 3, tallies, PageView) == 4
    assert tallies == {"2027-01-15": [1, 2, 2, {"/a": 2}, {"news.example": 2}, {}]}
    for odd in ([views, 0, [], PageView], [iter(views), 0, {}, PageView], [views, -3, {}, PageView],
                [views, 0, {}, tuple], [views, 0, {"2027-01-15": [0] * 6}, PageView],
                [views, 0, {"2027-01-15": (0, 0, 0, {}, {}, {})}, PageView]):
        before = repr(odd[2])
        assert _speedups.tally_run(*odd) == 0  # nothing counted: Python decides
        assert repr(odd[2]) == before
    assert _speedups.tally_run([{i: i for i in range(11)}], 0, {}, dict) == 0
    for bad in ([0, 1.5, 0, {}, {}, {}], [0, 0, 0, {"/a": "x"}, {}, {}]):
        with pytest.raises(TypeError):  # not counts: an error, not a view counted twice
            _speedups.tally_run([view], 0, {"2027-01-15": bad}, PageView)
    with pytest.raises(TypeError):
        _speedups.tally_run(views, 0, {})


@needs_speedups
def test_the_c_daily_counts_hold_the_dicts_they_count_in() -> None:
    """A page already counted whose ``__eq__`` empties the day's tally, dropping its
    dicts, while the C loop counts a view's page in one of them."""
    from trackmw import _speedups
    from trackmw.events import PageView

    view = PageView(T0, "2027-01-15", None, None, "/p", "news.example", "spring", None, None,
                    None, False)
    armed = [True]

    class Clash:
        def __hash__(self) -> int:
            return hash("/p")

        def __eq__(self, other: object) -> bool:
            if armed:
                armed.clear()
                tally.clear()  # the dicts' last references but the loop's
                [{} for _ in range(1000)]
            return False

    tally = [0, 0, 0, {Clash(): 0}, {}, {}]
    tallies = {"2027-01-15": tally}
    assert _speedups.tally_run([view], 0, tallies, PageView) == 1
    assert tally == []  # counted in dicts nobody holds any more: no crash
    with pytest.raises(TypeError):  # the tally is no longer one: an error
        _speedups.tally_run([view], 0, {"2027-01-15": [0, "x", 0, {}, {}, {}]}, PageView)


@needs_speedups
@pytest.mark.parametrize("action", ["clear the views", "drop the tally", "empty the tally"])
def test_the_c_daily_counts_survive_a_key_that_runs_code(action: str) -> None:
    """A key already in the tallies whose ``__eq__`` frees the view being counted, or
    the day's tally, while the C loop looks the day up: it holds what it reads, and a
    tally that changed under it is an error, not a crash."""
    from trackmw import _speedups
    from trackmw.events import PageView

    day = "".join(["2027-", "01-15"])  # only the views and the tally hold it

    def views() -> list[PageView]:
        return [PageView(T0, day + "", "".join(["v"] * 22), None, "".join(["/p", str(i)]),
                         "".join(["news", ".example"]), None, None, None, None, False)
                for i in range(3)]

    batch = views()
    tallies: dict[Any, Any] = {}
    assert _speedups.tally_run(batch[:1], 0, tallies, PageView) == 1  # the day's tally

    armed = []

    class Clash:
        def __hash__(self) -> int:
            return hash(day)

        def __eq__(self, other: object) -> bool:
            if armed:  # once, and not for the lookups made here
                armed.clear()
                if action == "clear the views":
                    batch.clear()
                elif action == "drop the tally":
                    del tallies[day]
                else:
                    tally.clear()
                [bytes(64) for _ in range(1000)]  # reuse the memory freed
            return False

    tally = tallies.pop(day)
    tallies[Clash()] = [0, 0, 0, {}, {}, {}]
    tallies[day] = tally  # after the clash: a lookup of the day compares with it first
    armed.append(True)
    taken = _speedups.tally_run(batch, 0, tallies, PageView)
    if action == "empty the tally":  # no longer a tally's shape: left to Python
        assert taken == 0 and tally == []
        return
    if action == "clear the views":  # the first view counted, then the list was empty
        assert taken == 1 and tally[1] == 2 and tally[3] == {"/p0": 2}
    else:  # the first view's day found no tally (the clash dropped it): a new one
        assert taken == 3 and tally[1] == 1
        assert tallies[day][1] == 3 and tallies[day][3] == {"/p0": 1, "/p1": 1, "/p2": 1}


# -- the SQLite store's JSON of a group's page views -----------------------------------------

_VIEW_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([int(T0 * 1000), 0, -1, 2**63, -(2**63) - 1, 10**30]),  # past a C long
    st.text(max_size=12),  # quotes, backslashes, control characters, any code point
    st.sampled_from(["/a", "https://news.example/", "é", '"\\', "\x00\n", "\ud800"]),
)


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(st.lists(_VIEW_VALUES, max_size=30), st.booleans())
def test_the_c_json_of_page_views_is_what_json_writes(values: list[Any], warm: bool) -> None:
    import json
    from json.encoder import encode_basestring_ascii

    from trackmw import _speedups

    quoted: dict[str, str] = {}
    if warm:  # texts quoted by an earlier batch
        _speedups.views_json(list(values), encode_basestring_ascii, quoted)
    text = _speedups.views_json(values, encode_basestring_ascii, quoted)
    if any(type(v) is int and not -(2**63) <= v < 2**63 for v in values):
        assert text is None  # past a C long: json writes the list
    else:
        assert text == json.dumps(values)
        assert all(quoted[t] == json.dumps(t) for t in values if isinstance(t, str))


def test_the_texts_quoted_for_json_are_kept_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from trackmw import _json
    from trackmw.stores import sqlite_pageviews

    monkeypatch.setattr(_json, "QUOTED", 10)
    _json._quoted.clear()
    for i in range(30):
        views = [1, f"/p/{i}", f"/r/{i}", None]
        assert sqlite_pageviews.views_json(views) == json.dumps(views)
        assert len(_json._quoted) <= 10 + 2  # emptied before a call over it


@needs_speedups
def test_the_c_json_leaves_anything_else_to_json() -> None:
    import json
    from json.encoder import encode_basestring, encode_basestring_ascii

    from trackmw import _speedups
    from trackmw.stores import sqlite_pageviews

    quote = encode_basestring_ascii
    for odd in ([1.5], [True], [_Text("/a")], ["/a", [1]], [{"k": 1}], [2**63]):
        assert _speedups.views_json(odd, quote, {}) is None
        assert sqlite_pageviews.views_json(odd) == json.dumps(odd)  # through json
    assert _speedups.views_json([b"/a"], quote, {}) is None
    assert _speedups.views_json(("/a",), quote, {}) is None
    assert _speedups.views_json(["/a"], quote, []) is None
    assert _speedups.views_json(["/é"], encode_basestring, {}) is None  # not ASCII
    assert _speedups.views_json(["/é"], lambda text: 1, {}) is None  # not a str
    # A value of another kind, or not ASCII, is quoted again; an ASCII str is trusted.
    quoted: dict[str, Any] = {"/a": 5, "/b": '"elsewhere"', "/c": '"/é"'}
    assert _speedups.views_json(["/a", "/b", "/c"], quote, quoted) == '["/a", "elsewhere", "/c"]'
    assert quoted["/a"] == '"/a"' and quoted["/c"] == '"/c"'
    with pytest.raises(ZeroDivisionError):
        _speedups.views_json(["/a"], lambda text: 1 / 0, {})
    with pytest.raises(TypeError):
        _speedups.views_json(["/a"], quote)


@needs_speedups
def test_the_c_json_reads_the_list_again_after_quoting() -> None:
    """A quote that empties the list it is writing (only code the caller passes can):
    the items already read are written, and nothing after them is read."""
    from json.encoder import encode_basestring_ascii

    from trackmw import _speedups

    views: list[Any] = [1, "/a", "/b", None]

    def quote(text: str) -> str:
        views.clear()
        return str(encode_basestring_ascii(text))

    assert _speedups.views_json(views, quote, {}) == '[1, "/a"]'


def test_the_store_writes_the_same_page_views_with_and_without_the_c_json(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trackmw.events import PageView
    from trackmw.stores import sqlite_pageviews
    from trackmw.stores.sqlite import SQLiteStore

    views = [PageView(T0 + i * 0.5, "2027-01-15", f"v{i % 3}", None, f"/p/{i % 4}",
                      "https://news.example/" if i % 2 else None, "spring" if i == 5 else None,
                      "Chrome", "Linux", "desktop", False) for i in range(40)]
    rows = []
    for c_json in (True, False):
        if not c_json:
            monkeypatch.setattr(sqlite_pageviews, "speedup", lambda name: None)
        store = SQLiteStore(f"sqlite:///{tmp_path}/{c_json}.db")
        try:
            store.write(views, [])
            rows.append(store._read("SELECT * FROM pageview_groups ORDER BY rowid", ()))
        finally:
            store.close()
    assert rows[0] == rows[1]
    read = sqlite_pageviews._pageviews(row[:7] + row[8:] for row in rows[0])
    assert sorted(read) == sorted(views)


def test_the_core_s_pipeline_and_rate_limiter_are_fixed(
    make_tracker: Callable[..., Tracker],
) -> None:
    """The beacon's C count holds them: replacing one would split the counts between
    that path and the Python paths (found by review)."""
    from trackmw.ratelimit import RateLimiter

    core = make_tracker().core
    for name, value in (("rate_limiter", RateLimiter(1)), ("pipeline", None)):
        with pytest.raises(AttributeError, match=f"Core.{name} is fixed"):
            setattr(core, name, value)
    core.prefix = core.prefix  # any other attribute as before


@needs_speedups
def test_the_c_paths_hits_and_page_views_are_left_out_of_the_collector(
    beacon_tracker: Any,
) -> None:
    """Tuples of str, float, int, bool and None can be in no reference cycle. CPython
    untracks such tuples itself, but only exact ones: a Hit or a PageView would stay
    tracked, and the hits waiting in the buffer be carried into the oldest generation.
    The C paths untrack what they make, unless an item could hold a reference."""
    import gc
    from zoneinfo import ZoneInfo

    from trackmw import _speedups, normalize
    from trackmw.events import Hit, PageView

    core = beacon_tracker.core
    scope = {"type": "http", "method": "GET", "path": "/_trackmw/pixel.gif",
             "query_string": BEACON_QUERIES[0],
             "headers": [(b"host", b"example.org"), (b"user-agent", b"Mozilla/5.0 test"),
                         (b"cookie", _cached_cookie(beacon_tracker, T0 + 3600))]}
    core.rate_limiter._counts = {}
    python = PurePythonMiddleware(_middleware(beacon_tracker).app, beacon_tracker)
    from unittest import mock

    with mock.patch("trackmw.asgi._time", return_value=T0 + 3650):
        python._quick_pixel(dict(scope))
    status, hits, _, _ = _beacon_effects(
        beacon_tracker, lambda: _speedups.beacon(dict(scope), core.beacon_caches, core, T0 + 3650)
    )
    assert status == 200 and not gc.is_tracked(hits[0])

    tz = ZoneInfo("UTC")
    hit = Hit(T0, "v" * 22, None, "/untracked", None, None, _AGENTS[0], "example.org")
    normalize.normalize_batch([hit], tz, [], [])  # fills the cache
    minute = T0 // 60 * 60
    args = (normalize._fixed, minute, minute + 60, normalize.local_day(T0, tz), Hit, PageView)
    views: list[Any] = []
    assert _speedups.normalize_run([hit, hit], 0, *args, views) == 2
    assert [gc.is_tracked(v) for v in views] == [False, False]
    key = ("/untracked", None, None, _AGENTS[0], "example.org")
    fixed = normalize._fixed[key]
    normalize._fixed[key] = (fixed[0], fixed[1], fixed[2], ["a list"], *fixed[4:])
    try:
        views.clear()
        assert _speedups.normalize_run([hit], 0, *args, views) == 1
        assert gc.is_tracked(views[0])  # it holds a list: the collector must see it
    finally:
        normalize._fixed.clear()


# -- the Redis store's plan of a batch -----------------------------------------------------


def _plans_both_ways(views: Any, consents: Any = ()) -> tuple[Any, Any]:
    """``redis_plan.plan`` of the same batch with the C loop and without it."""
    from unittest import mock

    from trackmw.stores import redis_plan

    args = ("{t}", "h", views, list(consents), {"2027-01-15": 1_900_000_000})
    with_c = redis_plan.plan(*args)
    with mock.patch.object(redis_plan, "speedup", lambda name: None):
        return with_c, redis_plan.plan(*args)


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from([T0, T0 + 0.999, -0.5, 1e16, float("inf"), 7]),
    st.sampled_from(["2027-01-15", "2027-01-16", _Text("2027-01-15")]),
    st.sampled_from(["v" * 22, "w" * 22, None, _Text("v" * 22)]),
    st.sampled_from([None, "u1", "u\n2"]),
    st.sampled_from(["/a", "/b", "", '/"q"\\', "/über", _Text("/a")]),
    st.sampled_from([None, "news.example", "", "/ü", _Text("news.example")]),
    st.sampled_from([None, "spring", "", _Text("spring")]),
    st.sampled_from([("Chrome", "Linux", "desktop"), (None, None, None), ("Firefox", None, "m")]),
    st.sampled_from([False, True, 0, 1]),
    st.sampled_from(["view", "subclass"]),
), max_size=30), st.sampled_from([list, tuple]), st.booleans())
def test_the_c_redis_plan_is_the_python_one(items: list[Any], kind: Any, consent: bool) -> None:
    from trackmw.events import ConsentChoice, PageView

    class Late(PageView):
        __slots__ = ()

    views = []
    for ts, day, visitor, user, path, referrer, campaign, classes, bot, made in items:
        fields = (ts, day, visitor, user, path, referrer, campaign, *classes, bot)
        views.append((PageView if made == "view" else Late)(*fields))
    consents = [ConsentChoice(T0, "2027-01-16", "v" * 22, True, True, "1")] if consent else []
    try:
        with_c, without = _plans_both_ways(kind(views), consents)
    except (ValueError, OverflowError):  # int() of a time that is not a number, in both
        with pytest.raises((ValueError, OverflowError)):
            _plans_both_ways(views, consents)
        return
    assert with_c == without


@needs_speedups
def test_the_c_redis_plan_takes_the_common_case_and_leaves_the_rest() -> None:
    from trackmw import _speedups
    from trackmw.events import PageView
    from trackmw.stores.redis_plan import _Day, _quote

    view = PageView(T0, "2027-01-15", "v1", None, "/a", "news.example", None, "Chrome", None,
                    None, False)
    views = [view, view._replace(bot=True), view._replace(visitor_id=None), view,
             view._replace(day="2027-01-16"), view]
    day, lists, quoted = _Day("2027-01-15"), {}, {}
    assert _speedups.plan_run(views, 0, day, lists, PageView, _quote, quoted) == 4
    assert (day.paths, day.refs, day.bots) == (["/a"] * 3, ["r:news.example"] * 3, 1)
    assert day.members == {"/a": {"v1"}} and list(lists) == ["v1"]
    ((entries, head, tail),) = day.visits.values()
    assert lists["v1"] == [entries] and len(entries) == 2
    assert entries[0] == (
        f'["p",{int(T0)},"2027-01-15",null,"/a","news.example",null,"Chrome",null,null]'
    )
    assert quoted == {text: f'"{text}"' for text in ("/a", "news.example", "2027-01-15", "Chrome")}
    assert _speedups.plan_run(tuple(views), 5, day, lists, PageView, _quote, quoted) == 6
    assert len(entries) == 3
    before = repr((day.paths, day.refs, day.bots, day.visits, day.members, lists))
    for odd in ([iter(views), 0, day, lists, PageView, _quote, quoted],
                [views, -2, day, lists, PageView, _quote, quoted],
                [views, 0, day, lists, tuple, _quote, quoted],
                [views, 0, day, lists, PageView, _quote, []],
                [views, 0, day, lists, PageView, lambda text: "«" + text + "»", {}]):
        assert _speedups.plan_run(*odd) == 0  # nothing done: Python decides
    assert repr((day.paths, day.refs, day.bots, day.visits, day.members, lists)) == before
    undated, unlisted = _Day("2027-01-15"), _Day("2027-01-15")
    undated.day = _Text("2027-01-15")  # type: ignore[assignment]
    unlisted.paths = ()  # type: ignore[assignment]
    for odd_day in (object(), undated, unlisted):
        assert _speedups.plan_run(views, 0, odd_day, lists, PageView, _quote, quoted) == 0
    with pytest.raises(TypeError):
        _speedups.plan_run(views, 0, day)


@needs_speedups
@pytest.mark.parametrize("bad", ["record", "texts", "members", "lists"])
def test_the_c_redis_plan_raises_on_a_day_that_is_not_the_loop_s(bad: str) -> None:
    """What the loop made and the C reads, not as it made it: an error, not a crash, nor
    a view added twice."""
    from trackmw import _speedups
    from trackmw.events import PageView
    from trackmw.stores.redis_plan import _Day, _quote

    view = PageView(T0, "2027-01-15", "v1", None, "/a", None, None, None, None, None, False)
    day = _Day("2027-01-15")
    key = ("v1", None, None, None, None)
    lists: dict[str, Any] = {}
    if bad == "record":
        day.visits[key] = ("entries", "head", "tail")
    elif bad == "texts":
        day.visits[key] = [[], ',"2027-01-15",null,', 7]
    elif bad == "members":
        day.members["/a"] = ["v0"]
    else:
        lists["v1"] = ("not", "a list")
    with pytest.raises(TypeError):
        _speedups.plan_run([view], 0, day, lists, PageView, _quote, {})


@needs_speedups
def test_the_c_redis_plan_holds_what_a_lookup_s_code_drops() -> None:
    """A page among the day's members whose ``__eq__`` empties the batch and takes the
    day's containers away while the C loop adds a view: the loop goes on with what it
    holds, and stops at the list's new end."""
    from trackmw import _speedups
    from trackmw.events import PageView
    from trackmw.stores.redis_plan import _Day, _quote

    views = [PageView(T0, "2027-01-15", "".join(["v", str(i)]), None, "".join(["/p", str(i)]),
                      None, None, None, None, None, False) for i in range(3)]
    day = _Day("2027-01-15")
    paths, members = day.paths, day.members

    class Clash:
        def __hash__(self) -> int:
            return hash("/p0")

        def __eq__(self, other: object) -> bool:
            views.clear()
            day.paths, day.members = [], {}
            [{} for _ in range(1000)]
            return False

    members[Clash()] = set()
    held = sys.getrefcount(paths), sys.getrefcount(members)
    assert _speedups.plan_run(views, 0, day, {}, PageView, _quote, {}) == 1
    assert paths == ["/p0"] and members["/p0"] == {"v0"}
    assert day.paths == [] and day.members == {}
    # Held by this frame alone now, the day having let go of them: the loop kept none.
    assert (sys.getrefcount(paths), sys.getrefcount(members)) == (held[0] - 1, held[1] - 1)


@needs_speedups
def test_the_c_redis_plan_of_a_site_s_batch_is_the_python_one() -> None:
    """A realistic mix (the store suite's: days, visitors with their users, pages,
    referrers, campaigns, anonymous views and bots), and times either side of zero."""
    from tests.stores.data import START, events, pageview

    views, consents = events(seed=21, n=3_000, days=3)
    views += [pageview(START, 5, "v01", "/late")._replace(ts=-0.5),
              pageview(START, 6, "v02", "/late")._replace(ts=0.75)]
    with_c, without = _plans_both_ways(views, consents)
    assert with_c == without
    assert b'"p",0,' in with_c[1] and b"/late" in with_c[1]


@needs_speedups
def test_the_c_redis_plan_holds_a_page_s_visitors_while_adding_to_them() -> None:
    """A visitor among a page's visitors whose ``__eq__`` empties the day's members (a
    str subclass, which the Python loop put there) while the C loop adds the same
    visitor as an exact str: the set is held through the add (found by review; under
    the debug allocator the rerun of this file crashed without it)."""
    from trackmw import _speedups
    from trackmw.events import PageView
    from trackmw.stores.redis_plan import _Day, _quote

    day = _Day("2027-01-15")

    class Visitor(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            day.members.clear()
            [set(range(50)) for _ in range(200)]
            return False

    day.members["/a"] = {Visitor("v1")}
    view = PageView(T0, "2027-01-15", "v1", None, "/a", None, None, None, None, None, False)
    assert _speedups.plan_run([view], 0, day, {}, PageView, _quote, {}) == 1
    assert day.members == {} and day.paths == ["/a"]


# -- PostgreSQL's binary formats (copy_pageviews, pg_columns) ---------------------------

_PG_TEXT = st.one_of(st.none(), st.text(max_size=12))
_PG_DAYS = ["2027-01-15", "2027-01-16", "1999-12-31"]


def _pg_numbers() -> dict[str, int]:
    from datetime import date

    from trackmw.stores.postgres import _PG_EPOCH

    return {day: date.fromisoformat(day).toordinal() - _PG_EPOCH for day in _PG_DAYS}


def _psycopg_copy(views: list[Any]) -> bytes:
    """What psycopg makes of ``views`` row by row, as the PostgreSQL store's Python path
    copies them (its ``date`` objects for the days)."""
    from datetime import date

    from psycopg._copy_base import BinaryFormatter
    from psycopg.adapt import Transformer
    from psycopg.pq import Format

    from trackmw.stores.postgres_sql import PV_TYPES

    tx = Transformer()
    tx.set_dumper_types([tx.adapters.types[name].oid for name in PV_TYPES], Format.BINARY)
    formatter = BinaryFormatter(tx)
    out = b"".join(
        bytes(formatter.write_row((v[0], date.fromisoformat(v[1]), *v[2:]))) for v in views
    )
    return out + bytes(formatter.end())


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=False), st.sampled_from(_PG_DAYS),
            *[_PG_TEXT] * 8, st.booleans(),
        ),
        max_size=8,
    )
)
def test_the_c_copy_is_byte_for_byte_what_psycopg_sends(fields: list[tuple[Any, ...]]) -> None:
    from trackmw import _speedups

    views = [PageView(*f) for f in fields]
    assert _speedups.copy_pageviews(views, PageView, _pg_numbers()) == _psycopg_copy(views)


def _loaded(arrays: list[bytes], types: str) -> list[list[Any]]:
    """``pg_columns``' arrays as psycopg's own binary loaders read them (dates as ISO text)."""
    from psycopg.adapt import Transformer
    from psycopg.pq import Format

    tx = Transformer()
    elements = {"d": "date", "t": "text", "i": "int8"}
    out = []
    for letter, data in zip(types, arrays, strict=True):
        oid = tx.adapters.types[elements[letter]].array_oid
        loaded = tx.get_loader(oid, Format.BINARY).load(data)
        out.append([x.isoformat() if letter == "d" else x for x in loaded])
    return out


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.sampled_from(_PG_DAYS), _PG_TEXT, _PG_TEXT),
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.lists(_PG_TEXT, min_size=3, max_size=3).map(lambda texts: [*texts, 7]),
        ),
        max_size=8,
    )
)
def test_the_c_arrays_read_back_as_the_rows_columns(rows: dict[Any, Any]) -> None:
    from trackmw import _speedups

    counts = {k: v for k, v in rows.items() if isinstance(v, int)}
    visits = {k: v for k, v in rows.items() if isinstance(v, list)}
    for table, types in ((counts, "dtti"), (visits, "dttttti")):
        arrays = _speedups.pg_columns(table, types, _pg_numbers())
        columns = [list(c) for c in zip(*[(*k, *(v if isinstance(v, list) else [v]))
                                          for k, v in table.items()], strict=True)]
        assert _loaded(arrays, types) == (columns or [[] for _ in types])


@needs_speedups
def test_the_c_formats_leave_anything_else_to_psycopg() -> None:
    from trackmw import _speedups

    numbers = _pg_numbers()
    view = PageView(1.5, "2027-01-15", "v", None, "/", None, None, "b", "o", "d", False)
    assert _speedups.copy_pageviews([view], PageView, numbers) is not None
    for odd in (
        view._replace(ts=2),  # an int time
        view._replace(day="2027-01-17"),  # a day not in the numbers
        view._replace(path=_Str("/")),
        view._replace(path="\ud800"),  # a lone surrogate: no UTF-8 form
        view._replace(bot=1),
    ):
        assert _speedups.copy_pageviews([view, odd], PageView, numbers) is None, odd
    assert _speedups.copy_pageviews([(*view,)], PageView, numbers) is None
    assert _speedups.copy_pageviews([view], PageView, {_Str("2027-01-15"): 9512}) is None
    assert _speedups.copy_pageviews([view], PageView, {"2027-01-15": 2**40}) is None
    assert _speedups.copy_pageviews((view,), PageView, numbers) is not None
    row = ("2027-01-15", "page", "/")
    assert _speedups.pg_columns({row: 3}, "dtti", numbers) is not None
    for rows, types in (
        ({row: 2**63}, "dtti"),  # no bigint holds it
        ({row: True}, "dtti"),
        ({row: 3}, "dtt"),  # another number of fields
        ({row: [1, 2]}, "dtti"),
        ({row: (1,)}, "dtti"),  # a value neither an int nor a list
        ({3: 3}, "ii"),  # a key that is not a tuple
        ({row: 3}, "dtx"),
        ({row: 3}, ""),
        ({("2027-01-17", "page", "/"): 3}, "dtti"),
    ):
        assert _speedups.pg_columns(rows, types, numbers) is None, (rows, types)
    with pytest.raises(TypeError):
        _speedups.pg_columns({}, "i")  # type: ignore[call-arg]


# -- a new visitor's token ------------------------------------------------------------------


def _hmac_token(key: bytes, name: str, text: bytes, stamp: bytes, sep: bytes) -> str:
    """The token ``CookieSigner._signed`` makes, composed from the hmac module's MAC:
    base64url(text) + stamp, then sep and the base64url MAC of what comes before it."""
    import hmac

    from trackmw.signing import base64url

    value = base64url(text) + stamp
    return (value + sep + base64url(hmac.new(key, value, name).digest())).decode("ascii")


def _sha1(data: bytes = b"") -> Any:
    """SHA-1 as a Python function, as itsdangerous' default digest is: the hmac module
    then composes the MAC from two hash states (``_mac_states``' fast case)."""
    import hashlib

    return hashlib.sha1(data)


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(max_size=100),  # past SHA-1's 64-byte block too: hashed first
    text=st.binary(max_size=100),
    stamp=st.binary(max_size=12),
    sep=st.sampled_from([b".", b"", b"::"]),
)
def test_the_c_token_is_the_hmac_modules(key: bytes, text: bytes, stamp: bytes, sep: bytes) -> None:
    import hmac

    from trackmw import _speedups
    from trackmw.signing import _mac_states, base64url

    stamp = sep + base64url(stamp)
    want = _hmac_token(key, "sha1", text, stamp, sep)
    composed, openssl = hmac.new(key, digestmod=_sha1), hmac.new(key, digestmod="sha1")
    assert _mac_states(composed)[1] is not None  # the two states, where CPython keeps them
    assert _mac_states(openssl) == (openssl, None)
    for mac in (composed, openssl):
        assert _speedups.sign_token(*_mac_states(mac), text, stamp, sep) == want
        assert _speedups.sign_token(mac, None, text, stamp, sep) == want


@needs_speedups
def test_a_signer_signs_in_c_the_tokens_it_signs_in_python() -> None:
    from trackmw.signing import CookieSigner

    signer = CookieSigner(["k" * 32], "trackmw.visitor", 60)
    calls: list[bytes] = []
    c_sign = signer._sign_token
    assert c_sign is not None

    def counted(*args: Any) -> Any:
        calls.append(args[2])
        return c_sign(*args)

    signer._sign_token = counted
    texts = [b'["' + bytes([65 + i % 26]) * (i % 40) + b'"]' for i in range(60)]
    stamp = signer._signer.stamp()
    tokens = [signer._signed(text, stamp) for text in texts]
    assert calls == texts
    signer._sign_token = None
    assert [signer._signed(text, stamp) for text in texts] == tokens
    loaded = [signer.loads(token) for token in tokens]
    assert [hit.payload if hit else None for hit in loaded] == [[t[2:-2].decode()] for t in texts]


@needs_speedups
def test_the_c_token_leaves_odd_arguments_to_python_and_passes_errors_on() -> None:
    import hmac

    from trackmw import _speedups

    mac = hmac.new(b"k", digestmod=_sha1)
    assert _speedups.sign_token(mac, None, b"x", b".a", b".") is not None
    for text, stamp, sep in (
        ("x", b".a", b"."),
        (bytearray(b"x"), b".a", b"."),
        (b"x", ".a", b"."),
        (b"x", b".\xe9", b"."),  # not ASCII: the Python path's decode raises
        (b"x", b".a", b"\xff"),
        (b"x", b".a", memoryview(b".")),
    ):
        assert _speedups.sign_token(mac, None, text, stamp, sep) is None, (text, stamp, sep)

    class Odd:
        def __init__(self, digest: Any) -> None:
            self.value = digest

        def copy(self) -> Odd:
            return self

        def update(self, data: bytes) -> None:
            if self.value is None:
                raise ValueError("no update")

        def digest(self) -> Any:
            return self.value

    with pytest.raises(TypeError, match="did not return bytes"):
        _speedups.sign_token(Odd("text"), None, b"x", b".a", b".")
    with pytest.raises(TypeError, match="did not return bytes"):
        _speedups.sign_token(Odd(bytearray(b"\1\2\3")), None, b"x", b".a", b".")

    class Digest(bytes):
        pass

    # a bytes subclass is bytes, as the Python path's base64 takes it
    assert _speedups.sign_token(Odd(Digest(b"\1\2\3")), None, b"x", b".a", b".") == "eA.a.AQID"
    with pytest.raises(ValueError, match="no update"):
        _speedups.sign_token(Odd(None), None, b"x", b".a", b".")
    with pytest.raises(AttributeError):
        _speedups.sign_token(object(), None, b"x", b".a", b".")
    with pytest.raises(TypeError):
        _speedups.sign_token(mac, None, b"x", b".a")  # type: ignore[call-arg]
    # an outer state failing after the inner one worked
    with pytest.raises(TypeError, match="did not return bytes"):
        _speedups.sign_token(mac, Odd(3), b"x", b".a", b".")


_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _openssl_keys() -> bool:
    """Whether this build signs through OpenSSL (``hmac_key``); CI, which sets
    TRACKMW_REQUIRE_SPEEDUPS, must have built it so."""
    from trackmw import _speedups

    built = _speedups.hmac_key("sha1", b"k") is not None
    if os.environ.get("TRACKMW_REQUIRE_SPEEDUPS") == "1":
        assert built, "trackmw._speedups was built without OpenSSL (see the pip install output)"
    return built


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["sha1", "sha256", "sha512", "md5"]),
    key=st.binary(max_size=300),  # past each hash's block (64 or 128 bytes): hashed first
    text=st.binary(max_size=100),
    stamp=st.binary(max_size=12),
    sep=st.sampled_from([b".", b"", b"::"]),
    ids=st.lists(st.text(_ID_CHARS, min_size=1, max_size=64), max_size=5),
)
def test_openssls_copy_of_a_key_signs_as_the_hmac_module(
    name: str, key: bytes, text: bytes, stamp: bytes, sep: bytes, ids: list[str]
) -> None:

    from trackmw import _speedups
    from trackmw.signing import base64url

    keyed = _speedups.hmac_key(name, key)
    if not _openssl_keys():
        assert keyed is None
        return

    def token(payload: bytes) -> str:
        return _hmac_token(key, name, payload, stamp, sep)

    stamp = sep + base64url(stamp)
    assert _speedups.sign_token(keyed, None, text, stamp, sep) == token(text)
    assert _speedups.sign_ids(keyed, None, ids, stamp, sep) == [
        token(b'["' + i.encode() + b'"]') for i in ids
    ]


@needs_speedups
@pytest.mark.parametrize("name", ["sha1", "sha256", "sha512", "md5"])
def test_openssls_copy_of_a_key_of_every_length_signs_as_the_hmac_module(name: str) -> None:
    """Every key length from empty to past two blocks: the edges of padding and of
    hashing a long key first, which a random length seldom hits."""

    from trackmw import _speedups

    if not _openssl_keys():
        pytest.skip("trackmw._speedups was built without OpenSSL here")
    for n in range(260):
        key = bytes((i * 7 + n) % 256 for i in range(n))
        want = _hmac_token(key, name, b'["abc"]', b".AAAA", b".")
        keyed = _speedups.hmac_key(name, key)
        assert _speedups.sign_token(keyed, None, b'["abc"]', b".AAAA", b".") == want, n


@needs_speedups
def test_openssls_copy_of_a_key_is_made_only_for_a_hash_it_knows() -> None:
    from trackmw import _speedups

    _openssl_keys()
    for name in ("nonesuch", "", "sha1\0x"):
        assert _speedups.hmac_key(name, b"k") is None, name
    for args in (("sha1", "k"), (b"sha1", b"k"), ("sha1", bytearray(b"k"))):
        with pytest.raises(TypeError):
            _speedups.hmac_key(*args)
    with pytest.raises(TypeError):
        _speedups.hmac_key("sha1")  # type: ignore[call-arg]
    with pytest.raises(UnicodeEncodeError):
        _speedups.hmac_key("sha\udc80", b"k")


@needs_speedups
def test_a_signer_signs_through_openssl_only_when_it_signs_as_its_hmac() -> None:
    """``_mac_states`` takes OpenSSL's copy of the key for itsdangerous' default SHA-1,
    and keeps hmac's own MAC for a hash whose name OpenSSL reads as another."""
    import hashlib
    import hmac

    from trackmw.signing import CookieSigner, _mac_states

    signer = CookieSigner(["k" * 32], "trackmw.visitor", 60)
    inner, outer = signer._signer._mac_states
    assert (type(inner).__name__ == "PyCapsule") is _openssl_keys()
    assert outer is None or type(outer).__name__ == "HASH"

    class Mislabelled:  # SHA-256, named SHA-1
        name = "sha1"

        def __init__(self, data: bytes = b"") -> None:
            self._hash = hashlib.sha256(data)
            self.digest_size, self.block_size = 32, 64

        def copy(self) -> Mislabelled:
            other = Mislabelled()
            other._hash = self._hash.copy()
            return other

        def update(self, data: bytes) -> None:
            self._hash.update(data)

        def digest(self) -> bytes:
            return self._hash.digest()

    mac = hmac.new(b"key", digestmod=Mislabelled)
    assert _mac_states(mac, b"key", Mislabelled) == (mac._inner, mac._outer)  # hmac's states
    composed = hmac.new(b"key", digestmod=_sha1)
    assert type(_mac_states(composed, b"key", _sha1)[0]).__name__ == (
        "PyCapsule" if _openssl_keys() else "HASH"
    )




@needs_speedups
@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.text(_ID_CHARS, min_size=1, max_size=64), max_size=70))
def test_the_c_tokens_of_ids_are_the_python_paths(ids: list[str]) -> None:
    """``sign_ids``, as ``new_id_token`` signs a block ahead, gives each id the token the
    Python path gives ``dumps_id`` (``[id]`` as JSON, signed)."""
    from trackmw import _speedups
    from trackmw.signing import CookieSigner, _id_json, _mac_states

    signer = CookieSigner(["k" * 32], "trackmw.visitor", 60)
    stamp, sep = signer._signer.stamp(), b"."
    # The signer's own (OpenSSL's copy of the key, where built so), and hmac's two states
    keys = [signer._signer._mac_states, _mac_states(signer._signer._mac)]
    tokens = _speedups.sign_ids(*keys[0], ids, stamp, sep)
    assert _speedups.sign_ids(*keys[1], ids, stamp, sep) == tokens
    signer._sign_token = signer._sign_ids = None
    assert tokens == [signer._signed(_id_json(i), stamp) for i in ids]
    assert signer._signed_ids(ids, stamp) == tokens  # the Python path of a block


@needs_speedups
def test_the_c_tokens_of_ids_leave_other_ids_to_python() -> None:
    import hmac

    from trackmw import _speedups

    mac = hmac.new(b"k", digestmod=_sha1)

    class Id(str):
        pass

    assert _speedups.sign_ids(mac, None, ["a" * 64, "-_0"], b".a", b".") is not None
    for ids in (
        ("abc",),  # not a list
        [""],
        ["a" * 65],
        ['a"b'],  # JSON would escape it
        ["a b"],
        ["é"],
        ["abc", 3],
        [Id("abc")],
    ):
        assert _speedups.sign_ids(mac, None, ids, b".a", b".") is None, ids
    assert _speedups.sign_ids(mac, None, ["abc"], b".\xe9", b".") is None
    assert _speedups.sign_ids(mac, None, ["abc"], ".a", b".") is None
    with pytest.raises(TypeError):
        _speedups.sign_ids(mac, None, ["abc"], b".a")  # type: ignore[call-arg]

    # The ids are read before any of the MAC's methods runs: one that empties the list
    # changes nothing signed.
    ids = ["abc", "def", "ghi"]

    class Emptying:
        def copy(self) -> Emptying:
            return self

        def update(self, data: bytes) -> None:
            ids.clear()

        def digest(self) -> bytes:
            return b"\1\2\3"

    tokens = _speedups.sign_ids(Emptying(), None, ids, b".a", b".")
    assert tokens == ["WyJhYmMiXQ.a.AQID", "WyJkZWYiXQ.a.AQID", "WyJnaGkiXQ.a.AQID"]

    # Not even by emptying every list that holds an id, found through the collector (a
    # review's reproduction: the copy was a list, and this crashed).
    mark = "".join(["Zq", "9x"])  # a str of its own, held by the lists that hold it
    many = [mark] + [f"x{i}" for i in range(100)]

    class Clearing(Emptying):
        def update(self, data: bytes) -> None:
            for holder in gc.get_referrers(mark):
                if type(holder) is list:
                    holder.clear()

    tokens = _speedups.sign_ids(Clearing(), None, many, b".a", b".")
    assert len(tokens) == 101 and tokens[1] == "WyJ4MCJd.a.AQID"
    with pytest.raises(TypeError, match="did not return bytes"):
        _speedups.sign_ids(mac, type("Odd", (), {"copy": lambda s: s, "update": lambda s, d: None,
                                                   "digest": lambda s: "x"})(), ["a"], b".a", b".")
