"""SQLite writes the batches sent one after another in one transaction.

``send`` holds a batch; the batches after it join it until ``group_events`` would be
passed, and ``sync`` writes what is held. Each batch is still written exactly once,
in order, and a group that cannot be written stays held, through the pipeline, its
close and a fork. The faults are real: another connection holding the file's lock.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from trackmw.errors import StoreError
from trackmw.events import Hit
from trackmw.pipeline import Pipeline
from trackmw.stores.sqlite import SQLiteStore

from .data import START, consent, named_batch


def _pages(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM daily_counts WHERE kind = 'page'").fetchall()
    return sorted(name for (name,) in rows)


def _commits(store: SQLiteStore) -> list[int]:
    """The number of events of each transaction the store commits, from now on."""
    sizes: list[int] = []
    write = store._write

    def counted(pageviews, consents):  # type: ignore[no-untyped-def]
        write(pageviews, consents)
        sizes.append(len(pageviews) + len(consents))

    store._write = counted  # type: ignore[method-assign]
    return sizes


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Another process's write lock on the file, for as long as the block runs."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def _impatient(path: Path) -> SQLiteStore:
    store = SQLiteStore(f"sqlite:///{path}")
    store.busy_timeout = 0.05
    store.group_events = 250
    store.write([], [])  # the schema
    return store


def _asleep(path: Path) -> Pipeline:
    """A pipeline whose writer thread never wakes by itself: only ``drain`` writes (a
    writer inside SQLite when the test forks would leave the child a locked mutex)."""
    return Pipeline(lambda: _impatient(path), batch_size=10_000, flush_interval=3600)


def _hits(n: int, visitors: tuple[str, ...]) -> list[Hit]:
    now = time.time()
    agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
    return [
        Hit(now + i / 1000, visitors[i % len(visitors)], None, f"/p{i}", None, None, agent,
            "example.org")
        for i in range(n)
    ]


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


def test_write_writes_the_held_batches_first(store: SQLiteStore) -> None:
    commits = _commits(store)
    store.send(named_batch("sent", 30), [])
    store.write(named_batch("written", 20), [])
    assert commits == [30, 20]
    assert store.held() == 0
    store.close()


def test_a_group_that_cannot_be_written_stays_held_and_the_next_batch_is_refused(
    store: SQLiteStore, tmp_path: Path
) -> None:
    store.busy_timeout = 0.05
    store.close()  # reconnects with the short timeout
    store.send(named_batch("kept", 200), [])
    with _locked(tmp_path / "groups.db"):
        with pytest.raises(StoreError):
            store.send(named_batch("refused", 100), [])  # the held group failed: not taken
        assert store.held() == 200
        with pytest.raises(StoreError):
            store.sync()
        assert store.held() == 200
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


def test_close_tries_a_failed_group_once_more_and_says_what_it_could_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="trackmw")
    path = tmp_path / "closing.db"
    store = _impatient(path)
    store.send(named_batch("late", 40), [])
    with _locked(path):
        with pytest.raises(StoreError):
            store.sync()
        store.close()  # still locked: logged, and kept
        assert store.held() == 40
        assert any("40 events sent are not written" in r.getMessage() for r in caplog.records)
    store.close()  # the lock is free: written
    assert store.held() == 0
    assert store.report(START, START).pageviews == 40
    store.close()


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


def test_a_forked_child_that_only_closes_leaves_the_parents_batches_alone(
    store: SQLiteStore,
) -> None:
    store.send(named_batch("parent", 40), [])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            store.close()  # nothing of the child's to write, no parent connection closed
            code = 0 if store.held() == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.report(START, START).pageviews == 1  # the parent's batch: still held
    store.sync()
    assert store.report(START, START).pageviews == 1 + 40
    store.close()


def test_the_pipeline_counts_held_events_as_unwritten_and_erasure_writes_them_first(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pipeline.db"
    pipeline = _asleep(path)
    try:
        for hit in _hits(220, ("a" * 22, "b" * 22)):
            pipeline.add(hit)
        with _locked(path):
            assert not pipeline.drain()
            assert (len(pipeline), pipeline.written, pipeline.store.held()) == (220, 0, 220)
        assert pipeline.erase("a" * 22) == 110  # the held group written, then erased
        assert (len(pipeline), pipeline.written) == (0, 220)
        assert pipeline.store.visitor_data("a" * 22)["pageviews"] == []
        assert len(pipeline.store.visitor_data("b" * 22)["pageviews"]) == 110
    finally:
        assert pipeline.close()


def test_a_forked_pipeline_leaves_the_events_its_parents_store_holds_to_the_parent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "forked.db"
    pipeline = _asleep(path)
    for hit in _hits(150, ("v" * 22,)):
        pipeline.add(hit)
    with _locked(path):
        assert not pipeline.drain()  # the 150 held by the store, unwritten
    pid = os.fork()
    if pid == 0:  # the child: nothing of its parent's, one hit of its own
        code = 1
        try:
            if len(pipeline) == 0 and pipeline.store.held() == 0:
                pipeline.add(_hits(1, ("child" + "c" * 17,))[0])
                code = 0 if pipeline.close() else 3
            else:
                code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pipeline.close()
    with sqlite3.connect(path) as conn:
        ((total,),) = conn.execute(
            "SELECT sum(pageviews) FROM daily_counts WHERE kind = 'total'").fetchall()
    assert total == 150 + 1
