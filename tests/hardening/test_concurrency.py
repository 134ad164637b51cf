"""Exact counts under concurrency: 10,000 pixel hits from 50 visitors, sent by 16
keep-alive client threads to 4 gunicorn worker processes (4 threads each) writing one
store. Exactly 10,000 page views and 50 visitors, no 5xx, no "database is locked"."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_service
from tests.hardening.load import Load
from tests.hardening.servers import CHROME, argv_for, env_for
from tests.servers.running import (
    GUNICORN_DONE,
    REPO,
    free_port,
    report_via_tracker,
    request,
    running,
    set_cookie,
    sqlite_url,
    stopped_cleanly,
)

pytestmark = pytest.mark.server

HITS = 10_000
VISITORS = 50
PAGES = 5
PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_BASE, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "t.db")
        return
    need_service(_postgres_available(), f"PostgreSQL is not reachable at {PG_BASE}")
    import psycopg

    schema = f"hardening_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{PG_BASE}?schema={schema}"
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_ten_thousand_concurrent_hits_are_counted_exactly(store_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = env_for(tmp_path / "unused.db", STORE=store_url, FLUSH_INTERVAL="0.5")
    env["TRACKMW_STORE"] = store_url
    argv = argv_for("gunicorn-gthread", port, workers=4)
    with running(argv, env=env, cwd=REPO, log_path=tmp_path / "s.log", port=port) as srv:
        cookies = []
        for _ in range(VISITORS):
            status, headers, _ = request(port, "GET", "/", {"User-Agent": CHROME})
            assert status == 200
            value = set_cookie(headers, "trackmw_id")
            assert value
            cookies.append(f"trackmw_id={value}")
        assert len(set(cookies)) == VISITORS
        load = Load(
            port,
            threads=16,
            limit=HITS,
            path=lambda thread, n: f"/_trackmw/pixel.gif?p=/page/{n % PAGES}",
            headers=lambda thread, n: {"Cookie": cookies[n % VISITORS]},
        ).start()
        load.join(timeout=600)
        assert srv.stop() == 0
        assert stopped_cleanly(srv, GUNICORN_DONE)
        log = srv.log()
    assert load.statuses == {200: HITS}
    report = report_via_tracker(store_url)
    assert report["pageviews"] == HITS
    assert report["visitors"] == VISITORS
    assert report["anonymous_pageviews"] == 0
    assert sorted(p["pageviews"] for p in report["pages"]) == [HITS // PAGES] * PAGES
    assert "database is locked" not in log
    assert "Traceback" not in log
    assert "trackmw:" not in log, log  # nothing logged by trackmw: no error, no retry
