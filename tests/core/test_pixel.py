"""The beacon, for both adapters: always a GIF, and what it records."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from trackmw.events import MAX_LEN
from trackmw.pixel import GIF

from .harness import BOT_UA, Client

PIXEL = "/_trackmw/pixel.gif"


def report(client: Client) -> dict[str, Any]:
    return client.tracker.stats().to_dict()


def stored(client: Client) -> list[Any]:
    client.tracker.flush()
    return list(client.tracker.store._pageviews)  # type: ignore[attr-defined]


def assert_gif(result: Any) -> None:
    assert result.status == 200
    assert result.header("content-type") == "image/gif"
    assert result.header("cache-control") == "no-store, no-cache, must-revalidate, max-age=0"
    assert result.body == GIF


def test_the_gif_is_a_valid_transparent_1x1() -> None:
    assert GIF[:6] == b"GIF89a"
    width, height = struct.unpack("<HH", GIF[6:10])
    assert (width, height) == (1, 1)
    assert b"\x21\xf9\x04\x01" in GIF  # graphic control extension with the transparency flag
    assert GIF.endswith(b";") and len(GIF) == 43


def test_pixel_records_a_page_view_for_the_visitor(client: Client) -> None:
    _, seen = client.page("/")
    result = client.get(PIXEL, query="p=/docs&r=https://News.Example.org/x?y=1&c=mail-1")
    assert_gif(result)
    [pv] = stored(client)
    assert (pv.visitor_id, pv.path, pv.referrer, pv.campaign) == (
        seen["id"],
        "/docs",
        "news.example.org",
        "mail-1",
    )
    assert (pv.browser, pv.os, pv.device, pv.bot) == ("Chrome", "Windows", "desktop", False)


def test_pixel_issues_the_cookie_to_a_new_visitor(client: Client) -> None:
    result = client.get(PIXEL, query="p=/")
    assert_gif(result)
    assert "trackmw_id" in result.cookies
    assert result.header("vary") == "Cookie"
    [pv] = stored(client)
    assert pv.visitor_id is not None


def test_page_falls_back_to_the_referer(client: Client) -> None:
    client.get(
        PIXEL, headers={"referer": "http://testserver/blog/post?utm_source=news&session=123"}
    )
    [pv] = stored(client)
    assert pv.path == "/blog/post?utm_source=news"


def test_query_strings_are_stripped_except_utm(client: Client) -> None:
    client.get(PIXEL, query="p=/a%3Ftoken%3Dsecret%26utm_campaign%3Dspring%26utm_medium%3Dmail")
    [pv] = stored(client)
    assert pv.path == "/a?utm_campaign=spring&utm_medium=mail"
    assert pv.campaign == "spring"


def test_internal_referrers_are_not_counted_as_referrers(client: Client) -> None:
    client.get(PIXEL, query="p=/b&r=http://testserver/a")
    [pv] = stored(client)
    assert pv.referrer is None


def test_bots_are_counted_apart(client: Client) -> None:
    client.get(PIXEL, query="p=/", headers={"user-agent": BOT_UA})
    client.get(PIXEL, query="p=/")
    data = report(client)
    assert (data["bot_hits"], data["pageviews"], data["visitors"]) == (1, 1, 1)


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-purpose": "prefetch"},
        {"purpose": "prefetch"},
        {"sec-purpose": "prefetch;prerender"},
        {"user-agent": ""},
    ],
    ids=["sec-purpose", "purpose", "prerender", "no-user-agent"],
)
def test_prefetches_and_empty_user_agents_record_nothing(
    client: Client, headers: dict[str, str]
) -> None:
    assert_gif(client.get(PIXEL, query="p=/", headers=headers))
    assert stored(client) == []


def test_head_records_nothing(client: Client) -> None:
    result = client.request("HEAD", PIXEL, query="p=/")
    assert result.status == 200 and result.header("content-type") == "image/gif"
    assert stored(client) == []


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        (b"p=" + b"a" * 100_000, {}),
        (b"p=/%zz%&r=%E0%A4%A&c=%ff%fe", {}),
        (b"p=/\xff\xfe\xc3\x28&r=\xe2\x82", {}),
        (b"&&&===&p&r=&c", {}),
        (b"p=/" + b"%41" * 40_000 + b"&r=http://x/" + b"b" * 50_000, {}),
        (b"p=/x", {"user-agent": None, "referer": None, "host": None}),
        (b"p=/x", {"cookie": "trackmw_id=" + "A" * 10_000}),
        (b"p=/x", {"referer": "http://[::1"}),
        (b"p=%00%01/ctl", {}),
    ],
    ids=[
        "100kb",
        "bad-percent",
        "non-utf8",
        "empty-fields",
        "huge-encoded",
        "no-headers",
        "10kb-cookie",
        "bad-referer",
        "control-chars",
    ],
)
def test_malformed_input_always_gets_the_gif_and_stays_within_caps(
    client: Client, query: bytes, headers: dict[str, Any]
) -> None:
    assert_gif(client.get(PIXEL, query=query, headers=headers))
    for pv in stored(client):
        assert len(pv.path) <= MAX_LEN
        assert pv.referrer is None or len(pv.referrer) <= MAX_LEN
        assert all(ch >= " " for ch in pv.path)


def test_registered_users_are_attributed(client: Client) -> None:
    client.page("/?do=login&arg=alice")
    client.get(PIXEL, query="p=/")
    data = report(client)
    assert data["registered_visitors"] == 1


def test_unknown_endpoints_under_the_prefix_are_404_not_the_app(client: Client) -> None:
    result = client.get("/_trackmw/nothing-here")
    assert result.status == 404


def test_get_visitor_without_middleware_raises_lookup_error() -> None:
    from trackmw import get_visitor

    with pytest.raises(LookupError, match="TrackingMiddleware"):
        get_visitor({"type": "http"})
