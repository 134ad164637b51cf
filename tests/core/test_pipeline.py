"""The buffer and the writer: nothing accepted is lost, the request path never waits."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from trackmw import StoreError, Tracker
from trackmw import normalize as normalize_module
from trackmw.events import ConsentChoice, Hit, PageView
from trackmw.pipeline import Pipeline
from trackmw.stores.memory import MemoryStore
from trackmw.useragent import classify

from ..conftest import SECRET, wait_for
from .harness import BROWSER_UA


def hit(i: int = 0, visitor: str | None = "v" * 22) -> Hit:
    return Hit(time.time(), visitor, None, f"/p{i}", None, None, BROWSER_UA, "testserver")


class FlakyStore(MemoryStore):
    """A memory store that refuses writes while ``down`` (a fault a real store shows
    too, made deterministic here; the real-server outage tests live in tests/stores)."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.down = True
        self.attempts = 0

    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        self.attempts += 1
        if self.down:
            raise StoreError("store is down")
        super().write(pageviews, consents)


def buffered(store: MemoryStore, hits: int) -> Pipeline:
    """A pipeline of batches of 10 onto ``store``, given ``hits`` hits (full batches wake
    its writer, which may try them before the test does: the outcome is the same)."""
    pipeline = Pipeline(lambda: store, flush_interval=3600, batch_size=10)
    for i in range(hits):
        pipeline.add(hit(i))
    return pipeline


def test_add_only_appends(make_tracker: Any) -> None:
    pipeline = Pipeline(lambda: MemoryStore("memory://"), flush_interval=60)
    pipeline.add(hit())
    assert len(pipeline) == 1
    assert pipeline._store is None  # the store was not even opened on the request path
    pipeline.close()


def test_the_writer_thread_writes_within_the_flush_interval() -> None:
    store = MemoryStore("memory://")
    pipeline = Pipeline(lambda: store, flush_interval=0.05)
    pipeline.add(hit())
    deadline = time.monotonic() + 10
    while not store._pageviews and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(store._pageviews) == 1
    pipeline.close()


def test_a_refused_batch_is_kept_and_written_exactly_once_when_the_store_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore()
    pipeline = buffered(store, 25)
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        assert pipeline.flush() is False
        assert pipeline.flush() is False
    assert len(pipeline) == 25
    assert "store is down" in caplog.text
    store.down = False
    assert pipeline.flush() is True
    assert sorted(pv.path for pv in store._pageviews) == sorted(f"/p{i}" for i in range(25))
    pipeline.close()


def test_a_store_failing_mid_drain_counts_what_it_wrote_and_what_it_keeps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailsFromThird(FlakyStore):
        healed = False

        def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
            self.down = self.attempts >= 2 and not self.healed
            super().write(pageviews, consents)

    store = FailsFromThird()
    pipeline = buffered(store, 30)
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        assert pipeline.flush() is False
    assert (len(store._pageviews), pipeline.written, len(pipeline)) == (20, 20, 10)
    assert "10 events kept" in caplog.text
    store.healed = True
    assert pipeline.flush() is True
    assert (len(store._pageviews), pipeline.written, len(pipeline)) == (30, 30, 0)
    pipeline.close()


def test_a_store_that_cannot_be_opened_is_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Opening the store is the first thing that fails (say, its driver is missing): the
    writer logs it through ``trackmw``, keeps the events and lives on to retry."""
    store = MemoryStore("memory://")
    opened = False

    def factory() -> MemoryStore:
        if not opened:
            raise RuntimeError("no driver")
        return store

    pipeline = Pipeline(factory, flush_interval=0.01)
    pipeline.retry_min = pipeline.retry_max = 0.01
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        pipeline.add(hit())
        wait_for(lambda: "RuntimeError writing to the store: no driver" in caplog.text,
                 "the failure's log line")
    assert len(pipeline) == 1
    opened = True
    wait_for(lambda: len(store._pageviews) == 1, "the retry")
    pipeline.close()


def test_the_writer_outlives_a_bug_in_its_own_loop(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore("memory://")
    pipeline = Pipeline(lambda: store, flush_interval=0.01)
    real_drain = pipeline._drain
    bugs = [ZeroDivisionError("a bug")]

    def drain(whole: bool) -> bool:
        if bugs:
            raise bugs.pop()
        return real_drain(whole)

    pipeline._drain = drain  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        pipeline.add(hit())
        wait_for(lambda: len(store._pageviews) == 1, "the next round's write")
    assert "the writer failed" in caplog.text and "ZeroDivisionError: a bug" in caplog.text
    pipeline.close()


def test_overflow_drops_the_oldest_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    pipeline = Pipeline(lambda: store, buffer_size=10, flush_interval=3600)
    for i in range(15):
        pipeline.add(hit(i))
    assert pipeline.dropped == 5
    store.down = False
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        pipeline.flush()
        pipeline.flush()
    assert [pv.path for pv in store._pageviews] == [f"/p{i}" for i in range(5, 15)]
    assert caplog.text.count("dropped the 5 oldest") == 1
    pipeline.close()


class RecordingStore(MemoryStore):
    """A memory store that keeps the size of each batch it is given, and can run
    ``during_write`` inside a write (events arriving while a batch is written)."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.batches: list[int] = []
        self.during_write: list[Any] = []

    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        self.batches.append(len(pageviews) + len(consents))
        if self.during_write:
            self.during_write.pop()()
        super().write(pageviews, consents)


def test_a_full_batch_is_written_at_once_and_the_rest_waits_for_the_interval() -> None:
    store = RecordingStore()
    pipeline = Pipeline(lambda: store, batch_size=50, flush_interval=3600)
    for round_ in range(1, 5):
        for i in range(50):
            pipeline.add(hit(i))
        wait_for(lambda round_=round_: pipeline.written == 50 * round_, "a full batch")
    for i in range(7):
        pipeline.add(hit(i))
    time.sleep(0.2)  # time enough for the writer, which leaves a part batch to the interval
    assert pipeline.written == 200 and len(pipeline) == 7
    assert pipeline.close() is True
    assert store.batches == [50, 50, 50, 50, 7]


def test_the_writer_writes_the_rest_every_flush_interval() -> None:
    store = RecordingStore()
    pipeline = Pipeline(lambda: store, batch_size=1000, flush_interval=0.05)
    for i in range(3):
        pipeline.add(hit(i))
    wait_for(lambda: pipeline.written == 3, "the interval's write")
    pipeline.add(hit(3))
    wait_for(lambda: pipeline.written == 4, "the next interval's write")
    pipeline.close()
    assert store.batches == [3, 1]


def test_a_drain_writes_what_was_buffered_when_it_began() -> None:
    """Events arriving while a batch is written wait for the next round. Chasing them
    under load wrote a few dozen events per transaction (see ``Pipeline._run``)."""
    store = RecordingStore()
    pipeline = Pipeline(lambda: store, batch_size=10, flush_interval=3600)
    for i in range(25):
        pipeline.add(hit(i))
    arrivals = [lambda: [pipeline.add(hit(100 + i)) for i in range(3)]] * 3
    store.during_write = list(arrivals)
    assert pipeline.flush() is True
    assert store.batches == [10, 10, 5]
    assert len(pipeline) == 9  # arrived meanwhile: buffered, not lost
    assert pipeline.flush() is True
    assert store.batches == [10, 10, 5, 9]
    pipeline.close()


def test_the_request_path_wakes_the_writer_once_per_batch() -> None:
    """Not on every event past a full batch: each wake-up takes the GIL from requests."""
    store = FlakyStore()  # down: the buffer stays full, the writer keeps its backoff
    pipeline = Pipeline(lambda: store, batch_size=10, flush_interval=3600)
    sets = 0
    real_set = pipeline._wake.set

    def counted_set() -> None:
        nonlocal sets
        sets += 1
        real_set()

    pipeline._wake.set = counted_set  # type: ignore[method-assign]
    for i in range(35):
        pipeline.add(hit(i))
    assert sets == 3
    store.down = False
    pipeline.close()
    assert len(store._pageviews) == 35


def test_close_flushes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    tracker = Tracker(secret_keys=[SECRET], store=url, flush_interval=3600)
    tracker.pipeline.add(hit())
    tracker.close()
    fresh = Tracker(secret_keys=[SECRET], store=url)
    assert fresh.stats().pageviews == 1
    fresh.close()


def test_process_exit_flushes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/exit.db"
    script = textwrap.dedent(f"""
        import time
        from trackmw import Tracker
        from trackmw.events import Hit
        t = Tracker(secret_keys=[{SECRET!r}], store={url!r}, flush_interval=3600)
        for i in range(100):
            t.pipeline.add(Hit(time.time(), "v" * 22, None, "/", None, None, "Mozilla/5.0", "h"))
        # no close(): the atexit hook must write them
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    tracker = Tracker(secret_keys=[SECRET], store=url)
    assert tracker.stats().pageviews == 100
    tracker.close()


def test_asgi_lifespan_shutdown_flushes() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from trackmw.asgi import TrackingMiddleware

    tracker = Tracker(secret_keys=[SECRET], store="memory://", flush_interval=3600)

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(TrackingMiddleware, tracker=tracker)
    with TestClient(app) as client:
        client.get("/_trackmw/pixel.gif?p=/", headers={"user-agent": BROWSER_UA})
        assert tracker.store._pageviews == []  # type: ignore[attr-defined]
    assert len(tracker.store._pageviews) == 1  # type: ignore[attr-defined]
    tracker.close()


def test_websocket_scopes_pass_through(make_tracker: Any) -> None:
    import asyncio

    from trackmw.asgi import TrackingMiddleware

    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = TrackingMiddleware(app, tracker=make_tracker())
    asyncio.run(middleware({"type": "websocket", "path": "/ws", "headers": []}, None, None))
    assert seen == ["websocket"] and "trackmw" not in seen


def test_user_agents_are_classified_in_the_writer_and_cached() -> None:
    classify.cache_clear()
    normalize_module._fixed.clear()  # what earlier tests' hits gave, cached
    store = MemoryStore("memory://")
    pipeline = Pipeline(lambda: store, flush_interval=3600)
    for i in range(10):
        pipeline.add(hit(i))
    assert classify.cache_info().currsize == 0  # nothing classified on the request path
    pipeline.flush()
    info = classify.cache_info()
    assert (info.misses, info.hits) == (1, 9)
    assert store._pageviews[0].browser == "Chrome"
    pipeline.close()


def test_erasure_reaches_into_the_buffer() -> None:
    store = MemoryStore("memory://")
    pipeline = Pipeline(lambda: store, flush_interval=3600)
    pipeline.add(hit(1, visitor="a" * 22))
    pipeline.flush()
    pipeline.add(hit(2, visitor="a" * 22))
    pipeline.add(hit(3, visitor="b" * 22))
    assert pipeline.erase("a" * 22) == 2
    pipeline.flush()
    assert [pv.visitor_id for pv in store._pageviews] == ["b" * 22]
    pipeline.close()


def test_stats_default_range_is_the_last_30_days(make_tracker: Any) -> None:
    report = make_tracker().stats()
    assert (report.until - report.since).days == 29
    assert report.until == date.today() or (report.until - date.today()).days in (-1, 1)


def test_a_forked_child_writes_its_own_events_and_not_the_parents(tmp_path: Path) -> None:
    import os

    url = f"sqlite:///{tmp_path}/fork.db"
    tracker = Tracker(secret_keys=[SECRET], store=url, flush_interval=3600)
    tracker.stats()  # the parent opens the store before forking, as with --preload
    tracker.pipeline.add(hit(1))
    pid = os.fork()
    if pid == 0:  # the child: its own thread and connection; exits through atexit
        try:
            tracker.pipeline.add(hit(2))
            tracker.close()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    tracker.close()
    fresh = Tracker(secret_keys=[SECRET], store=url)
    pages = sorted(p["path"] for p in fresh.stats().to_dict()["pages"])
    assert pages == ["/p1", "/p2"] and fresh.stats().pageviews == 2
    fresh.close()


def test_a_fork_waits_for_a_write_under_way(tmp_path: Path) -> None:
    """A writer inside SQLite at the fork could leave the child a lock nobody releases;
    the fork waits for it. Here the write waits for another connection's lock, which is
    released 0.3 s after the fork is asked for: the child must see the write done."""
    import os
    import sqlite3
    import threading

    from trackmw.stores.sqlite import SQLiteStore

    path = tmp_path / "forkwait.db"

    def store() -> SQLiteStore:
        s = SQLiteStore(f"sqlite:///{path}")
        s.busy_timeout = 10.0
        return s

    pipeline = Pipeline(store, batch_size=10_000, flush_interval=3600)  # writes on drain only
    pipeline.store.write([], [])  # the schema
    for i in range(3):
        pipeline.add(hit(i))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")

    def writing() -> bool:
        if pipeline._lock.acquire(blocking=False):
            pipeline._lock.release()
            return False
        return True

    writer = threading.Thread(target=pipeline.drain)
    writer.start()
    wait_for(writing, "the drain to start")
    release = threading.Timer(0.3, lambda: other.execute("ROLLBACK"))
    release.start()
    try:
        pid = os.fork()
        if pid == 0:  # the child: the parent's write is done, and SQLite opens
            code = 1
            try:
                with sqlite3.connect(path) as conn:
                    ((n,),) = conn.execute(
                        "SELECT count(*) FROM daily_counts WHERE kind = 'page'").fetchall()
                code = 0 if n == 3 else 10 + n
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.join()
        writer.join()
        other.close()
        pipeline.close()


def test_a_cached_normal_form_is_shared_only_by_what_it_depends_on() -> None:
    """``normalize`` caches what a hit's page, referrer, campaign, User-Agent and host
    give; the visitor (or its absence) still decides what a page view carries."""
    tz = Pipeline(lambda: MemoryStore("memory://")).tz
    page, ref = "/a?utm_campaign=spring&x=1", "https://news.example/x"
    seen = Hit(1.0, "v" * 22, "u1", page, ref, None, BROWSER_UA, "testserver")
    anonymous = seen._replace(visitor_id=None, user_id=None)
    bot = seen._replace(user_agent="Googlebot/2.1 (+http://www.google.com/bot.html)")
    internal = seen._replace(referrer="https://testserver/b")
    for _ in range(2):  # the first time computed, the second from the cache
        a = normalize_module.normalize(seen, tz)
        assert (a.visitor_id, a.user_id, a.path, a.referrer, a.campaign, a.browser) == (
            "v" * 22, "u1", "/a?utm_campaign=spring", "news.example", "spring", "Chrome"
        )
        b = normalize_module.normalize(anonymous, tz)
        assert (b.visitor_id, b.browser, b.os, b.device, b.path) == (None,) * 4 + (a.path,)
        c = normalize_module.normalize(bot, tz)
        assert (c.bot, c.visitor_id, c.user_id, c.browser) == (True, None, None, None)
        assert normalize_module.normalize(internal, tz).referrer is None


def test_long_hits_are_normalized_but_not_kept_in_the_cache() -> None:
    tz = Pipeline(lambda: MemoryStore("memory://")).tz
    normalize_module._fixed.clear()
    short = Hit(1.0, "v" * 22, None, "/a", None, None, BROWSER_UA, "testserver")
    long = short._replace(page="/" + "x" * 1000)
    assert normalize_module.normalize(long, tz).path == long.page
    assert normalize_module.normalize(short, tz).path == "/a"
    assert [key[0] for key in normalize_module._fixed] == ["/a"]


def test_a_hit_that_cannot_be_normalized_is_logged_and_the_rest_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore("memory://")
    pipeline = Pipeline(lambda: store, flush_interval=3600)
    choice = ConsentChoice(time.time(), "2026-11-27", "v" * 22, True, False, "1")
    broken = hit(1)._replace(ts="not a time")
    for item in (hit(0), broken, choice, hit(2)):
        pipeline.add(item)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, "trackmw"):
        assert pipeline.flush()
    assert [pv.path for pv in store._pageviews] == ["/p0", "/p2"]
    assert store._consents == [choice]
    (record,) = [r for r in caplog.records if "could not be normalized" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is TypeError
    pipeline.close()


def test_a_batch_takes_each_hit_s_own_local_day_across_midnight() -> None:
    """The batch looks a hit's local day up again only when its minute differs from the
    hit before's; across midnight in the tracker's zone (and back, as late hits come),
    each page view still gets the day of its own time."""
    pipeline = Pipeline(lambda: MemoryStore("memory://"), timezone="Europe/Paris")
    midnight = 1_795_820_400.0  # 2026-11-28 00:00 in Paris, 23:00 UTC the day before
    times = [midnight - 60.5, midnight - 0.5, midnight, midnight + 0.5, midnight - 0.25,
             midnight + 59.5, midnight + 60, midnight + 86_400]
    pageviews: list[PageView] = []
    normalize_module.normalize_batch(
        [hit()._replace(ts=ts) for ts in times], pipeline.tz, pageviews, []
    )
    assert [pv.day for pv in pageviews] == [
        normalize_module.local_day(ts, pipeline.tz) for ts in times
    ] == ["2026-11-27"] * 2 + ["2026-11-28"] * 2 + ["2026-11-27"] + ["2026-11-28"] * 2 + [
        "2026-11-29"
    ]


@pytest.mark.parametrize("order", ["bad first", "good first"])
def test_hits_whose_day_cannot_be_told_are_left_out_and_set_no_day_for_the_next(
    caplog: pytest.LogCaptureFixture, order: str
) -> None:
    """A time past the year 9999 (milliseconds taken for seconds) has no local day: the
    hit is dropped, and the next hit of the same minute looks its own day up rather
    than taking one the bad hit never had."""
    store = MemoryStore("memory://")
    pipeline = Pipeline(lambda: store, flush_interval=3600)
    good = hit(0)
    bad = [hit(1)._replace(ts=1e12), hit(2)._replace(ts=1e12 + 1)]
    for item in [*bad, good] if order == "bad first" else [good, *bad]:
        pipeline.add(item)
    with caplog.at_level(logging.ERROR, "trackmw"):
        assert pipeline.flush()
    assert [(pv.path, pv.day) for pv in store._pageviews] == [
        ("/p0", normalize_module.local_day(good.ts, pipeline.tz))
    ]
    assert sum("could not be normalized" in r.getMessage() for r in caplog.records) == 2
    pipeline.close()


def test_normalize_says_what_it_was_given_when_it_is_not_a_hit() -> None:
    tz = Pipeline(lambda: MemoryStore("memory://")).tz
    choice = ConsentChoice(1.0, "2026-11-27", "v" * 22, True, False, "1")
    with pytest.raises(TypeError, match="not a Hit: ConsentChoice"):
        normalize_module.normalize(choice, tz)  # type: ignore[arg-type]


@pytest.mark.parametrize(("hold", "offers"), [(0.0, 2), (3600.0, 0)])
def test_the_writer_offers_the_gil_between_stretches_once_it_has_held_it_long(
    monkeypatch: pytest.MonkeyPatch, hold: float, offers: int
) -> None:
    """A batch of three stretches: after each but the last, the writer offers the GIL
    to a request thread if it has normalized for ``_HOLD`` seconds since."""
    from trackmw import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "_HOLD", hold)
    pipeline = Pipeline(lambda: MemoryStore("memory://"), flush_interval=3600)
    for i in range(2 * pipeline_module._STRETCH + 1):
        pipeline._buffer.append(hit(i))
    offered: list[None] = []
    monkeypatch.setattr(pipeline_module, "_offer_gil", lambda: offered.append(None))
    taken = pipeline._take(len(pipeline._buffer))
    assert taken is not None and len(taken[0]) == 2 * pipeline_module._STRETCH + 1
    assert len(offered) == offers
    pipeline.close()


def test_leftovers_yields_what_a_c_loop_leaves_and_resumes_it_after_each() -> None:
    from trackmw._ext import leftovers

    items = list("abcdefg")
    starts: list[int] = []

    def run(i: int) -> int:  # takes items up to the next vowel, or the end
        starts.append(i)
        while i < len(items) and items[i] not in "ae":
            i += 1
        return i

    assert list(leftovers(items, run)) == ["a", "e"]
    assert starts == [0, 1, 5]
    assert list(leftovers(items, None)) == items
    assert list(leftovers([], run)) == []
