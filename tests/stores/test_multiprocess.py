"""Many processes on one store: 4 gunicorn workers (the Flask example) and 2 uvicorn
processes (the Starlette example) take 4,000 pixel hits from 40 visitors; after they
are stopped with SIGTERM the store holds exactly 4,000 page views and 40 visitors
(give or take two for HyperLogLog)."""

from __future__ import annotations

import signal
from datetime import date, timedelta

import pytest

from trackmw.stores import open_store

from .servers import Site, send_hits, site_env, visitor_cookies

pytestmark = [pytest.mark.services, pytest.mark.server]

HITS, VISITORS = 4_000, 40


@pytest.mark.parametrize("store_kind", ["postgresql", "redis", "redis-hll"])
def test_six_processes_count_every_hit_exactly_once(store_url: str, store_kind: str) -> None:
    uniques = "hll" if store_kind == "redis-hll" else "exact"
    env = site_env(store_url, redis_uniques=uniques)
    sites = [Site("gunicorn", env, workers=4), Site("uvicorn", env), Site("uvicorn", env)]
    try:
        for site in sites:
            site.wait_ready()
        cookies = visitor_cookies(sites[0].url, VISITORS)
        codes = send_hits(
            (sites[i % len(sites)].url, cookies[i % VISITORS], f"/page/{i % 7}")
            for i in range(HITS)
        )
        assert codes == [200] * HITS
    finally:
        for site in sites:
            site.stop()
    # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean stop there.
    assert [site.proc.returncode in (0, -signal.SIGTERM) for site in sites] == [True] * 3
    store = open_store(store_url)
    try:
        today = date.today()
        report = store.report(today - timedelta(days=1), today)
    finally:
        store.close()
    assert report.pageviews == HITS
    assert report.anonymous_pageviews == 0
    assert sum(p["pageviews"] for p in report.pages) == HITS
    if store_kind == "redis-hll":
        # Two of 40 random ids share one of Redis' 16,384 registers about one run in
        # twenty (40² / 2 / 16,384), and the estimate is then one short; two such pairs,
        # about one run in 900. "Within 2 %" of 40 allowed no error at all, so this
        # failed that often. Lost or doubled hits are caught by the exact page view
        # counts above, in every mode.
        assert abs(report.visitors - VISITORS) <= 2
    else:
        assert report.visitors == VISITORS
        assert all(p["visitors"] == VISITORS for p in report.pages)  # i % 7 meets every i % 40
