"""The cookie state cache is keyed by trackmw's own cookies, not the whole header.

A site's own cookies change under a returning visitor (Starlette's ``SessionMiddleware``
and Flask's permanent sessions sign theirs again every second): keyed by the whole
``Cookie`` header, every such request read and verified trackmw's cookies again.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackmw.asgi import SPEEDUPS
from trackmw.cookies import parse_cookies
from trackmw.cookiestate import _CACHED_HEADER, CookieReader, state_key

from .harness import Client

PIXEL = "/_trackmw/pixel.gif"
STATE_NAMES = ("trackmw_id", "trackmw_consent", "trackmw_prefs")

# Pieces of hostile and ordinary headers: names near ours, blanks where parse_cookies
# strips them and where it does not, "=" and ";" in odd places.
NAME = st.sampled_from([
    "trackmw_id", "trackmw_consent", "trackmw_prefs", "trackmw_dash", "a", "sid",
    " trackmw_id", "trackmw_id ", "\ttrackmw_consent", "=trackmw_id", "xtrackmw_id",
    "trackmw_", "Trackmw_id", "trackmw id", "",
])
VALUE = st.sampled_from(
    ["x.y", " x.y", "\tx.y", "x.y\t", "x.y ", "x y", "", "=", "a=b", '"q"', "v1", "é"]
)
PART = st.one_of(
    st.tuples(NAME, VALUE).map(lambda p: f"{p[0]}={p[1]}"),
    NAME,  # no "=": not a pair
    st.text(alphabet=" \t=;ab_", max_size=4),
)
SEP = st.sampled_from([";", "; ", " ;", ";\t", ";;", "; ;"])


@st.composite
def headers(draw: Any) -> str:
    parts = draw(st.lists(PART, max_size=7))
    out = ""
    for part in parts:
        out += (draw(SEP) if out else "") + part
    return out + draw(st.sampled_from(["", ";", " "]))


def _pairs(header: str) -> dict[str, list[str]]:
    found = parse_cookies(header)
    return {name: found[name] for name in STATE_NAMES if name in found}


@settings(max_examples=500, deadline=None)
@given(header=headers())
def test_the_key_keeps_all_a_state_rests_on(header: str) -> None:
    key = state_key(header)
    assert _pairs(key) == _pairs(header)  # so the same key always has the same state
    assert state_key(key) == key
    assert state_key(header.encode("latin-1")) == key.encode("latin-1")
    assert (key is header) == (key == header)  # the header itself when it is its own key


def test_the_key_leaves_out_the_sites_cookies() -> None:
    assert state_key(None) is None
    assert state_key("") == "" and state_key(b"") == b""
    assert state_key("a=1; sid=2") == "" and state_key(b"trackmw_dash=x") == b""
    header = b"trackmw_id=a.b; trackmw_consent=c.d"
    assert state_key(header) is header
    assert state_key(b"sid=1;trackmw_id=a.b ; theme=dark;\ttrackmw_consent=c.d") == header


@pytest.mark.skipif(not SPEEDUPS, reason="trackmw._speedups is not built here")
@settings(max_examples=500, deadline=None)
@given(header=headers(), pad=st.sampled_from([0, 0, 0, 4000, 5000]))
def test_the_c_key_is_the_python_key(header: str, pad: int) -> None:
    from trackmw import _speedups

    raw = (header + "; pad=" + "p" * pad if pad else header).encode("latin-1")
    found = _speedups.state_key(raw)
    if len(raw) > _CACHED_HEADER:
        assert found is None  # not cached: the Python path reads it each time
        return
    expected = state_key(raw)
    assert found == expected
    assert (found is raw) == (expected is raw)


def _reader() -> CookieReader:
    from trackmw.settings import Settings

    return CookieReader(Settings(secret_keys=("k" * 32,), store="memory://"))


def test_a_header_is_read_once_for_its_trackmw_cookies() -> None:
    reader = _reader()
    reads: list[str] = []
    real = reader._read_state
    reader._read_state = lambda text, *a: (reads.append(text), real(text, *a))[1]  # type: ignore[method-assign]
    first = reader.state(b"sid=1; trackmw_id=a.b", False, False, 1e9)
    assert reader.state(b"sid=2; trackmw_id=a.b", False, False, 1e9) is first
    assert reader.state("trackmw_id=a.b; sid=3", False, False, 1e9) is not first  # text: its own
    assert reader.state(b"sid=1; trackmw_id=a.b", True, False, 1e9) is not first  # a signal
    assert reads == ["trackmw_id=a.b", "trackmw_id=a.b", "trackmw_id=a.b"]
    # A repeated header is found at once, under its own text as well as its key's.
    assert reader.states[b"sid=2; trackmw_id=a.b"] is reader.states[b"trackmw_id=a.b"]
    # A header past the cached size is read each time and kept under no key.
    long = b"trackmw_id=a.b; pad=" + b"p" * _CACHED_HEADER
    kept = dict(reader.states)
    reader.state(long, False, False, 1e9)
    reader.state(long, False, False, 1e9)
    assert reader.states == kept and len(reads) == 5


def test_a_returning_visitor_whose_site_cookies_change_is_read_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, first = client.page("/", query="do=accept")
    ours = "; ".join(f"{k}={v}" for k, v in client.jar.items())
    reads: list[str] = []
    real = CookieReader._read_state

    def counted(self: CookieReader, text: str, *args: Any) -> Any:
        reads.append(text)
        return real(self, text, *args)

    monkeypatch.setattr(CookieReader, "_read_state", counted)
    for i in range(5):  # a session cookie signed again each time, and a CSRF token
        if client.kind == "asgi" and i > 0:  # the C path finds the state itself
            from trackmw import _speedups

            scope = {"type": "http", "path": "/",
                     "headers": [(b"cookie", f"{ours}; csrf={i}".encode())]}
            states = client.tracker.core.reader.states
            assert _speedups.cached_state(scope, (), states, time.time()) is not None
        result, seen = client.page("/", cookie=f"session=s.{i}; {ours}; csrf={i}")
        assert (seen["id"], seen["new"], seen["analytics"]) == (first["id"], False, True)
        assert result.all("set-cookie") == []
        pixel = client.get(PIXEL, query=f"p=/a{i}", cookie=f"{ours}; session=s.{i}")
        assert pixel.status == 200 and pixel.all("set-cookie") == []
    client.tracker.flush()
    views = client.tracker.store._pageviews  # type: ignore[attr-defined]
    assert [(v.visitor_id, v.path) for v in views] == [(first["id"], f"/a{i}") for i in range(5)]
    assert reads == [ours]  # at the first request only: its state is the next ones'


def test_a_full_cache_keeps_the_key_it_reads() -> None:
    from trackmw.cookiestate import _STATE_CACHE

    reader = _reader()
    reader.states.update({f"filler {i}": (0.0, 0.0, None) for i in range(_STATE_CACHE - 1)})
    state = reader.state(b"sid=1; trackmw_id=q", False, False, 1e9)
    assert reader.states[b"trackmw_id=q"][2] is state  # cleared before it, not after


@pytest.mark.parametrize("via_c", [False, True] if SPEEDUPS else [False])
def test_no_key_past_the_cached_size_is_kept(via_c: bool) -> None:
    reader = _reader()
    header = b"trackmw_id=a;" * 315  # 4,095 bytes; its key: 4,408
    key = state_key(header)
    assert len(header) <= _CACHED_HEADER < len(key)
    reader.state(header, False, False, 1e9)
    assert all(len(k) <= _CACHED_HEADER for k in reader.states)  # the header's own only
    if via_c:
        from trackmw import _speedups

        scope = {"type": "http", "path": "/", "headers": [(b"cookie", key)]}
        assert _speedups.cached_state(scope, (), reader.states, 1e9) is None
    reads: list[str] = []
    real = reader._read_state
    reader._read_state = lambda text, *a: (reads.append(text), real(text, *a))[1]  # type: ignore[method-assign]
    reader.state(key, False, False, 1e9)  # a header that is the long key: read, as in C
    assert len(reads) == 1
