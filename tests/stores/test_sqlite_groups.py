"""SQLite writes the batches sent one after another in one transaction.

``send`` holds a batch; the batches after it join it until ``group_events`` would be
passed, and ``sync`` writes what is held. Each batch is still written exactly once,
in order, and a group that cannot be written stays held.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from trackmw.errors import StoreError
from trackmw.stores.sqlite import SQLiteStore

from .data import START, consent, named_batch


def _pages(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM daily_counts WHERE kind = 'page'").fetchall()
    return sorted(name for (name,) in rows)


def _commits(store: SQLiteStore) -> list[int]:
    """The number of events of each transaction ``write`` commits, from now on."""
    sizes: list[int] = []
    write = store.write

    def counted(pageviews, consents):  # type: ignore[no-untyped-def]
        write(pageviews, consents)
        sizes.append(len(pageviews) + len(consents))

    store.write = counted  # type: ignore[method-assign]
    return sizes


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'groups.db'}")
    store.group_events = 250
    store.write(named_batch("warm", 1), [])
    return store


def test_batches_sent_together_share_a_transaction_up_to_the_group_size(
    store: SQLiteStore, tmp_path: Path
) -> None:
    commits = _commits(store)
    for name in ("a", "b", "c", "d", "e"):
        store.send(named_batch(name, 100), [consent(START, 1, "v1", True)])
    # a and b (202 events) made a group that c would have taken past 250; so did c, d.
    assert commits == [202, 202]
    assert store.held() == 101
    assert store.report(START, START).pageviews == 1 + 400  # e is not written yet
    store.sync()
    assert commits == [202, 202, 101]
    assert store.held() == 0
    store.sync()  # nothing held: nothing written
    assert commits == [202, 202, 101]
    expected = sorted(p.path for name in ("warm", "a", "b", "c", "d", "e")
                      for p in named_batch(name, 1 if name == "warm" else 100))
    assert _pages(tmp_path / "groups.db") == expected
    assert store.report(START, START).pageviews == 501  # each batch once
    assert store.report(START, START).consent == {"accepted": 5, "rejected": 0}
    store.close()


def test_a_batch_larger_than_a_group_is_written_alone(store: SQLiteStore) -> None:
    commits = _commits(store)
    store.send(named_batch("big", 600), [])
    store.send(named_batch("small", 10), [])
    store.sync()
    assert commits == [600, 10]
    store.close()


def test_a_group_that_cannot_be_written_stays_held_and_the_next_batch_is_refused(
    store: SQLiteStore, tmp_path: Path
) -> None:
    store.busy_timeout = 0.05
    store.close()  # reconnects with the short timeout
    store.send(named_batch("kept", 200), [])
    other = sqlite3.connect(tmp_path / "groups.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with pytest.raises(StoreError):
            store.send(named_batch("refused", 100), [])  # the held group failed: not taken
        assert store.held() == 200
        with pytest.raises(StoreError):
            store.sync()
        assert store.held() == 200
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.send(named_batch("later", 20), [])
    store.sync()
    assert store.held() == 0
    names = {page.split("/")[1] for page in _pages(tmp_path / "groups.db")}
    assert names == {"warm", "kept", "later"}
    assert store.report(START, START).pageviews == 1 + 200 + 20
    store.close()


def test_close_writes_what_is_held(store: SQLiteStore, tmp_path: Path) -> None:
    store.send(named_batch("held", 30), [])
    store.close()
    assert store.held() == 0
    assert store.report(START, START).pageviews == 31


def test_a_forked_child_leaves_its_parents_held_batches_to_the_parent(
    store: SQLiteStore, tmp_path: Path
) -> None:
    store.send(named_batch("parent", 40), [])
    pid = os.fork()
    if pid == 0:  # the child writes a batch of its own, and closes
        code = 1
        try:
            store.send(named_batch("child", 5), [])
            store.sync()
            store.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.sync()
    # The parent's batch written once, by the parent.
    assert store.report(START, START).pageviews == 1 + 40 + 5
    store.close()
