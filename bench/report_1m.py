"""How fast is a 30-day report over 1,000,000 stored events in SQLite, and how fast are writes?

``run(path=None, events=1_000_000)`` fills a fresh SQLite store with synthetic page views
(about 50,000 visitors over 45 days, a few hundred pages, a realistic mix of browsers,
referrers and campaigns, in sessions of a few pages), times ``store.write`` (events per
second, in batches the size the pipeline uses) and then a 30-day ``store.report()``
(cold, on a fresh connection, and warm), and returns the figures.
``on_servers`` does the same fill and report on Redis (HyperLogLog uniques) and
PostgreSQL, when they are reachable (``bench.stores`` names them).
``make bench`` calls both; ``python -m bench.report_1m`` prints them on its own.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

from trackmw.events import ConsentChoice, PageView
from trackmw.report import Report
from trackmw.signing import base64url
from trackmw.stores import open_store
from trackmw.stores.sqlite import SQLiteStore

__all__ = ["generate", "in_time_order", "on_servers", "run", "visitor_ids"]

DAYS = 45
VISITORS = 50_000
PAGES = 300
BATCH = 1_000  # the pipeline's default batch_size

_CLASSES = [  # (browser, os, device, weight)
    ("Chrome", "Windows", "desktop", 30), ("Chrome Mobile", "Android", "mobile", 25),
    ("Mobile Safari", "iOS", "mobile", 18), ("Safari", "Mac OS X", "desktop", 8),
    ("Firefox", "Windows", "desktop", 5), ("Edge", "Windows", "desktop", 5),
    ("Chrome", "Mac OS X", "desktop", 4), ("Mobile Safari", "iOS", "tablet", 2),
    ("Samsung Internet", "Android", "mobile", 2), ("Firefox", "Linux", "desktop", 1),
]
_REFERRERS = [None] * 12 + [
    "www.google.com", "news.example.org", "duckduckgo.com", "www.bing.com",
    "t.co", "www.reddit.com", "lobste.rs", "news.ycombinator.com",
] + [f"blog{i}.example.net" for i in range(40)]


def generate(
    events: int = 1_000_000, *, until: date | None = None, seed: int = 1
) -> Iterator[PageView]:
    """Synthetic page views, in sessions, over ``DAYS`` days ending ``until``."""
    rng = random.Random(seed)
    until = until or date.today()
    days = [(until - timedelta(days=i)).isoformat() for i in range(DAYS)]
    day_ts = {d: time.mktime(date.fromisoformat(d).timetuple()) for d in days}
    pages = ["/"] + [f"/articles/{i}" for i in range(1, PAGES)]
    page_weights = [1 / (i + 1) for i in range(PAGES)]  # Zipf-like popularity
    classes = [c[:3] for c in _CLASSES]
    class_weights = [c[3] for c in _CLASSES]
    visitor_class = [rng.choices(classes, class_weights)[0] for _ in range(VISITORS)]
    visitor_user = [f"user{v}" if v % 9 == 0 else None for v in range(VISITORS)]
    visitor_id = visitor_ids(seed)
    made = 0
    while made < events:
        v = min(int(rng.paretovariate(1.2)) - 1, VISITORS - 1)  # heavy and casual visitors
        v = (v * 7919 + rng.randrange(VISITORS)) % VISITORS if rng.random() < 0.9 else v
        day = rng.choice(days)
        ts = day_ts[day] + rng.randrange(86_400)
        browser, os_name, device = visitor_class[v]
        referrer = rng.choice(_REFERRERS)
        campaign = f"newsletter-{rng.randrange(12)}" if rng.random() < 0.03 else None
        anonymous = rng.random() < 0.07
        for page in rng.choices(pages, page_weights, k=min(1 + int(rng.expovariate(1 / 3)), 20)):
            if made >= events:
                break
            made += 1
            # A fraction of a second, as time.time() gives (and as costly to write out
            # as its digits are), drawn without changing the draws above.
            at = ts + (made * 0.6180339887498949) % 1.0
            if rng.random() < 0.02:
                yield PageView(at, day, None, None, page, None, None, None, None, None, True)
            elif anonymous:
                yield PageView(at, day, None, None, page, referrer, campaign,
                               None, None, None, False)
            else:
                yield PageView(at, day, visitor_id[v], visitor_user[v], page, referrer,
                               campaign, browser, os_name, device, False)
            referrer = campaign = None
            ts += rng.randrange(5, 120)


def in_time_order(events: int, until: date, seed: int = 1) -> list[PageView]:
    """``generate``'s page views sorted by time: what a live site's batches hold (the
    last second's events), where ``generate``'s order spreads every batch over all days."""
    return sorted(generate(events, until=until, seed=seed), key=lambda pv: pv.ts)


@functools.lru_cache(maxsize=4)
def visitor_ids(seed: int) -> list[str]:
    """The ``VISITORS`` visitors' ids, as trackmw issues them (``Core.new_id``: 128
    random bits, 22 characters), drawn from ``seed``. Shorter ids would make rows keyed
    by them (SQLite's ids, the indexes) smaller than a live site's."""
    rng = random.Random(seed + 2)
    return [base64url(rng.randbytes(16)).decode("ascii") for _ in range(VISITORS)]


def _consents(n: int, until: date, seed: int) -> list[ConsentChoice]:
    rng = random.Random(seed + 1)
    ids = visitor_ids(seed)
    out = []
    for i in range(n):
        day = (until - timedelta(days=rng.randrange(DAYS))).isoformat()
        out.append(ConsentChoice(0.0, day, ids[i % VISITORS], rng.random() < 0.8, True, "1"))
    return out


def run(path: str | None = None, events: int = 1_000_000, *, quiet: bool = False) -> dict[str, Any]:
    """Fill a store at ``path`` (a temporary file by default) and time writes and the report.

    The events are written in time order (``in_time_order``). ``events_per_second_full``
    is the rate of the fill's last fifth, written into a store already holding the
    first four (a site with history: a batch then finds the rows it adds to among
    more of them than in an empty store).

    Returns ``{"events", "write_seconds", "events_per_second", "events_per_second_full",
    "report_ms_cold", "report_ms_warm", "db_mb"}``.
    """
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="trackmw-bench-")
        path = os.path.join(tmp.name, "bench.db")
    try:
        until = date.today()
        store = SQLiteStore(f"sqlite:///{path}")
        rows = in_time_order(events, until)
        consents = _consents(5_000, until, 1)
        last_fifth = max(0, len(rows) - max(1, len(rows) // 5 // BATCH) * BATCH)
        start = full_start = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            if i == last_fifth:
                full_start = time.perf_counter()
            store.write(rows[i:i + BATCH], consents[i // BATCH * 5:(i // BATCH + 1) * 5])
        end = time.perf_counter()
        write_s = end - start
        store.close()
        since = until - timedelta(days=29)
        report, cold, warm = _report_times(f"sqlite:///{path}", since, until)
        size = sum(
            os.path.getsize(path + ext) for ext in ("", "-wal") if os.path.exists(path + ext)
        )
        result = {
            "events": len(rows),
            "write_seconds": round(write_s, 2),
            "events_per_second": round(len(rows) / write_s),
            "events_per_second_full": round((len(rows) - last_fifth) / (end - full_start)),
            "report_ms_cold": round(cold * 1000, 1),
            "report_ms_warm": round(warm * 1000, 1),
            "report_pageviews": report.pageviews,
            "report_visitors": report.visitors,
            "db_mb": round(size / 1e6, 1),
        }
        if not quiet:
            print(
                f"sqlite write: {result['events']:,} events in {write_s:.2f}s "
                f"({result['events_per_second']:,} events/s, batches of {BATCH}; the last "
                f"fifth {result['events_per_second_full']:,} events/s)\n"
                f"sqlite 30-day report over {result['events']:,} events: "
                f"{result['report_ms_cold']} ms cold, {result['report_ms_warm']} ms warm "
                f"({report.pageviews:,} page views, {report.visitors:,} visitors; "
                f"database {result['db_mb']} MB)"
            )
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def on_servers(events: int = 1_000_000, *, quiet: bool = False) -> dict[str, Any]:
    """The 30-day report over ``events`` on Redis (HyperLogLog uniques) and PostgreSQL.

    Each is filled with the same events as ``run`` fills SQLite (``bench.stores.write_rate``:
    ``send`` per batch, as the pipeline writes), PostgreSQL's tables are analyzed
    (``_analyze``), then each is reported on from a new
    store object: ``report_ms_cold`` is its first report, on
    fresh connections (the server's own caches stay warm), ``report_ms_warm`` the best
    of five after it. Returns ``{name: {"report_ms_cold", "report_ms_warm",
    "report_visitors"} or None, "notes": [...]}``; ``None`` when the server could not be
    reached.
    """
    from .stores import _postgres, _redis, write_rate  # bench.stores imports this module

    until = date.today()
    since = until - timedelta(days=29)
    rows = in_time_order(events, until)
    consents = _consents(5_000, until, 1)
    out: dict[str, Any] = {"notes": []}
    for name, make in (("redis", lambda: _redis("hll")), ("postgres", _postgres)):
        url, cleanup = make()
        try:
            store = open_store(url)
            try:
                write_rate(store, rows, consents)  # the fill: its rate is not reported here
            finally:
                store.close()
            if name == "postgres":
                _analyze(url)
                out["notes"].append("report: PostgreSQL's tables analyzed before timing its "
                                    "report, as autovacuum would soon after such a load")
            report, cold, warm = _report_times(url, since, until)
            timed = out[name] = {
                "report_ms_cold": round(cold * 1000, 1),
                "report_ms_warm": round(warm * 1000, 1),
                "report_visitors": report.visitors,
            }
            if not quiet:
                print(f"{name} 30-day report over {len(rows):,} events: "
                      f"{timed['report_ms_cold']} ms cold, {timed['report_ms_warm']} ms warm "
                      f"({report.pageviews:,} page views, {report.visitors:,} visitors)")
        except Exception as exc:  # a server down or lost midway: skipped, the bench goes on
            out[name] = None
            out["notes"].append(f"report: {name} skipped: {type(exc).__name__}: {exc}")
        finally:
            try:
                cleanup()
            except Exception as exc:  # a server that is down has nothing to clean
                out["notes"].append(f"report: {name} cleanup: {type(exc).__name__}")
    return out


def _analyze(url: str) -> None:
    """Give the planner its statistics, as autovacuum would within a minute of the fill:
    without them it sorts what it would hash (a report took 1.2 s instead of 0.9 s)."""
    from urllib.parse import parse_qsl, urlsplit

    import psycopg

    from .stores import PG_URL

    schema = dict(parse_qsl(urlsplit(url).query))["schema"]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for table in ("pageviews", "daily_visitors", "daily_counts", "consents"):
            conn.execute(f'ANALYZE "{schema}".{table}')


def _report_times(url: str, since: date, until: date) -> tuple[Report, float, float]:
    """The report of ``since``..``until`` from a new store object at ``url``, the seconds
    it took (cold: new connections, the server's own caches as they are), and the best
    of five after it (warm)."""
    store = open_store(url)
    try:
        start = time.perf_counter()
        report = store.report(since, until)
        cold = time.perf_counter() - start
        warm = math.inf
        for _ in range(5):
            start = time.perf_counter()
            store.report(since, until)
            warm = min(warm, time.perf_counter() - start)
        return report, cold, warm
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report_1m", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--db", help="keep the database at this path (default: a temp file)")
    args = parser.parse_args(argv)
    run(args.db, args.events)
    on_servers(args.events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
