"""A store that goes away never breaks a page or the pixel, and loses nothing it accepted.

- A real site (the Starlette example under uvicorn) on a private Redis takes 2,000 pixel
  hits; Redis is stopped in the middle and started again on the same port. Every page
  and pixel answers 200 throughout, and once Redis is back the store counts all 2,000,
  exactly once.
- A buffer that overflows while the store is down drops the oldest events, counts them
  and logs the count once per interval; what it kept is written when the store is back.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import need_service
from trackmw.events import Hit
from trackmw.pipeline import Pipeline
from trackmw.stores import open_store

from .conftest import RedisServer, free_port, wait_for
from .servers import CHROME, Site, send_hits, site_env, visitor_cookies

pytestmark = [pytest.mark.services, pytest.mark.server]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of our own (append-only file on, so a restart keeps the data)."""
    need_service(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(tmp_path, None, "--appendonly", "yes")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pageviews_in(url: str) -> int:
    store = open_store(url)
    try:
        today = date.today()
        return store.report(today - timedelta(days=1), today).pageviews
    finally:
        store.close()


def test_a_redis_outage_loses_and_duplicates_nothing(private_redis: RedisServer) -> None:
    url = f"redis://127.0.0.1:{private_redis.port}/0?uniques=exact"
    site = Site("uvicorn", site_env(url))
    try:
        site.wait_ready()
        cookies = visitor_cookies(site.url, 20)

        def run(first: int, last: int) -> None:
            codes = send_hits(
                (site.url, cookies[i % 20], f"/outage/{i % 5}") for i in range(first, last)
            )
            assert codes == [200] * (last - first)

        run(0, 700)
        wait_for(lambda: pageviews_in(url) == 700, "the first 700 hits to be written")

        private_redis.stop()
        run(700, 1000)
        with httpx.Client(headers={"User-Agent": CHROME}) as client:
            assert client.get(site.url + "/").status_code == 200  # pages too
            assert client.get(site.url + "/about").status_code == 200
        run(1000, 1400)

        private_redis.start()  # same port, same data directory
        run(1400, 2000)
        wait_for(lambda: pageviews_in(url) == 2000, "every hit to be written", timeout=120)
    finally:
        site.stop()
    assert site.proc.returncode in (0, -signal.SIGTERM)
    store = open_store(url)
    try:
        today = date.today()
        report = store.report(today - timedelta(days=1), today)
    finally:
        store.close()
    assert report.pageviews == 2000  # still: nothing was written twice
    assert report.visitors == 20
    assert sorted((p["path"], p["pageviews"]) for p in report.pages) == [
        (f"/outage/{i}", 400) for i in range(5)]


def hit(i: int) -> Hit:
    return Hit(time.time(), f"v{i % 10}", None, f"/hit/{i}", None, None, CHROME, "example.com")


def test_an_overflowing_buffer_drops_the_oldest_and_logs_the_count_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    need_service(shutil.which("redis-server") is not None, "redis-server is not installed")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0?uniques=exact"  # nothing listens there yet
    pipeline = Pipeline(lambda: open_store(url), buffer_size=100, batch_size=1_000,
                        flush_interval=3600, timezone="UTC")
    pipeline.retry_max = 0.5
    server = RedisServer(tmp_path, port)
    caplog.set_level(logging.ERROR, logger="trackmw")
    try:
        for i in range(150):
            pipeline.add(hit(i))
        assert pipeline.dropped == 50
        assert pipeline.drain() is False  # the store is down: the batch is kept
        for i in range(150, 280):
            pipeline.add(hit(i))
        assert pipeline.dropped == 80
        assert pipeline.drain() is False  # within the same interval: no second drop report
        drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(drops) == 1
        assert "dropped the 50 oldest" in drops[0]

        server.start()
        assert pipeline.drain() is True
        store = open_store(url)
        try:
            assert store.report(date.today(), date.today()).pageviews == 200
            paths = {pv["page"] for v in range(10)
                     for pv in store.visitor_data(f"v{v}")["pageviews"]}
        finally:
            store.close()
        kept = set(range(50, 150)) | set(range(180, 280))  # the newest of each overflow
        assert paths == {f"/hit/{i}" for i in kept}
    finally:
        pipeline.close()
        server.stop()
