"""The visitor report: ``Report`` and its JSON document.

Every store returns the same ``Report`` for the same events; ``build_report`` is the
reference implementation over plain page views (the memory store uses it, and the store
conformance suite compares every other store against it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from .events import ConsentChoice, PageView

__all__ = ["DEFAULT_DAYS", "TOP_N", "Report", "build_report", "day_range", "days_before"]

#: Breakdowns (pages, referrers, …) list at most this many rows, the largest first.
TOP_N = 100


@dataclass
class Report:
    """Visitor counts for the days ``since`` to ``until`` (both included).

    >>> Report(since=date(2026, 11, 1), until=date(2026, 11, 1)).to_dict()["pageviews"]
    0
    """

    since: date
    until: date
    pageviews: int = 0
    visitors: int = 0
    registered_visitors: int = 0
    anonymous_pageviews: int = 0
    bot_hits: int = 0
    days: list[dict[str, Any]] = field(default_factory=list)
    pages: list[dict[str, Any]] = field(default_factory=list)
    browsers: list[dict[str, Any]] = field(default_factory=list)
    os: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    referrers: list[dict[str, Any]] = field(default_factory=list)
    campaigns: list[dict[str, Any]] = field(default_factory=list)
    consent: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})

    def __post_init__(self) -> None:
        if not self.days:
            self.days = [
                {"day": d.isoformat(), "pageviews": 0, "visitors": 0}
                for d in day_range(self.since, self.until)
            ]

    def to_dict(self) -> dict[str, Any]:
        """The report as the SPEC's JSON document (plain dicts, lists, str and int)."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "pageviews": self.pageviews,
            "visitors": self.visitors,
            "registered_visitors": self.registered_visitors,
            "anonymous_pageviews": self.anonymous_pageviews,
            "bot_hits": self.bot_hits,
            "days": [dict(d) for d in self.days],
            "pages": [dict(p) for p in self.pages],
            "browsers": [dict(b) for b in self.browsers],
            "os": [dict(o) for o in self.os],
            "devices": [dict(d) for d in self.devices],
            "referrers": [dict(r) for r in self.referrers],
            "campaigns": [dict(c) for c in self.campaigns],
            "consent": dict(self.consent),
        }


def day_range(since: date, until: date) -> list[date]:
    return [since + timedelta(days=i) for i in range((until - since).days + 1)]


#: Days a report covers when no start is given (today and the 29 before it).
DEFAULT_DAYS = 30


def days_before(day: date, days: int) -> date:
    """``day`` less ``days`` (0 or more) days; ``ValueError`` when that falls before the
    year 1, which ``date`` cannot hold (a report's default start, a purge's cut).

    >>> days_before(date(2026, 11, 30), 29), days_before(date(1, 1, 30), 29)
    (datetime.date(2026, 11, 1), datetime.date(1, 1, 1))
    """
    if days > day.toordinal() - 1:
        raise ValueError(f"{days} days before {day} is before the year 1")
    return day - timedelta(days=days)


def ranked(counts: dict[str, int], key: str, limit: int = TOP_N) -> list[dict[str, Any]]:
    """Rows ``{"name": …, key: n}``, largest first, ties by name: the order every store uses."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [{"name": name, key: n} for name, n in rows]


def build_report(
    pageviews: Iterable[PageView],
    consents: Iterable[ConsentChoice],
    since: date,
    until: date,
) -> Report:
    """Compute a report from raw page views in Python (reference implementation)."""
    lo, hi = since.isoformat(), until.isoformat()
    report = Report(since=since, until=until)
    visitors: set[str] = set()
    users: set[str] = set()
    day_pv: Counter[str] = Counter()
    day_vis: dict[str, set[str]] = defaultdict(set)
    page_pv: Counter[str] = Counter()
    page_vis: dict[str, set[str]] = defaultdict(set)
    by_class: dict[str, dict[str, set[str]]] = {"browser": {}, "os": {}, "device": {}}
    referrers: Counter[str] = Counter()
    campaigns: Counter[str] = Counter()
    for pv in pageviews:
        if not lo <= pv.day <= hi:
            continue
        if pv.bot:
            report.bot_hits += 1
            continue
        report.pageviews += 1
        day_pv[pv.day] += 1
        page_pv[pv.path] += 1
        if pv.referrer:
            referrers[pv.referrer] += 1
        if pv.campaign:
            campaigns[pv.campaign] += 1
        if pv.visitor_id is None:
            report.anonymous_pageviews += 1
            continue
        vid = pv.visitor_id
        visitors.add(vid)
        day_vis[pv.day].add(vid)
        page_vis[pv.path].add(vid)
        if pv.user_id:
            users.add(pv.user_id)
        for kind, value in (("browser", pv.browser), ("os", pv.os), ("device", pv.device)):
            if value:
                by_class[kind].setdefault(value, set()).add(vid)
    report.visitors = len(visitors)
    report.registered_visitors = len(users)
    report.days = [
        {"day": d, "pageviews": day_pv[d], "visitors": len(day_vis.get(d, ()))}
        for d in (x.isoformat() for x in day_range(since, until))
    ]
    pages = sorted(page_pv.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
    report.pages = [
        {"path": path, "pageviews": n, "visitors": len(page_vis.get(path, ()))} for path, n in pages
    ]
    report.browsers = ranked({k: len(v) for k, v in by_class["browser"].items()}, "visitors")
    report.os = ranked({k: len(v) for k, v in by_class["os"].items()}, "visitors")
    report.devices = ranked({k: len(v) for k, v in by_class["device"].items()}, "visitors")
    report.referrers = ranked(dict(referrers), "pageviews")
    report.campaigns = ranked(dict(campaigns), "pageviews")
    accepted = rejected = 0
    for choice in consents:
        if lo <= choice.day <= hi:
            if choice.analytics:
                accepted += 1
            else:
                rejected += 1
    report.consent = {"accepted": accepted, "rejected": rejected}
    return report
