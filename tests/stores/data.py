"""Events for the store suite: a realistic, seeded mix, and report comparison helpers."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

from trackmw.events import ConsentChoice, PageView
from trackmw.report import Report

START = date(2026, 11, 20)
CLASSES = (
    ("Chrome", "Windows", "desktop"),
    ("Mobile Safari", "iOS", "mobile"),
    ("Firefox", "Ubuntu", "desktop"),
    ("Chrome Mobile", "Android", "tablet"),
    ("Safari", "Mac OS X", "desktop"),
)
PAGES = (
    "/",
    "/about",
    "/blog/1",
    "/blog/2",
    "/shop?utm_campaign=autumn",
    "/über",
    "/a:b c",
    "/" + "x" * 300,
)
REFERRERS = (None, None, None, "news.example.org", "search.example.com", "mail.example.net")
CAMPAIGNS = (None, None, None, None, "newsletter-2026-11", "autumn")
USERS = {"v01": "alice", "v02": "bob", "v03": "alice", "v07": "carol"}


def ts_of(day: date, second: int) -> float:
    """A timestamp ``second`` seconds into ``day`` (UTC)."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return midnight.timestamp() + second + 0.25


def pageview(
    day: date,
    second: int,
    visitor: str | None,
    path: str = "/",
    *,
    referrer: str | None = None,
    campaign: str | None = None,
    user: str | None = None,
    cls: tuple[str, str, str] = CLASSES[0],
    bot: bool = False,
) -> PageView:
    """A page view as the pipeline would normalize it (no ids or classes when anonymous)."""
    if bot or visitor is None:
        return PageView(
            ts_of(day, second),
            day.isoformat(),
            None,
            None,
            path,
            referrer,
            campaign,
            None,
            None,
            None,
            bot,
        )
    return PageView(
        ts_of(day, second), day.isoformat(), visitor, user, path, referrer, campaign, *cls, False
    )


def named_batch(name: str, n: int) -> list[PageView]:
    """``n`` page views of seven visitors on ``START``, at pages ``/NAME/i``: a batch
    whose pages say which batch wrote them."""
    return [pageview(START, i, f"v{i % 7}", f"/{name}/{i}") for i in range(n)]


def consent(day: date, second: int, visitor: str | None, analytics: bool) -> ConsentChoice:
    return ConsentChoice(
        ts_of(day, second),
        day.isoformat(),
        visitor,
        analytics,
        analytics,
        "1" if second % 2 else "2",
    )


def events(
    seed: int = 5, n: int = 600, days: int = 4, visitors: int = 15
) -> tuple[list[PageView], list[ConsentChoice]]:
    """``n`` page views over ``days`` days from ``START``, and some consent choices."""
    rng = random.Random(seed)
    ids = [f"v{i:02d}" for i in range(visitors)]
    cls = {vid: rng.choice(CLASSES) for vid in ids}
    pvs: list[PageView] = []
    for _ in range(n):
        day = START + timedelta(days=rng.randrange(days))
        second = rng.randrange(86400)
        path, ref, camp = rng.choice(PAGES), rng.choice(REFERRERS), rng.choice(CAMPAIGNS)
        roll = rng.random()
        if roll < 0.07:
            pvs.append(pageview(day, second, None, path, referrer=ref, bot=True))
        elif roll < 0.2:
            pvs.append(pageview(day, second, None, path, referrer=ref, campaign=camp))
        else:
            vid = rng.choice(ids)
            pvs.append(
                pageview(
                    day,
                    second,
                    vid,
                    path,
                    referrer=ref,
                    campaign=camp,
                    user=USERS.get(vid) if rng.random() < 0.7 else None,
                    cls=cls[vid],
                )
            )
    choices = [
        consent(
            START + timedelta(days=rng.randrange(days)),
            rng.randrange(86400),
            rng.choice([*ids, None]),
            rng.random() < 0.7,
        )
        for _ in range(40)
    ]
    return pvs, choices


def batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _approx(actual: int, expected: int) -> bool:
    return abs(actual - expected) <= max(1, round(expected * 0.02))


#: The report fields every store counts exactly (unique counts may be estimates).
EXACT_FIELDS = (
    "since",
    "until",
    "pageviews",
    "anonymous_pageviews",
    "bot_hits",
    "referrers",
    "campaigns",
    "consent",
)


def assert_same_report(actual: Report, expected: Report, estimated: bool = False) -> None:
    """``actual`` equals the reference ``expected``; unique counts within 2 % if estimated."""
    a, e = actual.to_dict(), expected.to_dict()
    if not estimated:
        assert a == e
        return
    for key in EXACT_FIELDS:
        assert a[key] == e[key], key
    for key in ("visitors", "registered_visitors"):
        assert _approx(a[key], e[key]), (key, a[key], e[key])
    assert [d["pageviews"] for d in a["days"]] == [d["pageviews"] for d in e["days"]]
    for ad, ed in zip(a["days"], e["days"], strict=True):
        assert _approx(ad["visitors"], ed["visitors"]), (ad, ed)
    assert [(p["path"], p["pageviews"]) for p in a["pages"]] == [
        (p["path"], p["pageviews"]) for p in e["pages"]
    ]
    for ap, ep in zip(a["pages"], e["pages"], strict=True):
        assert _approx(ap["visitors"], ep["visitors"]), (ap, ep)
    for key in ("browsers", "os", "devices"):
        got = {r["name"]: r["visitors"] for r in a[key]}
        want = {r["name"]: r["visitors"] for r in e[key]}
        assert got.keys() == want.keys(), key
        assert all(_approx(got[k], want[k]) for k in want), (key, got, want)
