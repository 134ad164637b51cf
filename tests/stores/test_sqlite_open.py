"""Processes opening a new SQLite file at the same moment all get to write to it.

Switching a new file to WAL takes an exclusive lock that SQLite refuses at once,
without waiting, while another process holds one: gunicorn's workers flushing at
shutdown into a file none of them had opened yet lost a batch that way.
"""

from __future__ import annotations

import multiprocessing
import time
from datetime import date
from pathlib import Path
from typing import Any

from trackmw.events import PageView
from trackmw.stores.sqlite import SQLiteStore


def _write_once(path: str, barrier: Any, results: Any) -> None:
    store = SQLiteStore(f"sqlite:///{path}")
    view = PageView(
        time.time(),
        "2026-11-26",
        "v" * 22,
        None,
        "/",
        None,
        None,
        "Chrome",
        "Linux",
        "desktop",
        False,
    )
    barrier.wait()
    try:
        store.write([view], [])
        results.put("ok")
    except Exception as exc:  # reported to the test, not raised in the child
        results.put(repr(exc))
    finally:
        store.close()


def test_workers_opening_a_new_file_together_all_write(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for attempt in range(12):
        path = str(tmp_path / f"new-{attempt}.db")
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_write_once, args=(path, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 3
        store = SQLiteStore(f"sqlite:///{path}")
        try:
            day = date(2026, 11, 26)
            assert store.report(day, day).pageviews == 3
        finally:
            store.close()
