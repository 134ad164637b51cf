"""The SQLite store's fast reports equal the reference ``build_report`` over the same events.

Random page views (seeded) are written to an SQLite store and to the memory store (whose
reports are ``build_report``), in shuffled batches so days arrive out of order; then
visitors and users are erased and old days purged, and every report over many ranges
must be identical.
"""

from __future__ import annotations

import random
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.stores.data import assert_same_report
from trackmw.events import ConsentChoice, PageView
from trackmw.stores.memory import MemoryStore
from trackmw.stores.sqlite import SCHEMA_VERSION, SQLiteStore

START = date(2026, 10, 1)
DAYS = 40


def random_events(seed: int, n: int = 4000) -> tuple[list[PageView], list[ConsentChoice]]:
    rng = random.Random(seed)
    pages = ["/", "/a", "/b", "/c?utm_campaign=x", "/d", "/é"] + [f"/p{i}" for i in range(30)]
    classes = [
        ("Chrome", "Windows", "desktop"),
        ("Mobile Safari", "iOS", "mobile"),
        ("Firefox", "Linux", "desktop"),
        ("Chrome Mobile", "Android", "tablet"),
    ]
    views = []
    for _ in range(n):
        day = START + timedelta(days=rng.randrange(DAYS))
        visitor = f"v{rng.randrange(120)}"
        kind = rng.random()
        user = f"u{rng.randrange(15)}" if rng.random() < 0.3 else None
        browser, os_name, device = rng.choice(classes)
        if rng.random() < 0.1:  # the same visitor seen with another browser
            browser, os_name, device = rng.choice(classes)
        page = rng.choice(pages)
        ref = rng.choice([None, None, "news.example.org", "t.co"])
        camp = rng.choice([None, None, None, "mail-1", "mail-2"])
        ts = 1_790_000_000 + rng.random() * 1e6
        if kind < 0.05:
            views.append(
                PageView(ts, day.isoformat(), None, None, page, ref, camp, None, None, None, True)
            )
        elif kind < 0.15:
            views.append(
                PageView(ts, day.isoformat(), None, None, page, ref, camp, None, None, None, False)
            )
        else:
            views.append(
                PageView(
                    ts,
                    day.isoformat(),
                    visitor,
                    user,
                    page,
                    ref,
                    camp,
                    browser,
                    os_name,
                    device,
                    False,
                )
            )
    consents = [
        ConsentChoice(
            1_790_000_000.0,
            (START + timedelta(days=rng.randrange(DAYS))).isoformat(),
            f"v{rng.randrange(120)}",
            rng.random() < 0.7,
            True,
            "1",
        )
        for _ in range(200)
    ]
    return views, consents


def ranges(rng: random.Random) -> list[tuple[date, date]]:
    out = [
        (START, START + timedelta(days=DAYS - 1)),
        (START - timedelta(days=5), START),
        (START + timedelta(days=10), START + timedelta(days=10)),
    ]
    for _ in range(25):
        a = START + timedelta(days=rng.randrange(-3, DAYS + 3))
        out.append((a, a + timedelta(days=rng.randrange(0, 20))))
    return out


def assert_same(sql: SQLiteStore, mem: MemoryStore, seed: int) -> None:
    for since, until in ranges(random.Random(seed)):
        assert_same_report(sql.report(since, until), mem.report(since, until))


@pytest.fixture
def stores(tmp_path: Path) -> tuple[SQLiteStore, MemoryStore]:
    sql = SQLiteStore(f"sqlite:///{tmp_path / 'r.db'}")
    mem = MemoryStore("memory://")
    yield sql, mem
    sql.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sqlite_report_equals_reference(stores: tuple[SQLiteStore, MemoryStore], seed: int) -> None:
    sql, mem = stores
    views, consents = random_events(seed)
    random.Random(seed).shuffle(views)  # days arrive out of order, across batches
    for i in range(0, len(views), 250):
        batch = views[i : i + 250]
        sql.write(batch, consents[i // 25 : (i + 250) // 25])
        mem.write(batch, consents[i // 25 : (i + 250) // 25])
    assert_same(sql, mem, seed)


def fill(sql: SQLiteStore, mem: MemoryStore, seed: int) -> None:
    views, consents = random_events(seed)
    for i in range(0, len(views), 500):
        sql.write(views[i : i + 500], consents if i == 0 else [])
        mem.write(views[i : i + 500], consents if i == 0 else [])


def test_erasing_visitors_and_users_keeps_reports_equal(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    sql, mem = stores
    fill(sql, mem, 7)
    for visitor, user in [("v3", None), ("v10", "u2"), ("v77", "u5"), ("nobody", "u9")]:
        assert sql.erase(visitor, user) == mem.erase(visitor, user)
        assert sql.visitor_data(visitor) == {"pageviews": [], "consents": [], "user_ids": []}
    assert_same(sql, mem, 7)
    # Writing more after erasure keeps the sets right. The erased visitors come back:
    # their new events are timed after the erasure (the days are the test's), or SQLite
    # would leave them out as events another process held back (``drops_erased``).
    later = time.time() + 1
    views, consents = random_events(8, 1000)
    views = [v._replace(ts=later) for v in views]
    consents = [c._replace(ts=later) for c in consents]
    sql.write(views, consents)
    mem.write(views, consents)
    assert_same(sql, mem, 8)


def test_purging_old_days_keeps_reports_equal(stores: tuple[SQLiteStore, MemoryStore]) -> None:
    sql, mem = stores
    fill(sql, mem, 11)
    cut = START + timedelta(days=15)
    assert sql.purge(cut) == mem.purge(cut)
    assert_same(sql, mem, 11)
    views, consents = random_events(12, 1000)  # late events for purged and kept days
    sql.write(views, consents)
    mem.write(views, consents)
    assert_same(sql, mem, 12)
    sql.erase("v4", "u1")
    mem.erase("v4", "u1")
    assert_same(sql, mem, 13)


def test_reports_survive_reopening(stores: tuple[SQLiteStore, MemoryStore], tmp_path: Path) -> None:
    sql, mem = stores
    fill(sql, mem, 21)
    sql.close()
    reopened = SQLiteStore(sql.url)
    try:
        assert_same(reopened, mem, 21)
    finally:
        reopened.close()


def test_a_schema_1_file_is_migrated(stores: tuple[SQLiteStore, MemoryStore]) -> None:
    import sqlite3

    sql, mem = stores
    fill(sql, mem, 31)
    sql.close()
    # Schema 1 had daily_visitors (and no sets): the distinct counts are rebuilt from
    # the raw page views on open.
    conn = sqlite3.connect(sql.path, isolation_level=None)
    for table in ("uniq_sets", "uniq_ids", "uniq_dims"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("CREATE TABLE daily_visitors (day TEXT)")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    reopened = SQLiteStore(sql.url)
    try:
        assert_same(reopened, mem, 31)
        conn = sqlite3.connect(sql.path)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        conn.close()
        assert "daily_visitors" not in tables and version == (str(SCHEMA_VERSION),)
    finally:
        reopened.close()
