"""Cookie configuration mistakes are refused when the tracker is built, not on a request."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests.conftest import SECRET
from tests.core.harness import Client
from trackmw import Tracker
from trackmw.errors import ConfigurationError


@pytest.mark.parametrize(
    "domain",
    ["com", "COM", ".com", "co.uk", ".co.uk", "github.io", "localhost", "io", "com.au"],
)
def test_a_public_suffix_cookie_domain_is_refused(domain: str) -> None:
    with pytest.raises(ValueError, match="cookie_domain"):
        Tracker(secret_keys=[SECRET], store="memory://", cookie_domain=domain)


@pytest.mark.parametrize(
    "domain",
    [
        "example.com;",
        "example.com; Secure",
        "exa mple.com",
        "example.com,evil.com",
        "example.com\x00",
        "example.com\r\nSet-Cookie: x=y",
        "example.com\t",
        "example.com\x7f",
        '"example.com"',
        "example..com",
        "-example.com",
        "exa_mple.com",
        "",
    ],
)
def test_a_cookie_domain_with_separators_or_controls_is_refused(domain: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Tracker(secret_keys=[SECRET], store="memory://", cookie_domain=domain)
    assert isinstance(info.value, ValueError)
    assert "cookie_domain" in str(info.value)


def test_a_real_domain_is_accepted() -> None:
    tracker = Tracker(secret_keys=[SECRET], store="memory://", cookie_domain=".Example.COM")
    assert tracker.settings.cookie_domain == "example.com"
    tracker.close()


@pytest.mark.parametrize("secure", [None, False])
def test_samesite_none_without_secure_is_refused(secure: bool | None) -> None:
    with pytest.raises(ValueError, match="cookie_samesite"):
        Tracker(
            secret_keys=[SECRET], store="memory://", cookie_samesite="None", cookie_secure=secure
        )


def test_samesite_none_with_secure_is_accepted(make_tracker: Callable[..., Tracker]) -> None:
    client = Client("asgi", make_tracker(cookie_samesite="None", cookie_secure=True))
    cookie = client.get("/").cookies["trackmw_id"]
    assert cookie["samesite"] == "None" and cookie["secure"] == "true"


@pytest.mark.parametrize("samesite", ["none", "lax", "Off", ""])
def test_an_unknown_samesite_is_refused(samesite: str) -> None:
    with pytest.raises(ValueError, match="cookie_samesite"):
        Tracker(secret_keys=[SECRET], store="memory://", cookie_samesite=samesite)


@pytest.mark.parametrize("keys", [[], ["short"], [SECRET, "short"], [""]])
def test_missing_or_short_keys_are_refused(keys: list[str]) -> None:
    with pytest.raises(ValueError, match="secret_keys"):
        Tracker(secret_keys=keys, store="memory://")


def test_a_too_long_user_id_is_refused(make_tracker: Callable[..., Tracker]) -> None:
    core = make_tracker().core
    from trackmw.messages import Request

    visitor = core.visitor(Request("GET", "/", headers={"host": "testserver"}))
    with pytest.raises(ValueError, match="user_id"):
        visitor.identify("u" * 201)
    with pytest.raises(ValueError, match="user_id"):
        visitor.identify("")


def test_a_user_id_utf8_cannot_encode_is_refused(make_tracker: Callable[..., Tracker]) -> None:
    """A lone surrogate (text decoded with ``surrogateescape``, say) would fail the
    cookie's signing and every store's write of the hits carrying it, again at each
    retry: it is refused where the app passes it."""
    core = make_tracker().core
    from trackmw.messages import Request

    visitor = core.visitor(Request("GET", "/", headers={"host": "testserver"}))
    with pytest.raises(ValueError, match="user_id must be text UTF-8 can encode"):
        visitor.identify("ann\udcff")
    assert visitor.user_id is None
    visitor.identify("Ōsaka-ann")  # any other text is taken
    assert visitor.user_id == "Ōsaka-ann"


@pytest.mark.parametrize("alphabet", ["ascii", "cjk", "emoji", "escapes"])
def test_the_longest_user_id_still_fits_a_cookie_browsers_keep(
    kind: str, make_tracker: Callable[..., Tracker], alphabet: str
) -> None:
    """Name plus value stay under 4,096 bytes, and the cookie is read back next time."""
    rng = random.Random(alphabet)
    pools = {
        "ascii": [chr(c) for c in range(33, 127)],
        "cjk": [chr(c) for c in range(0x4E00, 0x9FFF)],
        "emoji": [chr(c) for c in range(0x1F300, 0x1F5FF)],
        "escapes": ['"', "\\", "\x01", "\x1f", "\u2028"],
    }
    user_id = "".join(rng.choice(pools[alphabet]) for _ in range(200))
    client = Client(kind, make_tracker())
    client.get("/")
    tracker = client.tracker
    # Log in through the app (harness action), with the longest id allowed.
    from urllib.parse import quote

    result = client.get("/?do=login&arg=" + quote(user_id))
    assert result.status == 200
    lines = result.all("set-cookie")
    id_line = next(line for line in lines if line.startswith("trackmw_id="))
    name_value = id_line.split(";", 1)[0]
    assert len(name_value.encode()) <= 4096, len(name_value)
    _, seen = client.page("/")
    assert seen["user"] == user_id and seen["new"] is False
    assert tracker is client.tracker
