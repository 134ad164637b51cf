"""The example sites under real servers count exactly what they are sent (issue 2).

The Flask example runs under gunicorn with two worker processes writing one SQLite
file; the Starlette example under uvicorn. Each gets 1,000 pixel hits from 10 visitors
(every visitor first loads a page to get its cookie) and a few Googlebot hits, sent
over real sockets by a few threads. After a clean shutdown (SIGTERM, wait for the
exit) the store must hold exactly 1,000 page views from 10 visitors, the bots apart:
nothing lost in buffers at exit, nothing counted twice. Each runs with the writer as a
thread (the default) and in a process of its own (``writer="process"``: one child per
worker, every one of them gone after the shutdown).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import SECRET, alive, wait_for, writer_processes
from tests.servers.running import (
    BOT_UA,
    BROWSER_UAS,
    GUNICORN_DONE,
    UVICORN_DONE,
    free_port,
    gunicorn_argv,
    report_days,
    report_via_cli,
    report_via_tracker,
    request,
    running,
    server_env,
    set_cookie,
    sqlite_url,
    stopped_cleanly,
    uvicorn_argv,
)

pytestmark = pytest.mark.server

VISITORS = 10
HITS_PER_VISITOR = 100
BOT_HITS = 25
PAGES = ("/", "/about", "/blog")
THREADS = 4


def _first_visit(port: int, user_agent: str) -> str:
    """Load the home page like a browser and return the ``trackmw_id`` cookie it set."""
    status, headers, body = request(port, "GET", "/", {"User-Agent": user_agent})
    assert status == 200
    assert b"/_trackmw/pixel.gif" in body
    cookie = set_cookie(headers, "trackmw_id")
    assert cookie, "the first page view must issue the visitor cookie"
    return cookie


def _hit(port: int, job: tuple[str | None, str, str]) -> tuple[int, str, bytes]:
    cookie, user_agent, page = job
    headers = {"User-Agent": user_agent}
    if cookie is not None:
        headers["Cookie"] = f"trackmw_id={cookie}"
    query = urlencode({"p": page})
    status, response_headers, body = request(port, "GET", f"/_trackmw/pixel.gif?{query}", headers)
    return status, response_headers.get("content-type", ""), body


def _load(port: int) -> None:
    """10 visitors x 100 pixel hits, plus Googlebot, from ``THREADS`` threads."""
    rng = random.Random(20261126)
    jobs: list[tuple[str | None, str, str]] = []
    for n in range(VISITORS):
        user_agent = BROWSER_UAS[n % len(BROWSER_UAS)]
        cookie = _first_visit(port, user_agent)
        jobs += [(cookie, user_agent, rng.choice(PAGES)) for _ in range(HITS_PER_VISITOR)]
    jobs += [(None, BOT_UA, rng.choice(PAGES)) for _ in range(BOT_HITS)]
    rng.shuffle(jobs)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda job: _hit(port, job), jobs))
    assert len(results) == VISITORS * HITS_PER_VISITOR + BOT_HITS
    for status, content_type, body in results:
        assert (status, content_type) == (200, "image/gif")
        assert body.startswith(b"GIF89a")


def _check(document: dict[str, Any]) -> None:
    assert document["pageviews"] == VISITORS * HITS_PER_VISITOR
    assert document["visitors"] == VISITORS
    assert document["bot_hits"] == BOT_HITS
    assert document["anonymous_pageviews"] == 0
    assert sum(p["pageviews"] for p in document["pages"]) == VISITORS * HITS_PER_VISITOR
    assert {p["path"] for p in document["pages"]} == set(PAGES)


def _run_and_count(
    tmp_path: Path, argv_for: Callable[[int], list[str]], last_line: str, writer: str,
    workers: int,
) -> None:
    db = tmp_path / "store.db"
    port = free_port()
    # A flush interval longer than the test: the workers keep every hit buffered until
    # SIGTERM (with writer processes, all but whole batches of 100, which start them),
    # so the count proves that shutting down loses nothing.
    settings = {"WRITER": writer, "BATCH_SIZE": "100"} if writer == "process" else {}
    env = server_env(SECRET_KEYS=SECRET, STORE=sqlite_url(db), FLUSH_INTERVAL="3600", **settings)
    with running(
        argv_for(port), env=env, cwd=tmp_path, log_path=tmp_path / "server.log", port=port
    ) as server:
        _load(port)
        writers: list[int] = []
        if writer == "process":

            def started() -> bool:
                writers[:] = writer_processes(server.proc.pid)
                return len(writers) == workers

            wait_for(started, f"{workers} writer processes")
        server.stop()
    assert stopped_cleanly(server, last_line), server.log()
    assert not [pid for pid in writers if alive(pid)]  # each closed by its worker
    since, until = report_days()
    document = report_via_cli(sqlite_url(db), since, until)  # the installed console script
    _check(document)
    assert report_via_tracker(sqlite_url(db), since, until) == document


WRITERS = pytest.mark.parametrize("writer", ["thread", "process"])


@WRITERS
def test_flask_example_under_gunicorn_two_workers_counts_exactly(
    tmp_path: Path, writer: str
) -> None:
    _run_and_count(
        tmp_path, lambda port: gunicorn_argv(port, workers=2), GUNICORN_DONE, writer, workers=2
    )
    assert (tmp_path / "server.log").read_text().count("Booting worker with pid") == 2


@WRITERS
def test_starlette_example_under_uvicorn_counts_exactly(tmp_path: Path, writer: str) -> None:
    _run_and_count(tmp_path, uvicorn_argv, UVICORN_DONE, writer, workers=1)
