"""The store contract, run against every store: memory, SQLite, Redis (exact and
HyperLogLog), Redis Cluster and PostgreSQL. A new store is done when it passes this file.

Reports are compared with ``build_report`` (the reference) over the same events, and
with numbers worked out by hand.
"""

from __future__ import annotations

import importlib
import time
from datetime import date, timedelta
from typing import Any

import pytest

from trackmw.events import ConsentChoice, PageView
from trackmw.report import TOP_N, Report, build_report
from trackmw.stores import Store, base, open_store

from .conftest import STORES
from .data import (
    CLASSES,
    EXACT_FIELDS,
    START,
    USERS,
    assert_same_report,
    batches,
    consent,
    events,
    pageview,
)

pytestmark = pytest.mark.services

D0, D1, D2, D3 = (START + timedelta(days=i) for i in range(4))
LAST = D3


@pytest.fixture
def estimated(store_kind: str) -> bool:
    return store_kind == "redis-hll"


def test_an_empty_store_reports_zeros(store: Store) -> None:
    assert store.report(D0, D1).to_dict() == Report(since=D0, until=D1).to_dict()


def test_hand_computed_report(store: Store) -> None:
    chrome, safari = CLASSES[0], CLASSES[1]
    store.write(
        [
            pageview(D0, 10, "a", "/", referrer="news.example.org", cls=chrome),
            pageview(D0, 20, "a", "/about", cls=chrome, user="alice"),
            pageview(D0, 30, "b", "/", campaign="autumn", cls=safari),
            pageview(D0, 40, None, "/", referrer="news.example.org"),
            pageview(D0, 50, None, "/robots", bot=True),
            pageview(D1, 10, "b", "/about", cls=safari, user="bob"),
            pageview(D1, 20, "c", "/about", cls=chrome, user="alice"),
        ],
        [consent(D0, 1, "a", True), consent(D0, 2, "b", True), consent(D1, 3, None, False)],
    )
    r = store.report(D0, D1).to_dict()
    assert r == {
        "since": D0.isoformat(),
        "until": D1.isoformat(),
        "pageviews": 6,
        "visitors": 3,
        "registered_visitors": 2,
        "anonymous_pageviews": 1,
        "bot_hits": 1,
        "days": [
            {"day": D0.isoformat(), "pageviews": 4, "visitors": 2},
            {"day": D1.isoformat(), "pageviews": 2, "visitors": 2},
        ],
        "pages": [
            {"path": "/", "pageviews": 3, "visitors": 2},  # ties: by path
            {"path": "/about", "pageviews": 3, "visitors": 3},
        ],
        "browsers": [{"name": "Chrome", "visitors": 2}, {"name": "Mobile Safari", "visitors": 1}],
        "os": [{"name": "Windows", "visitors": 2}, {"name": "iOS", "visitors": 1}],
        "devices": [{"name": "desktop", "visitors": 2}, {"name": "mobile", "visitors": 1}],
        "referrers": [{"name": "news.example.org", "pageviews": 2}],
        "campaigns": [{"name": "autumn", "pageviews": 1}],
        "consent": {"accepted": 2, "rejected": 1},
    }
    one_day = store.report(D1, D1)
    assert (one_day.pageviews, one_day.visitors, one_day.bot_hits) == (2, 2, 0)
    assert one_day.consent == {"accepted": 0, "rejected": 1}


def test_every_report_field_matches_the_reference(store: Store, estimated: bool) -> None:
    pvs, choices = events()
    for pv_batch, c_batch in zip(batches(pvs, 97), batches(choices, 7) + [[]] * 10, strict=False):
        store.write(pv_batch, c_batch)
    for since, until in (
        (D0, LAST),
        (D1, D1),
        (D0 - timedelta(days=3), D1),
        (D2, LAST + timedelta(days=5)),
    ):
        expected = build_report(pvs, choices, since, until)
        assert_same_report(store.report(since, until), expected, estimated)


def test_batches_sent_one_after_another_are_each_written_once_by_sync(
    store: Store, estimated: bool
) -> None:
    # As the pipeline's writer sends what it found buffered (Redis plans each batch
    # while its server runs the one before), then waits for all of them.
    pvs, choices = events()
    for pv_batch, c_batch in zip(batches(pvs, 97), batches(choices, 7) + [[]] * 10, strict=False):
        store.send(pv_batch, c_batch)
    store.sync()
    store.sync()  # nothing left: a no-op
    assert_same_report(store.report(D0, LAST), build_report(pvs, choices, D0, LAST), estimated)


def test_pages_list_the_top_hundred_largest_first_ties_by_path(store: Store) -> None:
    pvs = [pageview(D0, i, f"v{i % 7}", f"/p{i % 130:03d}") for i in range(130)]
    pvs += [pageview(D0, 200 + i, "v1", "/p129") for i in range(3)]  # the largest
    store.write(pvs, [])
    pages = store.report(D0, D0).pages
    assert len(pages) == TOP_N
    assert pages[0] == {"path": "/p129", "pageviews": 4, "visitors": 2}
    assert [p["path"] for p in pages[1:4]] == ["/p000", "/p001", "/p002"]
    assert pages == build_report(pvs, [], D0, D0).pages


def test_writes_from_several_batches_add_up(store: Store) -> None:
    for i in range(5):
        store.write([pageview(D0, i, "same", "/")], [consent(D0, i, "same", i % 2 == 0)])
    r = store.report(D0, D0)
    assert (r.pageviews, r.visitors, r.pages[0]["visitors"]) == (5, 1, 1)
    assert r.consent == {"accepted": 3, "rejected": 2}


def test_an_empty_batch_is_accepted(store: Store) -> None:
    store.write([], [])
    assert store.report(D0, D0).pageviews == 0


def test_visitor_data_holds_the_visitors_own_events_oldest_first(store: Store) -> None:
    store.write(
        [
            pageview(D1, 5, "me", "/later", user="alice"),
            pageview(D0, 5, "me", "/first"),
            pageview(D0, 6, "other", "/not-mine"),
            pageview(D0, 7, None, "/anonymous"),
        ],
        [consent(D0, 1, "me", True), consent(D0, 2, "other", False)],
    )
    data = store.visitor_data("me")
    assert [p["page"] for p in data["pageviews"]] == ["/first", "/later"]
    assert data["pageviews"][0]["time"] == "2026-11-20T00:00:05+00:00"
    assert data["consents"] == [
        {
            "time": "2026-11-20T00:00:01+00:00",
            "analytics": True,
            "preferences": True,
            "policy_version": "1",
        }
    ]
    assert data["user_ids"] == ["alice"]
    assert store.visitor_data("nobody") == {"pageviews": [], "consents": [], "user_ids": []}


def test_erasing_a_visitor_removes_it_from_data_and_counts(
    store: Store, store_kind: str, estimated: bool
) -> None:
    pvs, choices = events()
    store.write(pvs, choices)
    victim = "v05"
    mine = sum(1 for p in pvs if p.visitor_id == victim)
    mine += sum(1 for c in choices if c.visitor_id == victim)
    assert mine > 0
    assert store.erase(victim) == mine
    assert store.visitor_data(victim) == {"pageviews": [], "consents": [], "user_ids": []}
    rest = [p for p in pvs if p.visitor_id != victim]
    rest_c = [c for c in choices if c.visitor_id != victim]
    actual, expected = store.report(D0, LAST), build_report(rest, rest_c, D0, LAST)
    if estimated:
        # A HyperLogLog cannot un-count a member: everything else is exact.
        a, e = actual.to_dict(), expected.to_dict()
        for key in EXACT_FIELDS:
            assert a[key] == e[key], key
        assert e["visitors"] <= a["visitors"] <= e["visitors"] + 1
    else:
        assert_same_report(actual, expected)
    assert store.erase(victim) == 0


def test_erasing_with_a_user_removes_that_users_page_views_from_every_visitor(
    store: Store, estimated: bool
) -> None:
    pvs, choices = events()
    store.write(pvs, choices)
    alice_visitors = {v for v, u in USERS.items() if u == "alice"}
    gone = [p for p in pvs if p.visitor_id == "v01" or p.user_id == "alice"]
    gone_c = [c for c in choices if c.visitor_id == "v01"]
    assert store.erase("v01", "alice") == len(gone) + len(gone_c)
    rest = [p for p in pvs if p not in gone]
    rest_c = [c for c in choices if c not in gone_c]
    # v03 (also alice) keeps its page views made while logged out, and its consents.
    left = store.visitor_data("v03")
    assert left["user_ids"] == []
    assert len(left["pageviews"]) == sum(1 for p in rest if p.visitor_id == "v03")
    assert alice_visitors == {"v01", "v03"}
    expected = build_report(rest, rest_c, D0, LAST)
    if estimated:  # a HyperLogLog cannot un-count alice; page views are exact
        assert store.report(D0, LAST).pageviews == expected.pageviews
    else:
        assert_same_report(store.report(D0, LAST), expected)


def test_consent_records_are_counted_per_day(store: Store) -> None:
    store.write(
        [],
        [
            consent(D0, 1, "a", True),
            consent(D0, 2, None, False),
            consent(D1, 3, "b", False),
            consent(D2, 4, "c", True),
        ],
    )
    assert store.report(D0, D0).consent == {"accepted": 1, "rejected": 1}
    assert store.report(D0, D2).consent == {"accepted": 2, "rejected": 2}
    assert store.visitor_data("b")["consents"][0]["analytics"] is False


def test_purge_removes_days_before_the_cutoff(store: Store, estimated: bool) -> None:
    pvs, choices = events()
    store.write(pvs, choices)
    cut = D2.isoformat()
    old = sum(1 for p in pvs if p.day < cut) + sum(1 for c in choices if c.day < cut)
    assert store.purge(D2) == old
    assert store.report(D0, D1).to_dict() == Report(since=D0, until=D1).to_dict()
    kept = [p for p in pvs if p.day >= cut]
    kept_c = [c for c in choices if c.day >= cut]
    assert_same_report(store.report(D0, LAST), build_report(kept, kept_c, D0, LAST), estimated)
    data = store.visitor_data("v04")
    assert len(data["pageviews"]) == sum(1 for p in kept if p.visitor_id == "v04")
    assert all(p["time"] >= cut for p in data["pageviews"])
    assert store.purge(D2) == 0


def test_data_survives_closing_and_reopening(store_url: str, store_kind: str) -> None:
    first = open_store(store_url)
    first.write([pageview(D0, 1, "a")], [])
    first.close()
    first.write([pageview(D0, 2, "b")], [])  # a closed store reconnects
    first.close()
    again = open_store(store_url)
    try:
        assert again.report(D0, D0).pageviews == 2
        assert again.visitor_data("a")["pageviews"][0]["page"] == "/"
    finally:
        again.close()


def test_reports_never_include_days_outside_the_range(store: Store) -> None:
    store.write([pageview(D0, 1, "a"), pageview(D2, 1, "b")], [])
    r = store.report(D1, D1)
    assert (r.pageviews, r.visitors, r.pages) == (0, 0, [])
    assert store.report(date(2020, 1, 1), date(2020, 1, 2)).pageviews == 0


def test_a_site_on_the_store_counts_serves_me_and_erases(store_url: str, make_tracker: Any) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from trackmw.asgi import TrackingMiddleware

    tracker = make_tracker(store=store_url, pixel_rate_limit=0)
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("home"))])
    app.add_middleware(TrackingMiddleware, tracker=tracker)
    chrome = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
        "Gecko) Chrome/120.0.0.0 Safari/537.36"
    )
    with TestClient(app, headers={"User-Agent": chrome}) as client:
        assert client.get("/").status_code == 200
        for page in ("/a", "/b", "/a"):
            assert client.get("/_trackmw/pixel.gif", params={"p": page}).status_code == 200
        report = tracker.stats()
        assert (report.pageviews, report.visitors) == (3, 1)
        assert report.browsers == [{"name": "Chrome", "visitors": 1}]
        me = client.get("/_trackmw/me").json()
        assert [p["page"] for p in me["pageviews"]] == ["/a", "/b", "/a"]
        erased = client.delete("/_trackmw/me", headers={"Origin": "http://testserver"})
        assert erased.status_code < 300
        assert tracker.stats().pageviews == 0


def test_erasure_leaves_tombstones_for_the_visitor_and_its_user(store: Store) -> None:
    from trackmw.stores.base import tombstone_key

    before = time.time()
    store.erase("erased-visitor-0000000", "erased-user")
    visitor, user = tombstone_key("v", "erased-visitor-0000000"), tombstone_key("u", "erased-user")
    found = store.erasures([visitor, user, tombstone_key("v", "someone-else")])
    assert set(found) == {visitor, user}
    assert "erased-user" not in repr(found)  # hashed: no erased user id kept in clear
    assert all(before - 1 <= at <= time.time() + 1 for at in found.values())


@pytest.mark.parametrize("store_kind", [k for k in STORES if k != "memory"])
def test_a_batch_after_the_latest_erasure_looks_no_visitor_up(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.erase("gone-visitor", "gone-user")

    def refuse(*args: object) -> None:
        raise AssertionError("looked the batch's visitors up")

    # Where the store finds it: through base.unerased, or imported (Redis).
    for module in (base, importlib.import_module(type(store).__module__)):
        monkeypatch.setattr(module, "erasure_checks", refuse, raising=False)
    later = time.time() + 60
    back = pageview(START, 1, "gone-visitor", "/back")._replace(ts=later)
    # An anonymous view from before the erasure does not count: it is never erased.
    store.send([pageview(START, 2, None), back], [])
    store.sync()
    assert [p["page"] for p in store.visitor_data("gone-visitor")["pageviews"]] == ["/back"]
    assert store.report(START, START).pageviews == 2


def erased_after_batch(after: float) -> tuple[list[PageView], list[ConsentChoice]]:
    """A batch for after ``erase("gone-visitor", "gone-user")``: a crowd (more tombstone
    keys than one slice of Redis's check), the gone visitor before and after the
    erasure, and the gone user's page view on another visitor."""
    crowd = [pageview(START, i % 3600, f"v{i:05d}") for i in range(1200)]
    return [
        *crowd[:700],
        pageview(START, 1, "gone-visitor", "/before"),
        pageview(START, 2, "gone-visitor", "/after")._replace(ts=after),
        pageview(START, 3, "other-visitor", "/as-gone-user", user="gone-user"),
        pageview(START, 4, "other-visitor", "/own"),
        *crowd[700:],
    ], [consent(START, 5, "gone-visitor", True)]


def test_a_sent_batch_leaves_out_the_events_of_visitors_and_users_erased_after_them(
    store: Store,
) -> None:
    store.erase("gone-visitor", "gone-user")
    after = time.time() + 60
    store.send(*erased_after_batch(after))
    # All after the erasure: kept whole (most stores look no visitor up for it).
    store.send([pageview(START, 6, "gone-visitor", "/later")._replace(ts=after + 1)], [])
    store.sync()
    pages = [p["page"] for p in store.visitor_data("gone-visitor")["pageviews"]]
    assert pages == ["/after", "/later"]
    assert store.visitor_data("gone-visitor")["consents"] == []
    assert [p["page"] for p in store.visitor_data("other-visitor")["pageviews"]] == ["/own"]
    assert store.report(START, START).pageviews == 1200 + 3


@pytest.mark.parametrize("store_kind", [k for k in STORES if k != "memory"])
def test_a_store_that_drops_erased_events_does_so_in_write_itself(store: Store) -> None:
    # In the write's own transaction (or script), so the pipeline asks nothing first
    # and no erasure can come between asking and writing.
    store.erase("gone-visitor", "gone-user")
    assert store.drops_erased
    store.write(*erased_after_batch(time.time() + 60))
    assert [p["page"] for p in store.visitor_data("gone-visitor")["pageviews"]] == ["/after"]
    assert store.visitor_data("gone-visitor")["consents"] == []
    assert [p["page"] for p in store.visitor_data("other-visitor")["pageviews"]] == ["/own"]
    assert store.report(START, START).pageviews == 1200 + 2


def test_an_event_timed_at_its_visitors_erasure_is_left_out_one_after_it_kept(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = time.time() + 3600
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: at)
        store.erase("gone-visitor")
    store.send(
        [
            pageview(START, 1, "gone-visitor", "/at")._replace(ts=at),
            pageview(START, 2, "gone-visitor", "/after")._replace(ts=at + 0.001),
        ],
        [],
    )
    store.sync()
    assert [p["page"] for p in store.visitor_data("gone-visitor")["pageviews"]] == ["/after"]


def test_events_without_a_visitor_are_written_whatever_was_erased(store: Store) -> None:
    store.erase("gone-visitor", "gone-user")
    later = time.time() + 60
    store.send([pageview(START, 1, None), pageview(START, 2, None, bot=True)], [])
    store.send([pageview(START, 3, None)._replace(ts=later)], [])
    store.sync()
    report = store.report(START, START)
    assert (report.pageviews, report.anonymous_pageviews, report.bot_hits) == (2, 2, 1)


def test_an_event_buffered_elsewhere_before_an_erasure_is_not_written_after_it(
    store_url: str, make_tracker: Any
) -> None:
    """Two workers on one store: the erasure answered by one, the hit buffered in the
    other before it; when the other flushes, the erased visitor must not come back."""
    from trackmw.events import Hit

    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"
    worker_a = make_tracker(store=store_url, flush_interval=3600)
    worker_b = make_tracker(store=store_url, flush_interval=3600)
    gone, kept = "tombstoned-visitor-000", "surviving-visitor-0000"
    worker_a.pipeline.add(Hit(time.time(), gone, None, "/early", None, None, ua, "h"))
    worker_a.pipeline.add(Hit(time.time(), kept, None, "/kept", None, None, ua, "h"))
    worker_b.erase(gone)
    worker_a.flush()
    worker_a.pipeline.add(Hit(time.time() + 1, gone, None, "/later", None, None, ua, "h"))
    worker_a.flush()
    pages = [p["page"] for p in worker_b.visitor_data(gone)["pageviews"]]
    assert pages == ["/later"]  # what came after the erasure is new data, kept
    assert [p["page"] for p in worker_b.visitor_data(kept)["pageviews"]] == ["/kept"]
