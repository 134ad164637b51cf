"""SQLite's distinct counts: visitors who change browser class, ordinals past 16 bits,
what erasure and retention leave of the visitors' ids, and reading a day's sets within
the bound values older SQLite allows a statement.

Reports must equal the reference (the memory store) through every step: class changes
in later batches, within one batch, on days arriving late, then erasure and retention.
"""

from __future__ import annotations

import sqlite3
from datetime import date, timedelta
from pathlib import Path

import pytest
from pyroaring import BitMap

from trackmw.events import PageView
from trackmw.stores import sqlite_uniques
from trackmw.stores.memory import MemoryStore
from trackmw.stores.sqlite import SQLiteStore
from trackmw.stores.sqlite_rows import IN_VALUES, MAX_VALUES
from trackmw.stores.sqlite_uniques import Uniques

from .data import START, assert_same_report, ts_of

CHROME = ("Chrome", "Windows", "desktop")
FIREFOX = ("Firefox", "Windows", "desktop")  # shares the OS and the device
PHONE = ("Mobile Safari", "iOS", "mobile")


def view(day: int, visitor: str, path: str, cls: tuple[str, str, str]) -> PageView:
    when = START + timedelta(days=day)
    return PageView(ts_of(when, 60), when.isoformat(), visitor, None, path, None, None, *cls, False)


STEPS: list[list[PageView]] = [
    [view(2, "v1", "/a", CHROME), view(2, "v2", "/a", PHONE), view(3, "v3", "/b", CHROME)],
    [view(4, "v1", "/b", FIREFOX), view(4, "v2", "/b", PHONE)],  # v1: a second class
    [view(0, "v2", "/a", CHROME), view(1, "v2", "/c", PHONE)],  # late days, v2 too
    [view(5, "v3", "/a", CHROME), view(5, "v3", "/c", PHONE), view(6, "v4", "/a", PHONE)],
    [view(3, "v1", "/a", CHROME), view(6, "v4", "/b", PHONE), view(7, "v4", "/a", PHONE)],
]


def ranges() -> list[tuple[date, date]]:
    return [
        (START + timedelta(days=a), START + timedelta(days=b))
        for a in range(0, 8)
        for b in range(a, 8)
    ]


def assert_same(sql: SQLiteStore, mem: MemoryStore) -> None:
    for since, until in ranges():
        assert_same_report(sql.report(since, until), mem.report(since, until))


def write(sql: SQLiteStore, mem: MemoryStore, *batches: list[PageView]) -> None:
    """The same batches to both stores, one after another."""
    for batch in batches:
        sql.write(batch, [])
        mem.write(batch, [])


@pytest.fixture
def stores(tmp_path: Path) -> tuple[SQLiteStore, MemoryStore]:
    sql = SQLiteStore(f"sqlite:///{tmp_path / 'u.db'}")
    yield sql, MemoryStore("memory://")
    sql.close()


def test_class_changes_keep_reports_equal(stores: tuple[SQLiteStore, MemoryStore]) -> None:
    sql, mem = stores
    for batch in STEPS:
        write(sql, mem, batch)
        assert_same(sql, mem)


def test_erasure_and_retention_after_class_changes(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    sql, mem = stores
    write(sql, mem, *STEPS)
    assert sql.erase("v1") == mem.erase("v1")
    assert_same(sql, mem)
    cut = START + timedelta(days=4)
    assert sql.purge(cut) == mem.purge(cut)
    assert_same(sql, mem)
    later = [view(8, "v2", "/a", PHONE), view(8, "v4", "/c", CHROME)]
    write(sql, mem, later)
    assert_same(sql, mem)


def ids(sql: SQLiteStore) -> dict[str, int]:
    conn = sqlite3.connect(sql.path)
    try:
        return dict(conn.execute("SELECT key, n FROM uniq_ids"))
    finally:
        conn.close()


def test_ordinals_past_sixteen_bits_count_as_any_other(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    # A set's row holds its ordinals' lower 16 bits: ordinals on both sides of 65,536
    # (v1 below, the others above) land in rows of their own, and count once each.
    sql, mem = stores
    write(sql, mem, STEPS[0][:1])
    conn = sqlite3.connect(sql.path, isolation_level=None)
    try:
        conn.execute("UPDATE sqlite_sequence SET seq = 65534 WHERE name = 'uniq_ids'")
    finally:
        conn.close()
    for batch in STEPS:
        write(sql, mem, batch)
        assert_same(sql, mem)
    assert ids(sql)["v:v1"] == 1 and min(n for k, n in ids(sql).items() if k != "v:v1") == 65535
    assert sql.erase("v3") == mem.erase("v3")
    assert_same(sql, mem)


def test_erasure_forgets_the_ids_and_never_gives_an_ordinal_again(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    sql, mem = stores
    for batch in STEPS:
        sql.write(batch, [])
    before = ids(sql)
    assert sql.erase("v4") > 0
    after = ids(sql)
    assert "v:v4" not in after and after == {k: n for k, n in before.items() if k != "v:v4"}
    # v4's ordinal was the highest given: the next visitor gets the one after it.
    assert before["v:v4"] == max(before.values())
    sql.write([view(7, "v5", "/a", PHONE)], [])
    assert ids(sql)["v:v5"] == before["v:v4"] + 1


def test_retention_forgets_the_ids_of_visitors_seen_on_no_later_day(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    sql, mem = stores
    write(sql, mem, *STEPS)
    # After day 5 only v3 (day 5) and v4 (days 6 and 7) were seen.
    assert sql.purge(START + timedelta(days=5)) == mem.purge(START + timedelta(days=5))
    assert set(ids(sql)) == {"v:v3", "v:v4"}
    assert_same(sql, mem)


def test_a_user_whose_last_counted_view_is_erased_leaves_no_id(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    # U's page views: v1's, counted, and a bot's, not counted. Once v1 is erased, U is
    # in no set: its id goes, whichever erasure takes its last counted view.
    sql, _ = stores
    when = START + timedelta(days=1)
    counted = view(1, "v1", "/a", CHROME)._replace(user_id="U")
    bot = PageView(ts_of(when, 90), when.isoformat(), "b1", "U", "/a", None, None,
                   None, None, None, True)
    sql.write([counted, bot], [])
    assert set(ids(sql)) == {"v:v1", "u:U"}
    sql.erase("v1")
    assert set(ids(sql)) == set()
    sql.erase("b1", "U")
    assert set(ids(sql)) == set()


def test_a_file_whose_ordinal_count_was_lost_goes_on_numbering(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    # A copy of the file without sqlite_sequence's row (some tools lose it): the next
    # ordinals come after the highest in uniq_ids, and the writes go on.
    sql, mem = stores
    write(sql, mem, STEPS[0])
    conn = sqlite3.connect(sql.path, isolation_level=None)
    try:
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'uniq_ids'")
    finally:
        conn.close()
    write(sql, mem, *STEPS[1:])
    assert_same(sql, mem)
    assert sorted(ids(sql).values()) == list(range(1, len(ids(sql)) + 1))


def test_a_purge_that_rolls_back_leaves_no_dimension_id_behind(
    stores: tuple[SQLiteStore, MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A purge rolled back on a store that never counted a visitor leaves the reports
    # as they would have been (it makes no dimension since 4565820: see the next test
    # for one that does, and is rolled back).
    sql, mem = stores
    real = Uniques.purge

    def purge_then_fail(self: Uniques, conn: sqlite3.Connection, before: date) -> None:
        real(self, conn, before)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Uniques, "purge", purge_then_fail)
    with pytest.raises(Exception, match="disk I/O error"):
        sql.purge(START)
    assert sql._conn().execute("SELECT count(*) FROM uniq_dims").fetchone() == (0,)
    monkeypatch.undo()
    write(sql, mem, *STEPS)
    assert_same(sql, mem)


def test_a_write_that_rolls_back_leaves_no_dimension_id_behind(
    stores: tuple[SQLiteStore, MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write that fails after its distinct counts made a page's dimension: rolled
    # back, the dimension's id is gone, and the next one made gets the same id. Were
    # the first kept in the cache, its page and the next would count as one.
    sql, mem = stores
    write(sql, mem, STEPS[0])
    real = Uniques.add

    def add_then_fail(self: Uniques, conn: sqlite3.Connection, groups: object) -> None:
        real(self, conn, groups)  # type: ignore[arg-type]
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Uniques, "add", add_then_fail)
    with pytest.raises(Exception, match="disk I/O error"):
        sql.write([view(2, "v5", "/new", CHROME)], [])
    monkeypatch.undo()
    write(sql, mem, [view(2, "v6", "/other", CHROME)], [view(2, "v7", "/new", PHONE)])
    write(sql, mem, *STEPS[1:])
    assert_same(sql, mem)


def test_reading_a_days_sets_stays_under_the_variable_limit_of_older_sqlite() -> None:
    """A day's sets are read with its dimensions (``IN_VALUES`` a statement) and, up to
    ``_MAX_UPPER`` of them, its upper bits in one statement: it must fit the 999 bound
    values a statement that SQLite allowed before 3.32 (and builds may still set)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, MAX_VALUES)
        conn.executescript(sqlite_uniques.SCHEMA)
        day = 739_947
        # As many dimensions as one statement lists, and as many upper bits as are listed.
        sets = {(day, dim, 0): [1] for dim in range(IN_VALUES)}
        sets |= {(day, 0, hi): [2] for hi in range(sqlite_uniques._MAX_UPPER)}
        sqlite_uniques._change(conn, sets, BitMap.update)
        assert conn.execute("SELECT count(*) FROM uniq_sets").fetchone() == (len(sets),)
    finally:
        conn.close()
