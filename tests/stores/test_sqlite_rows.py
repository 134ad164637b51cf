"""``insert_rows`` writes every row once, in order, whatever their number and width."""

from __future__ import annotations

import sqlite3

import pytest

from trackmw.stores.sqlite_rows import insert_rows


@pytest.mark.parametrize("count", [0, 1, 2, 63, 64, 65, 255, 256, 257, 1000])
@pytest.mark.parametrize("width", [1, 4, 9])
def test_every_row_is_inserted_once(count: int, width: int) -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE TABLE t ({', '.join(f'c{i}' for i in range(width))})")
        rows = [tuple(f"{r}.{c}" for c in range(width)) for r in range(count)]
        insert_rows(conn, "INSERT INTO t", rows)
        assert conn.execute("SELECT * FROM t ORDER BY rowid").fetchall() == rows
    finally:
        conn.close()


def test_a_later_row_meets_the_earlier_ones_conflict_clause() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
        rows = [(f"k{i % 7}", 1) for i in range(300)]
        insert_rows(conn, "INSERT INTO t", rows, "ON CONFLICT (k) DO UPDATE SET n = n + excluded.n")
        counts = dict(conn.execute("SELECT k, n FROM t").fetchall())
        assert counts == {f"k{i}": len(range(i, 300, 7)) for i in range(7)}
    finally:
        conn.close()
