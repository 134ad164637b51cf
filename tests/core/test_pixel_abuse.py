"""The pixel under abuse: rate limits, proxies, allowlists."""

from __future__ import annotations

from typing import Any

from trackmw.ratelimit import RateLimiter

from .harness import Client

PIXEL = "/_trackmw/pixel.gif"


def count(client: Client) -> int:
    client.tracker.flush()
    return len(client.tracker.store._pageviews)  # type: ignore[attr-defined]


def test_a_visitor_over_the_limit_stops_counting_but_gets_the_gif(client_for: Any) -> None:
    client: Client = client_for(pixel_rate_limit=5)
    client.page("/")
    results = [client.get(PIXEL, query="p=/") for _ in range(8)]
    assert all(r.status == 200 and r.header("content-type") == "image/gif" for r in results)
    assert count(client) == 5


def test_other_visitors_are_not_affected(client_for: Any) -> None:
    client: Client = client_for(pixel_rate_limit=3)
    client.page("/")
    for _ in range(6):
        client.get(PIXEL, query="p=/")
    other = Client(client.kind, client.tracker)
    other.page("/")
    for _ in range(3):
        other.get(PIXEL, query="p=/")
    assert count(client) == 6


def test_429_when_configured(client_for: Any) -> None:
    client: Client = client_for(pixel_rate_limit=1, pixel_rate_limit_status=429)
    client.page("/")
    assert client.get(PIXEL, query="p=/").status == 200
    assert client.get(PIXEL, query="p=/").status == 429


def test_anonymous_visitors_are_limited_by_ip_and_user_agent(client_for: Any) -> None:
    client: Client = client_for(pixel_rate_limit=2, trust_proxy=True)
    gpc = {"sec-gpc": "1"}
    for ip in ("198.51.100.1", "198.51.100.1", "198.51.100.1", "198.51.100.2"):
        client.get(PIXEL, query="p=/", headers={**gpc, "x-forwarded-for": ip})
    assert count(client) == 3


def test_entries_a_client_prepends_to_forwarded_for_do_not_escape_the_limit(
    client_for: Any,
) -> None:
    client: Client = client_for(pixel_rate_limit=2, trust_proxy=True)
    for spoofed in ("1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"):
        forwarded = f"{spoofed}, 198.51.100.7"  # our proxy appended what it saw, last
        client.get(PIXEL, query="p=/", headers={"sec-gpc": "1", "x-forwarded-for": forwarded})
    assert count(client) == 2


def test_forwarded_for_is_ignored_unless_trusted(client_for: Any) -> None:
    client: Client = client_for(pixel_rate_limit=2)
    for ip in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        client.get(PIXEL, query="p=/", headers={"sec-gpc": "1", "x-forwarded-for": ip})
    assert count(client) == 2  # all from the one real client address


def test_allowed_hosts_count_only_their_pages(client_for: Any) -> None:
    client: Client = client_for(allowed_hosts=("example.com",))
    client.get(PIXEL, headers={"referer": "https://example.com/a"}, host="example.com")
    client.get(PIXEL, headers={"referer": "https://copycat.example/a"}, host="example.com")
    client.get(PIXEL, headers={"referer": "http://[::1"}, host="example.com")
    assert count(client) == 1


def test_the_limiter_table_is_bounded() -> None:
    limiter = RateLimiter(1, max_keys=3)
    assert all(limiter.allow(k, now=0) for k in "abc")
    assert limiter.allow("d", now=0) and limiter.allow("d", now=0)  # unseen keys pass
    assert not limiter.allow("a", now=0)
    assert limiter.allow("a", now=61)  # a new minute
