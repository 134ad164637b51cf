"""What only the server stores (Redis, Redis Cluster, PostgreSQL) promise beyond the suite."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from bench.local import free_port

from tests.conftest import SECRET, need_service
from trackmw import Tracker
from trackmw.errors import ConfigurationError, StoreError
from trackmw.settings import Settings
from trackmw.stores import Store, open_store, store_class
from trackmw.stores import postgres_sql as sql

from .conftest import PG_URL, postgres_up
from .data import START, batches, events, pageview

pytestmark = pytest.mark.services

SERVER_STORES = ("redis", "redis-cluster", "postgresql")


@pytest.mark.parametrize("store_kind", SERVER_STORES)
def test_a_batch_retried_after_a_lost_reply_is_written_once(store: Store) -> None:
    pvs, choices = events(n=300)
    store.write(pvs, choices)
    store.write(pvs, choices)  # the pipeline's retry of the very same batch
    r = store.report(START, START + timedelta(days=3))
    assert r.pageviews == sum(1 for p in pvs if not p.bot)
    assert r.bot_hits == sum(1 for p in pvs if p.bot)
    assert sum(r.consent.values()) == len(choices)
    store.write(pvs[:1], [])  # a different batch (a prefix) is new
    assert store.report(START, START + timedelta(days=3)).pageviews == r.pageviews + 1


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",
        "redis+cluster://127.0.0.1:{port}",
        "postgresql://postgres@127.0.0.1:{port}/test?schema=nothing_here",
    ],
)
def test_an_unreachable_server_raises_store_error(url: str) -> None:
    store = open_store(url.format(port=free_port()))
    store.connect_timeout = 1.0  # type: ignore[attr-defined]  # (PostgreSQL's pool wait)
    try:
        with pytest.raises(StoreError):
            store.write([pageview(START, 1, "a")], [])
        with pytest.raises(StoreError):
            store.report(START, START)
        with pytest.raises(StoreError):
            store.visitor_data("a")
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?uniques=some",
        "redis://127.0.0.1:6379/0?prefix={x}",
        "postgresql://127.0.0.1/test?schema=drop;table",
        "postgresql://127.0.0.1/test?pool_size=0",
    ],
)
def test_a_bad_store_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        store_class(url)


@pytest.mark.parametrize("store_kind", ["redis-hll", "redis-cluster-hll"])
def test_hyperloglog_visitors_stay_within_two_percent(store_url: str) -> None:
    store = open_store(store_url)
    try:
        n = 5_000
        pvs = [pageview(START, i % 86400, f"visitor-{i}", f"/p{i % 3}") for i in range(n)]
        for i in range(0, n, 1000):
            store.write(pvs[i : i + 1000], [])
        r = store.report(START, START)
        assert r.pageviews == n
        assert abs(r.visitors - n) <= n * 0.02
        assert all(abs(p["visitors"] - n / 3) <= n / 3 * 0.02 for p in r.pages)
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["redis"])
def test_without_settings_redis_reads_the_unique_mode_its_writers_chose(store_url: str) -> None:
    writer = open_store(store_url)  # uniques=exact in the URL
    writer.write([pageview(START, 1, "a"), pageview(START, 2, "b")], [])
    writer.close()
    reader = open_store(store_url.replace("&uniques=exact", ""))  # as the CLI would
    try:
        assert reader.report(START, START).visitors == 2
        assert reader.mode == "x"  # type: ignore[attr-defined]
    finally:
        reader.close()


@pytest.mark.parametrize("store_kind", ["redis"])
def test_redis_follows_the_recorded_mode_over_a_different_setting(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = open_store(store_url)  # uniques=exact in the URL
    writer.write([pageview(START, 1, "a"), pageview(START, 2, "b")], [])
    writer.close()
    url = store_url.replace("&uniques=exact", "")
    reader = open_store(url, Settings(secret_keys=(SECRET,), store=url, redis_uniques="hll"))
    try:
        assert reader.report(START, START).visitors == 2
        reader.write([pageview(START, 3, "c")], [])  # and writes follow it too
        assert reader.report(START, START).visitors == 3
    finally:
        reader.close()
    assert sum("redis_uniques='hll' is ignored" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("store_kind", ["redis", "redis-hll"])
def test_redis_keys_expire_after_the_retention_period(store_url: str) -> None:
    settings = Settings(secret_keys=(SECRET,), store=store_url, retention_days=30)
    store = open_store(store_url, settings)
    try:
        day = date.today()
        store.write([pageview(day, 5, "a", "/x", user="alice")], [])
        client = store.client  # type: ignore[attr-defined]
        prefix = store.prefix  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=prefix + "*"))
        day_keys = [k for k in keys if day.isoformat() in k]
        assert len(day_keys) >= 5  # the counters and every unique-count key of the day
        midnight = datetime(day.year, day.month, day.day).timestamp()
        for key in day_keys:
            expires = client.expiretime(key)
            assert midnight + 30 * 86400 < expires <= midnight + 32 * 86400, key
        assert 30 * 86400 < client.ttl(f"{prefix}:e:a") <= 31 * 86400
        assert 30 * 86400 < client.ttl(f"{prefix}:usr:alice") <= 31 * 86400
    finally:
        store.close()


def _write_in_child(url: str, visitor: str, queue: multiprocessing.Queue[str]) -> None:
    try:
        store = open_store(url)
        store.write([pageview(START, 7, visitor)], [])
        store.close()
        queue.put("ok")
    except BaseException as exc:  # reported to the parent
        queue.put(repr(exc))


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_schema_is_created_once_by_racing_processes(store_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    procs = [
        ctx.Process(target=_write_in_child, args=(store_url, f"p{i}", queue)) for i in range(4)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert results == ["ok"] * 4
    store = open_store(store_url)
    try:
        assert store.report(START, START).visitors == 4
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql", "redis"])
def test_a_forked_child_never_uses_its_parents_connections(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store.write([pageview(START, 1, "parent")], [])
        pid = os.fork()
        if pid == 0:  # the child: its own connections, then exit without cleanup
            code = 1
            try:
                store.write([pageview(START, 2, "child")], [])
                code = 0 if store.report(START, START).visitors == 2 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's pooled connections still work after the child came and went.
        store.write([pageview(START, 3, "parent-again")], [])
        assert store.report(START, START).visitors == 3
    finally:
        store.close()


def test_postgres_url_schema_isolates_sites() -> None:
    need_service(postgres_up(), f"no PostgreSQL at {PG_URL}")
    import psycopg

    names = [f"iso_{os.getpid()}_{i}" for i in range(2)]
    stores = [open_store(f"{PG_URL}?schema={n}") for n in names]
    try:
        stores[0].write([pageview(START, 1, "a")], [])
        assert stores[1].report(START, START).pageviews == 0
        assert stores[0].report(START, START).pageviews == 1
    finally:
        for s in stores:
            s.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for n in names:
                conn.execute(f'DROP SCHEMA IF EXISTS "{n}" CASCADE')


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_url_options_reach_the_server_next_to_the_schema(store_url: str) -> None:
    store = open_store(store_url + "&options=-c%20synchronous_commit%3Doff")
    try:
        with store._connection() as conn:  # type: ignore[attr-defined]
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
            schema = conn.execute("SELECT current_schema()").fetchone()[0]
        assert schema == store.schema  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_transactions_read_committed_whatever_the_url_defaults_to(
    store_url: str,
) -> None:
    # Writes and erasures rely on each statement seeing what committed before it.
    store = open_store(store_url + "&options=-c%20default_transaction_isolation%3Dserializable")
    try:
        with store._connection() as conn:  # type: ignore[attr-defined]
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_a_postgres_schema_named_with_capitals_is_that_schema(store_url: str) -> None:
    import psycopg

    name = "Site_" + store_url.rsplit("schema=", 1)[1]  # a name PostgreSQL would lowercase
    store = open_store(f"{PG_URL}?schema={name}")
    try:
        store.write([pageview(START, 1, "v1")], [])
        assert store.report(START, START).pageviews == 1
        with psycopg.connect(PG_URL) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (name,)
            ).fetchone()
            assert tables is not None and tables[0] >= 6
    finally:
        store.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _old_schema(store_url: str, version: int) -> str:
    """A PostgreSQL store's schema as ``version`` (1, 2 or 3) left it, holding one page
    view of visitor ``old`` and user ``u1``; its name. 3: daily_counts' pages filled
    whole; 2 also a B-tree of page views by day and path; 1 also found a visitor's and a
    user's page views, and daily_visitors by visitor, through B-trees."""
    store = open_store(store_url)
    try:
        store.write([pageview(START, 1, "old", "/old", user="u1")], [])
        with store._connection() as conn:  # type: ignore[attr-defined]
            conn.execute("ALTER TABLE daily_counts RESET (fillfactor)")
            if version <= 2:
                conn.execute("DROP INDEX pageviews_day")
                conn.execute("CREATE INDEX pageviews_day_path ON pageviews (day, path)")
            if version == 1:
                conn.execute("DROP INDEX pageviews_visitor_hash, pageviews_user_hash")
                conn.execute(
                    "CREATE INDEX pageviews_visitor ON pageviews (visitor_id) "
                    "WHERE visitor_id IS NOT NULL"
                )
                conn.execute(
                    "CREATE INDEX pageviews_user ON pageviews (user_id) WHERE user_id IS NOT NULL"
                )
                conn.execute("CREATE INDEX daily_visitors_visitor ON daily_visitors (visitor_id)")
            conn.execute(
                "UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(version),)
            )
        return str(store.schema)  # type: ignore[attr-defined]
    finally:
        store.close()


def _fill_factor(conn: Any) -> int | None:
    """daily_counts' fill factor, or None if none was set."""
    row = conn.execute(
        "SELECT option_value FROM pg_class c, pg_options_to_table(c.reloptions) "
        "WHERE c.oid = 'daily_counts'::regclass AND option_name = 'fillfactor'"
    ).fetchone()
    return None if row is None else int(row[0])


@pytest.mark.parametrize("store_kind", ["postgresql"])
@pytest.mark.parametrize("version", [1, 2, 3])
def test_postgres_schemas_1_to_3_are_brought_to_schema_4(store_url: str, version: int) -> None:
    schema = _old_schema(store_url, version)
    store = open_store(store_url)
    try:
        with store._connection() as conn:  # type: ignore[attr-defined]
            indexes = dict(
                conn.execute(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s",
                    (schema,),
                ).fetchall()
            )
            version_row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            assert version_row.fetchone() == ("4",)
            assert _fill_factor(conn) == sql.FILLFACTOR
    finally:
        store.close()
    assert not {
        "pageviews_visitor", "pageviews_user", "daily_visitors_visitor", "pageviews_day_path"
    } & set(indexes)
    assert "USING hash (visitor_id)" in indexes["pageviews_visitor_hash"]
    assert "USING hash (user_id)" in indexes["pageviews_user_hash"]
    assert "USING brin (day)" in indexes["pageviews_day"]
    assert "daily_visitors_pkey" in indexes


def _restarted(store_url: str, setup: str) -> int | None:
    """daily_counts' fill factor after ``setup`` ran on a store's tables and another
    store started on them (its migration)."""
    store = open_store(store_url)
    try:
        with store._connection() as conn:  # type: ignore[attr-defined]
            assert _fill_factor(conn) == sql.FILLFACTOR  # a new schema's
            conn.execute(setup)
    finally:
        store.close()
    store = open_store(store_url)
    try:
        store.write([pageview(START, 1, "v")], [])
        with store._connection() as conn:  # type: ignore[attr-defined]
            return _fill_factor(conn)
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_keeps_a_fill_factor_set_by_hand(store_url: str) -> None:
    assert _restarted(store_url, "ALTER TABLE daily_counts SET (fillfactor = 90)") == 90


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_sets_its_fill_factor_beside_other_storage_options(store_url: str) -> None:
    setup = ("ALTER TABLE daily_counts RESET (fillfactor); "
             "ALTER TABLE daily_counts SET (autovacuum_vacuum_scale_factor = 0.05)")
    assert _restarted(store_url, setup) == sql.FILLFACTOR


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_leaves_its_fill_factor_to_a_later_start_when_the_table_is_busy(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    store = open_store(store_url)
    try:
        with store._connection() as conn:  # type: ignore[attr-defined]
            conn.execute("ALTER TABLE daily_counts RESET (fillfactor)")
    finally:
        store.close()
    schema = str(store.schema)  # type: ignore[attr-defined]
    with psycopg.connect(PG_URL) as holder:  # what a VACUUM holds, until it commits
        holder.execute(f'LOCK TABLE "{schema}".daily_counts IN SHARE UPDATE EXCLUSIVE MODE')
        store = open_store(store_url)
        try:
            with caplog.at_level("WARNING", logger="trackmw"):
                store.write([pageview(START, 1, "v")], [])  # started, written all the same
            assert "fill factor is left to a later start" in caplog.text
            assert store.report(START, START).pageviews == 1
            with store._connection() as conn:  # type: ignore[attr-defined]
                assert _fill_factor(conn) is None
        finally:
            store.close()
    store = open_store(store_url)
    try:
        store.write([pageview(START, 2, "w")], [])
        with store._connection() as conn:  # type: ignore[attr-defined]
            assert _fill_factor(conn) == sql.FILLFACTOR
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
@pytest.mark.parametrize("version", [1, 2, 3])
def test_postgres_schema_1_to_3_data_is_read_and_erased_after_the_upgrade(
    store_url: str, version: int
) -> None:
    _old_schema(store_url, version)
    store = open_store(store_url)
    try:
        # The old visitor again, on the same day, with the same user: added to its row.
        store.write([pageview(START, 2, "new"), pageview(START, 3, "old", "/x", user="u1")], [])
        report = store.report(START, START)
        assert (report.pageviews, report.visitors, report.registered_visitors) == (3, 2, 1)
        assert [p["page"] for p in store.visitor_data("old")["pageviews"]] == ["/old", "/x"]
        assert store.erase("old", "u1") == 2
        report = store.report(START, START)
        assert (report.pageviews, report.visitors, report.registered_visitors) == (1, 1, 0)
    finally:
        store.close()


def _unsummarized_ranges(store: Any) -> int:
    """How many ranges of the page views' table their BRIN index had not summarized (it
    summarizes them, so a second call finds none)."""
    with store._connection() as conn:
        return int(conn.execute("SELECT brin_summarize_new_values('pageviews_day')").fetchone()[0])


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_summarizes_the_page_views_index_by_day_as_it_writes(store_url: str) -> None:
    # A report skips a range of table pages only once the BRIN index has summarized it;
    # autovacuum may fall behind, so the store summarizes every summarize_every page views.
    pageviews, _ = events(seed=21, n=24_000, days=3)  # a few hundred table pages
    store = open_store(store_url)
    try:
        store.summarize_every = 10**9  # type: ignore[attr-defined]
        for i in range(0, 12_000, 1_000):
            store.write(pageviews[i:i + 1_000], [])
        assert _unsummarized_ranges(store) > 0  # left to autovacuum, which has not come
        store.summarize_every = 1_000  # type: ignore[attr-defined]
        for i in range(12_000, 24_000, 1_000):
            store.write(pageviews[i:i + 1_000], [])
        assert _unsummarized_ranges(store) == 0
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_a_postgres_summary_that_fails_is_logged_and_the_batch_stays_written(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(store_url)
    try:
        store.summarize_every = 1  # type: ignore[attr-defined]
        store.write([pageview(START, 1, "v1")], [])
        with store._connection() as conn:  # type: ignore[attr-defined]
            conn.execute("DROP INDEX pageviews_day")  # nothing left to summarize
        with caplog.at_level("WARNING", logger="trackmw"):
            store.write([pageview(START, 2, "v2")], [])
        assert "index by day was not summarized" in caplog.text
        assert store.report(START, START).pageviews == 2
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_never_marks_a_later_schema_as_its_own(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store.write([pageview(START, 1, "v")], [])
        with store._connection() as conn:  # type: ignore[attr-defined]
            conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    finally:
        store.close()
    store = open_store(store_url)
    try:
        with store._connection() as conn:  # type: ignore[attr-defined]
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            assert version.fetchone() == ("99",)
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_a_postgres_write_waits_for_an_erasure_in_flight_and_drops_its_visitor(
    store: Store,
) -> None:
    # An erasure from another process has written its tombstone but not committed: a
    # batch holding the visitor's earlier page view must wait for it, then leave it out.
    # (Without the lock it would commit first and the erased visitor would come back.)
    import threading
    import time

    import psycopg

    from tests.conftest import wait_for
    from trackmw.stores.base import tombstone_key

    store.write([pageview(START, 0, "someone")], [])  # the schema exists
    lock = store._erasure_lock  # type: ignore[attr-defined]
    early = pageview(START, 1, "gone-visitor", "/early")
    with psycopg.connect(PG_URL, options=f"-c search_path={store.schema}") as eraser:  # type: ignore[attr-defined]
        eraser.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        eraser.execute(
            "INSERT INTO erasures VALUES (%s, %s)",
            (tombstone_key("v", "gone-visitor"), time.time()),
        )
        writer = threading.Thread(target=store.write, args=([early], []))
        writer.start()
        # A bigint advisory key shows in pg_locks as its two 32-bit halves.
        high, low = divmod(lock & (2**64 - 1), 2**32)
        with psycopg.connect(PG_URL, autocommit=True) as watcher:
            wait_for(
                lambda: watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
                    (high, low),
                ).fetchone()[0] > 0,  # type: ignore[index]
                "the write to wait for the erasure's lock",
            )
        eraser.commit()
    writer.join(30)
    assert not writer.is_alive()
    assert store.visitor_data("gone-visitor")["pageviews"] == []


#: The rollups as the server computed them from each batch until the client counted
#: them: their definition, read off the raw page views.
_COUNTS_BY_SQL = """
SELECT day, 'total', '', count(*) FROM pageviews WHERE NOT bot GROUP BY day
UNION ALL SELECT day, 'bot', '', count(*) FROM pageviews WHERE bot GROUP BY day
UNION ALL SELECT day, 'anonymous', '', count(*) FROM pageviews
    WHERE NOT bot AND visitor_id IS NULL GROUP BY day
UNION ALL SELECT day, 'page', path, count(*) FROM pageviews WHERE NOT bot GROUP BY day, path
UNION ALL SELECT day, 'referrer', referrer, count(*) FROM pageviews
    WHERE NOT bot AND referrer <> '' GROUP BY day, referrer
UNION ALL SELECT day, 'campaign', campaign, count(*) FROM pageviews
    WHERE NOT bot AND campaign <> '' GROUP BY day, campaign
"""
_VISITORS_BY_SQL = """
SELECT day, visitor_id, coalesce(user_id, ''), min(browser), min(os), min(device), count(*)
FROM pageviews WHERE NOT bot AND visitor_id IS NOT NULL GROUP BY 1, 2, 3
"""


def _postgres_rows(store_url: str, query: str) -> list[tuple[object, ...]]:
    import psycopg

    schema = store_url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_URL, options=f"-c search_path={schema}") as conn:
        return sorted(conn.execute(query).fetchall(), key=repr)


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_rollups_are_what_the_page_views_written_add_up_to(store_url: str) -> None:
    pageviews, consents = events(seed=11, n=3_000, days=5)
    # One visitor's day in two browsers, one without any, and an empty referrer: what
    # SQL's min, coalesce and "<> ''" decide.
    pageviews += [
        pageview(START, 10, "v90", "/x", cls=("Firefox", "Linux", "desktop")),
        pageview(START, 11, "v90", "/y", cls=("Chrome", "Windows", "desktop"), user="dan"),
        pageview(START, 12, "v90", "/y", cls=("Chrome", "Windows", "desktop")),
        pageview(START, 13, "v91", "/x", referrer="", campaign=""),
    ]
    pageviews[-1] = pageviews[-1]._replace(browser=None, os=None, device=None)
    store = open_store(store_url)
    try:
        store.write(pageviews, consents)
        assert _postgres_rows(store_url, "SELECT * FROM daily_counts") == _postgres_rows(
            store_url, _COUNTS_BY_SQL
        )
        assert _postgres_rows(store_url, "SELECT * FROM daily_visitors") == _postgres_rows(
            store_url, _VISITORS_BY_SQL
        )
        # Later batches add to the counts; a visitor's classes stay those of its first.
        more, _ = events(seed=12, n=2_000, days=5)
        for i in range(0, len(more), 500):
            store.write(more[i:i + 500], [])
        assert _postgres_rows(store_url, "SELECT * FROM daily_counts") == _postgres_rows(
            store_url, _COUNTS_BY_SQL
        )
        counted = {row[:3]: row[6] for row in _postgres_rows(store_url, _VISITORS_BY_SQL)}
        kept = _postgres_rows(store_url, "SELECT * FROM daily_visitors")
        assert {row[:3]: row[6] for row in kept} == counted
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_refuses_a_batch_with_a_day_that_is_not_a_date(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store.write([pageview(START, 1, "v1")], [])
        # A text that is no date; a date, not its text; an ISO week date and a basic-format
        # date, which date.fromisoformat reads but the server refuses or keys apart.
        for day in ("2026-13-45", START, "2026-W47-5", "20261120"):
            with pytest.raises(StoreError, match="is not a YYYY-MM-DD date"):
                store.write([pageview(START, 2, "v2"), pageview(START, 3, "v3")._replace(day=day)],
                            [])
        report = store.report(START, START)
        assert (report.pageviews, report.visitors) == (1, 1)  # nothing of the refused ones
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
@pytest.mark.parametrize("encoding", ["UTF8", "LATIN1"])
@pytest.mark.parametrize("formats", ["c", "psycopg"])
def test_postgres_stores_the_page_views_and_rollups_whoever_formats_them(
    store_url: str, encoding: str, formats: str
) -> None:
    """The page views' COPY and the rollups' arrays are formatted in C when the
    connection's texts go as UTF-8 (``copy_pageviews``, ``pg_columns``), else by psycopg;
    either way the rows are the page views and what they add up to."""
    from unittest import mock

    from trackmw.stores import postgres

    pageviews, consents = events(seed=13, n=1_500, days=3)
    odd = ["/café", "ünï.example", "ß", "Ōsaka" if encoding == "UTF8" else "Ö"]
    pageviews += [
        pageview(START, 20, "vé", odd[0], referrer=odd[1], campaign=odd[2]),
        pageview(START, 21, "v1", "/", referrer=""),
        pageview(START, 22, None, odd[3]),
        pageview(START, 23, "v2", "/x", user="ü")._replace(browser=None, bot=True),
    ]
    asked: list[str] = []
    built = postgres.speedup

    def speedup(name: str) -> Any:
        asked.append(name)
        return built(name) if formats == "c" else None

    store = open_store(store_url + f"&options=-c%20client_encoding%3D{encoding}")
    try:
        with mock.patch.object(postgres, "speedup", speedup):
            for i in range(0, len(pageviews), 400):
                store.write(pageviews[i:i + 400], consents if i == 0 else [])
        # Asked for only when the texts go as UTF-8.
        assert set(asked) == ({"copy_pageviews", "pg_columns"} if encoding == "UTF8" else set())
        stored = _postgres_rows(
            store_url, "SELECT ts, day::text, visitor_id, user_id, path, referrer, campaign, "
            "browser, os, device, bot FROM pageviews"
        )
        assert stored == sorted((tuple(pv) for pv in pageviews), key=repr)
        assert _postgres_rows(store_url, "SELECT * FROM daily_counts") == _postgres_rows(
            store_url, _COUNTS_BY_SQL
        )
        assert _postgres_rows(store_url, "SELECT * FROM daily_visitors") == _postgres_rows(
            store_url, _VISITORS_BY_SQL
        )
        with store._connection() as conn:  # type: ignore[attr-defined]
            assert (conn.info.encoding == "utf-8") == (encoding == "UTF8")
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_writes_batches_sent_one_after_another_in_groups(store: Store) -> None:
    # The pipeline's writer, when behind, sends every batch it finds waiting and then
    # syncs: PostgreSQL holds them and writes up to group_events a transaction (one
    # batch id each), a group while the next one is prepared.
    pvs, choices = events(seed=8, n=12_000, days=2)
    assert store.group_events == 5_000  # type: ignore[attr-defined]
    for n, batch in enumerate(batches(pvs[:3_000], 1_000)):
        store.send(batch, choices if n == 0 else [])
    assert store.held() == 3_000 + len(choices)  # a group not yet full waits for sync
    assert store.report(START, START + timedelta(days=1)).pageviews == 0
    for batch in batches(pvs[3_000:6_000], 1_000):
        store.send(batch, [])  # the sixth: the first group is handed over
    assert any(t.name.startswith("trackmw-postgres") for t in threading.enumerate())
    for batch in batches(pvs[6_000:], 1_000):
        store.send(batch, [])
    store.sync()
    assert store.held() == 0
    with store._connection() as conn:  # type: ignore[attr-defined]
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 3
    r = store.report(START, START + timedelta(days=1))
    assert (r.pageviews, r.bot_hits) == (
        sum(not p.bot for p in pvs), sum(p.bot for p in pvs))
    assert sum(r.consent.values()) == len(choices)


@pytest.mark.parametrize("store_kind", ["redis", "postgresql"])
def test_events_still_buffered_at_process_exit_are_written_without_an_error(
    store_url: str, make_tracker: Callable[..., Tracker],
) -> None:
    # The atexit hook closes the pipeline after the interpreter stopped taking new
    # threads' work (PostgreSQL writes a group in a thread of its own when it can).
    script = textwrap.dedent(f"""
        import time
        from trackmw import Tracker
        from trackmw.events import Hit
        t = Tracker(secret_keys=[{SECRET!r}], store={store_url!r}, flush_interval=3600)
        for i in range(100):
            t.pipeline.add(Hit(time.time(), "v" * 22, None, "/", None, None, "Mozilla/5.0", "h"))
        # no close(): the atexit hook must write them
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "trackmw" not in done.stderr
    assert make_tracker(store=store_url).stats().pageviews == 100


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_writes_on_a_connection_of_its_own_when_no_thread_can_start(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From Python 3.12 the interpreter starts no thread at process exit, when the
    # pipeline's atexit flush of a process that never wrote before opens the store:
    # neither the pool's threads nor the store's writing thread. (Shown here by refusing
    # every thread: this Python may start them at exit.)
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    store.send([pageview(START, 1, "v1")], [])
    store.sync()
    store.write([pageview(START, 2, "v2")], [])
    assert store.report(START, START).pageviews == 2
    monkeypatch.undo()
    store.write([pageview(START, 3, "v3")], [])  # the pool, once threads start again
    assert store.report(START, START).pageviews == 3


def _failing_transactions(monkeypatch: pytest.MonkeyPatch, fail: list[str]) -> list[str]:
    """Make each PostgreSQL transaction fail as ``fail`` says, in turn: "before" (nothing
    written), "after" (committed, its reply lost), "" (as usual); once ``fail`` is used up,
    as usual. Returns what happened, in order."""
    from trackmw.stores.postgres import PostgresStore

    real = PostgresStore._transaction
    happened: list[str] = []

    def transaction(self: PostgresStore, conn: Any, batch: Any) -> bool:
        how = fail.pop(0) if fail else ""
        happened.append(how)
        if how == "before":
            raise StoreError("the server went away")
        written = real(self, conn, batch)
        if how == "after":
            raise StoreError("the commit's reply was lost")
        return written

    monkeypatch.setattr(PostgresStore, "_transaction", transaction)
    return happened


@pytest.mark.parametrize("store_kind", ["postgresql"])
@pytest.mark.parametrize("how", ["before", "after"])
def test_a_postgres_group_that_fails_in_its_thread_is_written_once_by_sync(
    store: Store, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    pvs, choices = events(seed=9, n=7_000, days=1)
    store.write(pvs[:10], [])  # connected: the next groups go to the store's thread
    happened = _failing_transactions(monkeypatch, [how])
    for n, batch in enumerate(batches(pvs[10:], 1_000)):
        store.send(batch, choices if n == 0 else [])
    store.sync()  # the first group failed in the thread, and was written here
    assert happened == [how, "", ""]  # that group twice (the second time: once)
    assert store.held() == 0
    r = store.report(START, START)
    assert (r.pageviews, r.bot_hits) == (sum(not p.bot for p in pvs),
                                         sum(p.bot for p in pvs))
    assert sum(r.consent.values()) == len(choices)


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_a_postgres_group_that_cannot_be_written_is_kept_and_the_next_batch_refused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    pvs, _ = events(seed=10, n=12_000, days=1)
    store.write(pvs[:10], [])
    _failing_transactions(monkeypatch, ["before"] * 100)
    for batch in batches(pvs[10:6_010], 1_000):  # the sixth send hands the first group over
        store.send(batch, [])
    with pytest.raises(StoreError, match="went away"):
        store.sync()
    assert store.held() == 6_000  # the group that failed, and the batch after it
    for batch in batches(pvs[6_010:10_010], 1_000):
        store.send(batch, [])  # held: the group is not full yet
    with pytest.raises(StoreError, match="went away"):
        store.send(pvs[10_010:11_010], [])  # it would start a group: refused
    assert store.held() == 10_000
    assert store.report(START, START).pageviews == sum(not p.bot for p in pvs[:10])
    monkeypatch.undo()  # the server is back
    store.send(pvs[10_010:12_000], [])  # the pipeline sends the refused batch again
    store.sync()
    assert store.held() == 0
    assert store.report(START, START).pageviews == sum(not p.bot for p in pvs)


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_postgres_writes_without_pipeline_mode_where_libpq_lacks_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))
    monkeypatch.setattr(psycopg.Connection, "pipeline", None)  # never entered
    pvs, choices = events(seed=11, n=3_000, days=1)
    for n, batch in enumerate(batches(pvs, 1_000)):
        store.send(batch, choices if n == 0 else [])
    store.sync()
    r = store.report(START, START)
    assert r.pageviews == sum(not p.bot for p in pvs)
    assert sum(r.consent.values()) == len(choices)


def test_a_postgres_server_out_of_reach_is_waited_for_once_a_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The store's thread waited connect_timeout for a connection and got none: waiting
    # again at once, in sync, made the pool's reconnection back off further, and a
    # server back from a restart then took about as long to reach as that wait.
    from trackmw.stores.postgres import PostgresStore

    tries: list[int] = []
    real = PostgresStore._execute

    def execute(self: PostgresStore, batch: Any) -> None:
        tries.append(1)
        real(self, batch)

    monkeypatch.setattr(PostgresStore, "_execute", execute)
    store = open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/test?schema=gone")
    store.connect_timeout = 1.0  # type: ignore[attr-defined]
    try:
        store.send([pageview(START, 1, "v1")], [])
        with pytest.raises(StoreError, match="couldn't get a connection"):
            store.sync()
        assert (len(tries), store.held()) == (1, 1)  # kept for the next try
        with pytest.raises(StoreError, match="couldn't get a connection"):
            store.sync()
        assert (len(tries), store.held()) == (2, 1)
    finally:
        store.close()
