"""SQLite files of older schemas are upgraded when opened, their data intact.

Schemas 1 and 2 kept one ``pageviews`` row per page view (schema 1 also lacked the
``uniq_*`` link tables); schema 3 keeps them grouped in ``pageview_groups``; schema 4
counts distinct visitors from sets (``uniq_sets``) instead of schema 2 and 3's chains
and links (``uniq_entities``, ``uniq_links``). An old file
is made here the way its schema laid it out: the rollups of a current file, the raw page
views put back one row each with the old table and indexes, the version set back.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from trackmw.events import ConsentChoice, PageView
from trackmw.stores import sqlite_pageviews as stored
from trackmw.stores.memory import MemoryStore
from trackmw.stores.sqlite import SCHEMA_VERSION, SQLiteStore

from .data import CLASSES, START, USERS, assert_same_report, batches, events, pageview, ts_of

OLD_PAGEVIEWS = """
CREATE TABLE pageviews (
    ts REAL NOT NULL,
    day TEXT NOT NULL,
    visitor_id TEXT,
    user_id TEXT,
    path TEXT NOT NULL,
    referrer TEXT,
    campaign TEXT,
    browser TEXT,
    os TEXT,
    device TEXT,
    bot INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX pageviews_visitor ON pageviews (visitor_id) WHERE visitor_id IS NOT NULL;
CREATE INDEX pageviews_user ON pageviews (user_id) WHERE user_id IS NOT NULL;
"""


#: Schemas 2 and 3 counted distinct visitors from chains and their links.
OLD_UNIQUES = """
CREATE TABLE uniq_links (
    dim INTEGER NOT NULL, day INTEGER NOT NULL, prev INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (dim, day, prev)
) WITHOUT ROWID;
CREATE TABLE uniq_entities (key TEXT PRIMARY KEY, chains TEXT NOT NULL) WITHOUT ROWID;
"""


def old_file(path: Path, version: int) -> tuple[list[PageView], list[ConsentChoice]]:
    """A schema ``version`` (1, 2 or 3) file at ``path``, holding the events returned.

    The distinct counts' tables of the old schema are there, empty but for a row each
    in schemas 2 and 3: an upgrade makes the sets from the page views alone."""
    views, choices = events(seed=41, n=900, days=5)
    store = SQLiteStore(f"sqlite:///{path}")
    for i, batch in enumerate(batches(views, 200)):
        store.write(batch, choices if i == 0 else [])
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    if version < 3:
        conn.executescript(OLD_PAGEVIEWS)
        conn.executemany("INSERT INTO pageviews VALUES (?,?,?,?,?,?,?,?,?,?,?)", views)
        conn.execute("DROP TABLE pageview_groups")
    for table in ("uniq_sets", "uniq_ids"):
        conn.execute(f"DROP TABLE {table}")
    if version == 1:
        conn.execute("DROP TABLE uniq_dims")
        conn.execute("CREATE TABLE daily_visitors (day TEXT)")
    else:
        conn.executescript(OLD_UNIQUES)
        conn.execute("INSERT INTO uniq_links VALUES (1, 1, -1, 1)")
        conn.execute("INSERT INTO uniq_entities VALUES ('v:v01', '1:1')")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.close()
    return views, choices


def tables(path: Path) -> tuple[set[str], str]:
    conn = sqlite3.connect(path)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    finally:
        conn.close()
    return names, version


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_old_file_is_upgraded_with_its_data(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    views, choices = old_file(path, version)
    reference = MemoryStore("memory://")
    reference.write(views, choices)
    store = SQLiteStore(f"sqlite:///{path}")
    try:
        for days in (0, 2, 4, 10):
            since, until = START, START + timedelta(days=days)
            assert_same_report(store.report(since, until), reference.report(since, until))
        for visitor in sorted({v.visitor_id for v in views if v.visitor_id}):
            assert store.visitor_data(visitor) == reference.visitor_data(visitor)
        names, stored_version = tables(path)
        assert stored_version == str(SCHEMA_VERSION)
        assert {"pageviews", "daily_visitors", "pageviews_visitor"}.isdisjoint(names)
        assert {"uniq_links", "uniq_entities"}.isdisjoint(names)
        # Erasure and retention work on the moved page views.
        assert store.erase("v01", USERS["v01"]) == reference.erase("v01", USERS["v01"])
        assert store.purge(START + timedelta(days=2)) == reference.purge(START + timedelta(days=2))
        since, until = START, START + timedelta(days=4)
        assert_same_report(store.report(since, until), reference.report(since, until))
    finally:
        store.close()


def groups(path: Path) -> tuple[int, int]:
    """Rows and page views in ``pageview_groups`` after opening the store at ``path``."""
    store = SQLiteStore(f"sqlite:///{path}")
    try:
        store.report(START, START)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        rows, views = conn.execute("SELECT count(*), sum(n) FROM pageview_groups").fetchone()
    finally:
        conn.close()
    return rows, views


def test_upgrading_twice_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path, 2)
    first = groups(path)
    assert groups(path) == first and first[1] == 900


def test_view_times_are_kept_in_milliseconds_and_older_seconds_read_as_they_are(
    tmp_path: Path,
) -> None:
    """A group's JSON holds each view's time as whole milliseconds (an int, which JSON
    writes in a tenth of a float's time); groups written before held seconds, as a
    float. Both read back as the page view's time in seconds."""
    path = tmp_path / "times.db"
    store = SQLiteStore(f"sqlite:///{path}")
    try:
        new = pageview(START, 10, "v01", "/new")._replace(ts=ts_of(START, 10) + 0.0004567)
        store.write([new], [])
        old_ts = ts_of(START, 20) + 0.123456
        conn = sqlite3.connect(path)
        try:
            ((views,),) = conn.execute("SELECT views FROM pageview_groups").fetchall()
            assert json.loads(views) == [int(new.ts * 1000), "/new", None, None]
            # groups as files written before held them: seconds, a float, or an int
            # where the page view's time was one
            whole = int(ts_of(START, 30))
            conn.executemany(
                "INSERT INTO pageview_groups VALUES (?, 'v01', NULL, ?, ?, ?, 0, 1, ?)",
                [
                    (START.isoformat(), *CLASSES[0], json.dumps([old_ts, "/old", None, None])),
                    (START.isoformat(), *CLASSES[0], json.dumps([whole, "/whole", None, None])),
                ],
            )
            conn.commit()
        finally:
            conn.close()
        _, rows = stored.of(store._conn(), "visitor_id", "v01")
        assert sorted((pv.path, pv.ts) for pv in rows) == [
            ("/new", int(new.ts * 1000) / 1000),
            ("/old", old_ts),
            ("/whole", whole),
        ]
        data = store.visitor_data("v01")
        assert [(p["time"][11:19], p["page"]) for p in data["pageviews"]] == [
            ("00:00:10", "/new"),
            ("00:00:20", "/old"),
            ("00:00:30", "/whole"),
        ]
    finally:
        store.close()


@pytest.mark.parametrize("ts", [5.25, 0.0, -86_400.5, 99_999_999.75, 2e11, float("inf")])
def test_times_milliseconds_cannot_hold_are_kept_as_seconds(tmp_path: Path, ts: float) -> None:
    """Only times from March 1973 to the year 5138 are kept as milliseconds; any other
    time comes back as it was written, as all of them did before."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'odd.db'}")
    try:
        store.write([pageview(START, 0, "v01", "/odd")._replace(ts=ts)], [])
        _, rows = stored.of(store._conn(), "visitor_id", "v01")
        assert [pv.ts for pv in rows] == [ts]
    finally:
        store.close()
