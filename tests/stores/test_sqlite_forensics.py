"""What an erasure or retention leaves on disk: no byte of the erased visitor's or
user's ids, in the database file or its WAL.

SQLite marks a deleted row's space free without overwriting it, and a page that b-tree
balancing rebuilt keeps the old copies of moved cells in its free space: an id "erased"
could be read back from the file with a hex editor until the page is reused. These tests
read the files as bytes.
"""

from __future__ import annotations

import random
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from trackmw.events import ConsentChoice, PageView
from trackmw.stores.sqlite import SQLiteStore

from .data import START, pageview, ts_of


def _id(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=22))


def _views(rng: random.Random, day: int, visitors: list[str], users: dict[str, str],
           n: int) -> list[PageView]:
    when = START + timedelta(days=day)
    out = []
    for i in range(n):
        vid = rng.choice(visitors)
        out.append(pageview(when, i, vid, f"/p/{rng.randrange(300)}",
                            referrer="news.example.org", user=users.get(vid),
                            cls=("Chrome", "Linux", "desktop")))
    return out


def _on_disk(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def _filled(tmp_path: Path) -> tuple[SQLiteStore, Path, list[str], dict[str, str]]:
    """A store with 30 days of 400 visitors' page views, 40 of them signed in, written in
    batches as a site would: enough rows for the indexes' pages to split and merge."""
    rng = random.Random(7)
    path = tmp_path / "t.db"
    store = SQLiteStore(f"sqlite:///{path}")
    visitors = [_id(rng) for _ in range(400)]
    users = {v: f"user{_id(rng)}@example.org" for v in visitors[:40]}
    for day in range(30):
        for _ in range(4):
            consents = [ConsentChoice(ts_of(START, 0), START.isoformat(),
                                      rng.choice(visitors), True, False, "1")]
            store.write(_views(rng, day, visitors, users, 250), consents)
    return store, path, visitors, users


def test_an_erased_visitor_and_user_leave_no_byte_of_their_ids_on_disk(tmp_path: Path) -> None:
    store, path, visitors, users = _filled(tmp_path)
    try:
        erased = visitors[:40:3]  # signed-in visitors, with their users
        assert all(vid.encode() in _on_disk(path) for vid in erased)
        # Half of them from another thread: a connection of its own.
        with ThreadPoolExecutor(1) as other:
            other.submit(lambda: [store.erase(v, users[v]) for v in erased[::2]]).result()
        for vid in erased[1::2]:
            store.erase(vid, users[vid])
        left = _on_disk(path)
        for vid in erased:
            assert vid.encode() not in left
            assert users[vid].encode() not in left
        assert visitors[1].encode() in left  # the others are still there
        assert store.visitor_data(visitors[1])["pageviews"]
    finally:
        store.close()


def test_retention_leaves_no_byte_of_the_ids_it_forgets(tmp_path: Path) -> None:
    store, path, visitors, users = _filled(tmp_path)
    try:
        # Seen on the first days only: forgotten when those days go.
        gone = [_id(random.Random(i)) for i in range(5)]
        old = START - timedelta(days=3)
        store.write([PageView(ts_of(old, 0), old.isoformat(), vid, None, "/old", None, None,
                              None, None, None, False) for vid in gone], [])
        assert all(vid.encode() in _on_disk(path) for vid in gone)
        store.purge(START)
        left = _on_disk(path)
        assert not [vid for vid in gone if vid.encode() in left]
    finally:
        store.close()


def test_deleted_rows_are_overwritten_on_a_build_that_would_leave_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's SQLite overwrites deleted rows by default (``SQLITE_SECURE_DELETE``);
    python.org's and others leave them: the store asks for it on every connection."""
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        conn.execute("PRAGMA secure_delete=OFF")  # such a build's default
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    test_an_erased_visitor_and_user_leave_no_byte_of_their_ids_on_disk(tmp_path)


def test_a_reader_delays_the_truncation_briefly_with_a_warning_and_the_erasure_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, path, visitors, users = _filled(tmp_path)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM pageview_groups").fetchone()  # its snapshot
        store.write(_views(random.Random(1), 30, visitors, users, 50), [])
        with caplog.at_level("WARNING", logger="trackmw"):
            start = time.monotonic()
            assert store.erase(visitors[0], users[visitors[0]]) > 0
            # TRUNCATE_WAIT (a quarter of a second), not the busy timeout (30 s): every
            # writer waits while the truncation does. The bound is loose on purpose.
            assert time.monotonic() - start < 15
        assert "could not be truncated" in caplog.text
        assert "other connections were reading or writing" in caplog.text
        assert not store.visitor_data(visitors[0])["pageviews"]  # the erasure stands
        conn = store._conn()
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000  # restored
        reader.execute("COMMIT")
        caplog.clear()
        with caplog.at_level("WARNING", logger="trackmw"):
            store.erase(visitors[3], users[visitors[3]])  # the next one truncates it
        assert "could not be truncated" not in caplog.text
        assert visitors[0].encode() not in _on_disk(path)
    finally:
        reader.close()
        store.close()
