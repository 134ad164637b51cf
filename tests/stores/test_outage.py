"""A store that goes away never breaks a page or the pixel, and loses nothing it accepted.

- A real site (the Starlette example under uvicorn) on a private Redis takes 2,000 pixel
  hits; Redis is stopped in the middle and started again on the same port. Every page
  and pixel answers 200 throughout, and once Redis is back the store counts all 2,000,
  exactly once.
- A buffer that overflows while the store is down drops the oldest events, counts them
  and logs the count once per interval; what it kept is written when the store is back.
- A Redis batch between ``send`` and its reply: a reply lost with its connection, a
  Redis stopped meanwhile, a script cache flushed. Each batch is written exactly once.
- A private PostgreSQL restarted under a pipeline: the refused batch is kept, the pool's
  stale connections are replaced, and every event is written exactly once.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bench.local import RedisServer, free_port

from tests.conftest import need_service, wait_for
from tests.servers.running import report_days
from trackmw.errors import StoreError
from trackmw.events import Hit
from trackmw.pipeline import Pipeline
from trackmw.stores import Store, open_store

from .data import START, named_batch
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
        return store.report(*report_days()).pageviews
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
        report = store.report(*report_days())
    finally:
        store.close()
    assert report.pageviews == 2000  # still: nothing was written twice
    assert report.visitors == 20
    assert sorted((p["path"], p["pageviews"]) for p in report.pages) == [
        (f"/outage/{i}", 400) for i in range(5)
    ]


def hit(i: int) -> Hit:
    return Hit(time.time(), f"v{i % 10}", None, f"/hit/{i}", None, None, CHROME, "example.com")


def test_an_overflowing_buffer_drops_the_oldest_and_logs_the_count_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    need_service(shutil.which("redis-server") is not None, "redis-server is not installed")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0?uniques=exact"  # nothing listens there yet
    pipeline = Pipeline(
        lambda: open_store(url),
        buffer_size=100,
        batch_size=1_000,
        flush_interval=3600,
        timezone="UTC",
    )
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
            assert store.report(*report_days()).pageviews == 200
            paths = {
                pv["page"] for v in range(10) for pv in store.visitor_data(f"v{v}")["pageviews"]
            }
        finally:
            store.close()
        kept = set(range(50, 150)) | set(range(180, 280))  # the newest of each overflow
        assert paths == {f"/hit/{i}" for i in kept}
    finally:
        pipeline.close()
        server.stop()


class PostgresServer:
    """A private PostgreSQL (initdb in a temp dir, run as the ``postgres`` user, so the
    test needs root; it skips otherwise)."""

    def __init__(self, directory: Path) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        self.bin = bins[-1] if bins else None
        self.dir = directory / "pg"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def usable(self) -> bool:
        if self.bin is None or os.geteuid() != 0:
            return False
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return True

    def init(self) -> None:
        assert self.bin is not None
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres")
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres"],
            user="postgres",
            group="postgres",
            cwd=self.dir,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        assert self.bin is not None
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.dir),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
            ],
            user="postgres",
            group="postgres",
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.up, f"postgres on port {self.port}")

    def up(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: sessions are cut
            self.proc.wait(60)
            self.proc = None


def test_a_postgres_restart_loses_and_duplicates_nothing() -> None:
    # Not under pytest's tmp_path: the postgres user cannot enter root's private dirs.
    top = Path(tempfile.mkdtemp(prefix="trackmw-pg-"))
    top.chmod(0o755)
    server = PostgresServer(top)
    if not server.usable():
        shutil.rmtree(top)
        need_service(False, "no PostgreSQL binaries (or not root) for a private server")
    try:
        server.init()
        server.start()
        _restart_under_a_pipeline(server)
    finally:
        server.stop()
        shutil.rmtree(top, ignore_errors=True)


def _restart_under_a_pipeline(server: PostgresServer) -> None:
    url = server.url + "?schema=outage"
    pipeline = Pipeline(
        lambda: open_store(url),
        buffer_size=10_000,
        batch_size=1_000,
        flush_interval=3600,
        timezone="UTC",
    )
    try:
        for i in range(300):
            pipeline.add(hit(i))
        assert pipeline.drain() is True  # the pool is open, its connections in use
        server.stop()
        for i in range(300, 600):
            pipeline.add(hit(i))
        assert pipeline.drain() is False  # kept for a retry
        server.start()  # same port, same data
        for i in range(600, 900):
            pipeline.add(hit(i))
        assert pipeline.drain() is True  # stale pooled connections are replaced
        store = open_store(url)
        try:
            report = store.report(*report_days())
        finally:
            store.close()
        assert (report.pageviews, report.visitors) == (900, 10)
    finally:
        pipeline.close()


# -- a batch between ``send`` and its reply (``RedisStore.send``) ------------------------


def _pages(url: str) -> list[str]:
    store = open_store(url)
    try:
        return sorted(
            p["page"] for v in range(7) for p in store.visitor_data(f"v{v}")["pageviews"]
        )
    finally:
        store.close()


@pytest.fixture
def private_store(private_redis: RedisServer) -> Iterator[Store]:
    """A Redis store on the private server, opened; closed after the test."""
    store = open_store(f"redis://127.0.0.1:{private_redis.port}/0?uniques=exact")
    try:
        yield store
    finally:
        store.close()


def test_a_redis_batch_whose_reply_is_lost_with_its_connection_is_written_once(
    private_redis: RedisServer, private_store: Store
) -> None:
    import redis

    store = private_store
    with redis.Redis(port=private_redis.port) as other:
        store.write(named_batch("warm", 1), [])  # the script loaded: sends no longer wait
        store.send(named_batch("one", 300), [])
        wait_for(lambda: len(_pages(store.url)) == 301, "the first batch's script to run")
        # Its reply was never read: the connection goes, and the reply with it.
        assert other.client_kill_filter(_type="normal", skipme=True) >= 1
    store.send(named_batch("two", 200), [])  # reads the lost reply: sends the first again
    store.sync()
    sent = named_batch("warm", 1) + named_batch("one", 300) + named_batch("two", 200)
    assert _pages(store.url) == sorted(p.path for p in sent)  # the marker: written once
    assert store.report(START, START).pageviews == 501


def test_a_redis_batch_sent_while_redis_is_down_is_kept_until_it_is_back(
    private_redis: RedisServer, private_store: Store
) -> None:
    store = private_store
    store.write(named_batch("warm", 10), [])
    private_redis.stop()
    store.send(named_batch("kept", 100), [])  # taken: the store keeps it
    with pytest.raises(StoreError):
        store.sync()
    with pytest.raises(StoreError):
        store.send(named_batch("refused", 50), [])  # the kept one failed: not taken
    private_redis.start()  # same data directory, append-only file
    store.sync()
    store.send(named_batch("later", 20), [])
    store.sync()
    assert store.report(START, START).pageviews == 130
    assert {p.split("/")[1] for p in _pages(store.url)} == {"warm", "kept", "later"}


def test_a_redis_that_forgot_the_write_script_gets_it_again(
    private_redis: RedisServer, private_store: Store
) -> None:
    import redis

    store = private_store
    store.write(named_batch("one", 10), [])
    with redis.Redis(port=private_redis.port) as other:
        other.script_flush()
    store.send(named_batch("two", 10), [])  # EVALSHA answers NOSCRIPT: sent again, loaded
    store.sync()
    assert store.report(START, START).pageviews == 20


def test_an_erasure_reaches_a_batch_the_redis_store_still_holds(
    private_redis: RedisServer, private_store: Store
) -> None:
    pipeline = Pipeline(lambda: private_store, flush_interval=3600, timezone="UTC")
    try:
        pipeline.add(hit(1))
        assert pipeline.flush() is True  # connected, the script loaded
        private_redis.stop()
        for i in range(5):
            pipeline.add(Hit(time.time(), "gone", None, f"/gone/{i}", None, None, CHROME, "h"))
        assert pipeline.flush() is False  # sent, never answered: the store holds it
        assert (private_store.held(), len(pipeline)) == (5, 5)
        private_redis.start()
        assert pipeline.erase("gone") == 5  # written first, then erased with the rest
        assert (private_store.held(), len(pipeline), pipeline.written) == (0, 0, 6)
        assert private_store.visitor_data("gone")["pageviews"] == []
        assert private_store.report(*report_days()).pageviews == 1
    finally:
        pipeline.close()
