"""Shutdowns, recycling, forks, crashes and a full disk, with real server processes.

Each test runs a small site (``site_flask`` under gunicorn, ``site_starlette`` under
uvicorn) on a SQLite file in ``tmp_path``, sends real HTTP requests, and ends with the
exact count, or the loss bound the docs state for ``kill -9`` (the events of the last
``flush_interval`` seconds).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import need_service
from tests.hardening.load import Load
from tests.hardening.servers import CHROME, SERVERS, argv_for, env_for
from tests.servers.running import (
    GUNICORN_DONE,
    REPO,
    UVICORN_DONE,
    free_port,
    report_via_tracker,
    request,
    running,
    sqlite_url,
    stopped_cleanly,
)

pytestmark = pytest.mark.server

UA = {"User-Agent": CHROME}


def pageviews(db: Path) -> int:
    return int(report_via_tracker(sqlite_url(db))["pageviews"])


def wait_until(check: object, timeout: float = 120, what: str = "") -> None:
    """Poll ``check()`` until true (a correctness wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_during_load_writes_everything_answered(server: str, tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    port = free_port()
    # A long flush interval: what is written, is written by the shutdown itself.
    env = env_for(db, FLUSH_INTERVAL="60", BATCH_SIZE="100000")
    with running(
        argv_for(server, port), env=env, cwd=REPO, log_path=tmp_path / "s.log", port=port
    ) as srv:
        load = Load(port, threads=4).start()
        load.wait_for(300)
        load.stopping.set()
        srv.proc.send_signal(signal.SIGTERM)  # while the clients keep sending
        srv.proc.wait(120)
        load.join()
        assert stopped_cleanly(srv, UVICORN_DONE if server == "uvicorn" else GUNICORN_DONE)
        log = srv.log()
    assert load.answered >= 300
    assert set(load.statuses) == {200}, load.statuses
    assert pageviews(db) == load.answered, log
    assert "Traceback" not in log


def test_max_requests_recycling_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    port = free_port()
    argv = argv_for("gunicorn-sync", port, workers=2, extra=("--max-requests", "50"))
    with running(
        argv,
        env=env_for(db, FLUSH_INTERVAL="60", BATCH_SIZE="100000"),
        cwd=REPO,
        log_path=tmp_path / "s.log",
        port=port,
    ) as srv:
        load = Load(port, threads=2, limit=400).start()
        load.join()
        pids = {json.loads(request(port, "GET", "/pid")[2])["pid"] for _ in range(4)}
        assert srv.stop() == 0
        log = srv.log()
    assert load.answered == 400
    assert log.count("Autorestarting worker") >= 6, log
    assert pids  # workers were still serving after the recycling
    assert pageviews(db) == 400
    assert "Traceback" not in log


def test_preload_opens_nothing_that_crosses_a_fork(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    port = free_port()
    argv = argv_for("gunicorn-sync", port, workers=2, extra=("--preload",))
    env = env_for(db, FLUSH_INTERVAL="0.5", HARDENING_OPEN_STORE="1")
    env["HARDENING_OPEN_STORE"] = "1"
    with running(argv, env=env, cwd=REPO, log_path=tmp_path / "s.log", port=port) as srv:
        assert db.exists()  # the master opened (and created) the store before forking
        load = Load(port, threads=4, limit=300).start()
        load.join()
        workers = {json.loads(request(port, "GET", "/pid")[2])["pid"] for _ in range(8)}
        assert srv.proc.pid not in workers
        wait_until(lambda: pageviews(db) == 300, what="300 page views written by the workers")
        assert srv.stop() == 0
        log = srv.log()
    assert load.answered == 300
    assert pageviews(db) == 300
    assert "Traceback" not in log and "ERROR" not in log.replace("[ERROR] Worker", ""), log


def test_kill_9_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    port = free_port()
    flush_interval = 0.5
    env = env_for(db, FLUSH_INTERVAL=str(flush_interval))
    argv = argv_for("gunicorn-sync", port, workers=1)
    with running(argv, env=env, cwd=REPO, log_path=tmp_path / "s.log", port=port) as srv:
        worker = json.loads(request(port, "GET", "/pid")[2])["pid"]
        early = Load(port, threads=2, limit=100).start()
        early.join()
        assert early.answered == 100
        time.sleep(6 * flush_interval)  # past the documented bound: these are written
        late = Load(port, threads=1, limit=10).start()
        late.join()
        os.kill(worker, signal.SIGKILL)
        stored = pageviews(db)
        assert 100 <= stored <= 110, stored
        # The master replaces the worker; the site keeps counting.
        wait_until(lambda: request(port, "GET", "/pid")[0] == 200, what="a new worker answering")
        after = Load(port, threads=1, limit=20).start()
        after.join()
        assert srv.stop() == 0
    final = pageviews(db)
    assert final == stored + 20


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only), always unmounted."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True, check=False,
    )  # fmt: skip
    need_service(done.returncode == 0, f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free space)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        chunk = b"\0" * 4096
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def test_a_full_disk_keeps_the_site_up_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    with small_tmpfs(tmp_path / "disk", "3m") as disk:
        db = disk / "t.db"
        env = env_for(db, FLUSH_INTERVAL="0.2")
        log_path = tmp_path / "s.log"
        with running(
            argv_for("uvicorn", port), env=env, cwd=REPO, log_path=log_path, port=port
        ) as srv:
            assert request(port, "GET", "/_trackmw/pixel.gif?p=/first", UA)[0] == 200
            wait_until(lambda: db.exists() and pageviews(db) == 1, what="the first hit")
            filler = fill(disk)
            load = Load(port, threads=2, limit=300).start()
            load.join()
            pages = [request(port, "GET", "/", UA)[0] for _ in range(20)]
            assert load.answered == 300 and set(load.statuses) == {200}
            assert set(pages) == {200}
            wait_until(lambda: "events kept" in srv.log(), what="the store error logged")
            filler.unlink()
            wait_until(lambda: pageviews(db) == 301, timeout=180, what="all 301 written")
            srv.stop()
            log = srv.log()
        report = report_via_tracker(sqlite_url(db))
        # Every hit came without a cookie: each one is a new visitor.
        assert (report["pageviews"], report["visitors"]) == (301, 301)
        assert sum(p["pageviews"] for p in report["pages"]) == 301
        assert "is back" in log
        # The log names the cause (SQLite's own words), not a follow-up error.
        assert "database or disk is full" in log, log
