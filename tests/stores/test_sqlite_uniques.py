"""SQLite's distinct counts when visitors change browser class.

A visitor seen with one browser, OS and device keeps them as a class segment that
follows its own chain; a second class writes the first one's chains out. Reports must
equal the reference (the memory store) through every step: class changes in later
batches, within one batch, on days arriving late, then erasure and retention.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import date, timedelta
from pathlib import Path

import pytest

from trackmw.events import PageView
from trackmw.stores import sqlite_chains
from trackmw.stores.memory import MemoryStore
from trackmw.stores.sqlite import SQLiteStore

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


@pytest.fixture
def stores(tmp_path: Path) -> tuple[SQLiteStore, MemoryStore]:
    sql = SQLiteStore(f"sqlite:///{tmp_path / 'u.db'}")
    yield sql, MemoryStore("memory://")
    sql.close()


def test_class_changes_keep_reports_equal(stores: tuple[SQLiteStore, MemoryStore]) -> None:
    sql, mem = stores
    for batch in STEPS:
        sql.write(batch, [])
        mem.write(batch, [])
        assert_same(sql, mem)


def test_erasure_and_retention_after_class_changes(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    sql, mem = stores
    for batch in STEPS:
        sql.write(batch, [])
        mem.write(batch, [])
    assert sql.erase("v1") == mem.erase("v1")
    assert_same(sql, mem)
    cut = START + timedelta(days=4)
    assert sql.purge(cut) == mem.purge(cut)
    assert_same(sql, mem)
    later = [view(8, "v2", "/a", PHONE), view(8, "v4", "/c", CHROME)]
    sql.write(later, [])
    mem.write(later, [])
    assert_same(sql, mem)


def test_a_visitor_with_one_class_keeps_no_copies_of_its_chain(
    stores: tuple[SQLiteStore, MemoryStore],
) -> None:
    sql, _ = stores
    for day in range(5):
        sql.write([view(day, "v1", "/a", CHROME), view(day, "v2", "/a", CHROME)], [])
    sql.write([view(5, "v2", "/a", PHONE)], [])
    conn = sqlite3.connect(sql.path)
    try:
        rows = dict(conn.execute("SELECT key, chains FROM uniq_entities"))
    finally:
        conn.close()
    one, two = rows["v:v1"].split(";"), rows["v:v2"].split(";")
    # v1: the class, the visitor's chain and the page's. v2: the visitor's and the
    # page's, and those of both classes' browser, OS and device written out.
    assert one[0].startswith("c:") and len(one) == 3
    assert not two[0].startswith("c:") and len(two) == 2 + 6


@pytest.mark.parametrize(
    "text, cut, expected",
    [
        ("1:5,7,9;12:5", 7, "1:7,9"),  # a page chain wholly before the cut goes
        ("1:7,9;12:8", 7, "1:7,9;12:8"),  # nothing before the cut: unchanged
        ("c:3,4,0;1:5,7;12:5", 6, "c:3,4,0;1:7"),  # the class follows the visitor's chain
        ("c:3,4,0;1:5;12:5", 6, None),  # no day left: only the class would stay
        ("2:5", 6, None),  # a user's chain, gone
    ],
)
def test_retention_keeps_each_chains_days_from_the_cut(
    text: str, cut: int, expected: str | None
) -> None:
    assert sqlite_chains.since(text, cut) == expected


@pytest.mark.parametrize("seed", range(20))
def test_merged_chains_hold_every_day_and_their_links_add_up(seed: int) -> None:
    # Batch after batch of days, in and out of order, one or several a dimension, some
    # dimensions new: the text must hold each dimension's days, sorted, and the links
    # added up over the batches must be exactly those of the final chains.
    rng = random.Random(seed)
    text, days, delta = "", {}, {}  # type: ignore[var-annotated]
    visitors, mirrored = 1, (7, 8)
    for _ in range(12):
        visits: dict[int, set[int]] = {}
        # Up to 4 dimensions, or up to 20 (a heavy visitor's batch: the text indexed).
        many = rng.randint(1, 20 if seed % 2 else 4)
        for dim in rng.sample([1, 2, 3, 12, 21, 123, *range(30, 50)], many):
            visits[dim] = set(rng.sample(range(700, 716), rng.choice([1, 1, 1, 2, 3])))
        for dim, new in visits.items():
            days.setdefault(dim, set()).update(new)
        text = sqlite_chains.merge(text, visits, delta, visitors, mirrored)
    stored = sqlite_chains.split(text)
    assert {dim: sqlite_chains.parse_days(d) for dim, d in stored.items()} == {
        dim: sorted(d) for dim, d in days.items()
    }
    expected: dict[tuple[int, int, int], int] = {}
    for dim, chain in days.items():
        prev = -1
        for day in sorted(chain):
            for linked in (dim, *mirrored) if dim == visitors else (dim,):
                expected[linked, day, prev] = 1
            prev = day
    assert {key: n for key, n in delta.items() if n} == expected
