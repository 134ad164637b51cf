"""``python -m bench`` runs: the in-process and report sections, quick, print their table
and valid JSON.

No figure is checked (no timed assertions): only that every variant ran, answered as it
should (the harness checks each answer before timing it) and was reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Every in-process variant, always there (Flask-Track-Usage only when it installs).
VARIANTS = {
    "asgi.bare",
    "asgi.trackmw.returning",
    "asgi.trackmw.resigned",
    "asgi.trackmw.new",
    "asgi.bare.static",
    "asgi.trackmw.static",
    "asgi.noop",
    "asgi.session",
    "asgi.basehttp",
    "gif.raw",
    "gif.middleware",
    "gif.route",
    "pixel.returning",
    "pixel.wrapped",
    "pixel.new",
    "wsgi.flask",
    "wsgi.trackmw.returning",
    "wsgi.trackmw.new",
}


def _quick(section: str, tmp_path: Path, services: bool = False) -> tuple[str, list[Any]]:
    """``python -m bench --quick --only SECTION``: what it printed, and its JSON results.
    With ``services``, Redis and PostgreSQL must be up (else the test skips)."""
    if services:
        from tests.conftest import need_service
        from tests.stores.conftest import postgres_up, redis_up

        need_service(redis_up(), "Redis is not running on 127.0.0.1:6379")
        need_service(postgres_up(), "PostgreSQL is not running on 127.0.0.1:5432")
    out = tmp_path / "results.json"
    done = _python("-m", "bench", "--quick", "--only", section, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.read_text())


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """This Python run with ``args`` in the repository, the ``bench`` package importable."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_quick_inprocess_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    stdout, document = _quick("inprocess", tmp_path)
    lines = stdout.splitlines()
    assert lines[0].startswith("trackmw benchmarks:")
    assert lines[1].startswith("| figure ") and set(lines[2]) <= {"|", "-"}
    by_name = {entry["name"]: entry for entry in document}
    assert VARIANTS <= set(by_name)
    for entry in document:
        assert set(entry) >= {"name", "value", "unit", "baseline", "ratio"}
        assert entry["value"] > 0 and entry["unit"] == "µs/request"
        if entry["baseline"] is not None:
            assert entry["baseline"] in by_name
            assert entry["ratio"] > 0
        assert entry["label"] in stdout
    assert by_name["asgi.trackmw.returning"]["baseline"] == "asgi.bare"
    assert by_name["asgi.trackmw.resigned"]["baseline"] == "asgi.bare"
    assert by_name["pixel.returning"]["baseline"] == "gif.raw"
    assert by_name["wsgi.trackmw.returning"]["baseline"] == "wsgi.flask"


@pytest.mark.services
def test_quick_report_section_times_the_report_on_every_store_it_reaches(tmp_path: Path) -> None:
    stdout, document = _quick("report", tmp_path, services=True)
    names = {entry["name"] for entry in document}
    for store in ("sqlite", "redis", "postgres"):
        assert {f"report.{store}_30d.quick", f"report.{store}_30d.warm.quick"} <= names
    assert "PostgreSQL's tables analyzed" in stdout


@pytest.mark.services
def test_quick_stores_section_writes_to_every_store_a_redis_cluster_included(
    tmp_path: Path,
) -> None:
    _, document = _quick("stores", tmp_path, services=True)
    by_name = {entry["name"]: entry for entry in document}
    for store in ("sqlite", "redis", "redis_exact", "redis_cluster", "postgres"):
        assert by_name[f"stores.{store}"]["unit"] == "events/s"
    assert by_name["stores.redis_cluster"]["target"] == ">= 200000"
    # Each store's figure has its plain writer, timed in the same rounds, as baseline.
    for store, plain in (("sqlite", "sqlite.raw"), ("redis", "redis.raw"),
                         ("redis_exact", "redis.raw"), ("redis_cluster", "redis.raw"),
                         ("postgres", "postgres.raw")):
        figure, baseline = by_name[f"stores.{store}"], by_name[f"stores.{plain}"]
        assert figure["baseline"] == f"stores.{plain}"
        assert figure["baseline_value"] == baseline["value"] > 0
        assert figure["ratio"] > 0
    assert by_name["stores.sqlite.raw_2idx"]["unit"] == "events/s"


def test_instruction_counts_are_read_from_what_callgrind_prints() -> None:
    from bench.instructions import Unavailable, total_instructions

    printed = (
        "==4242== Events    : Ir\n"
        "==4242== Collected : 812345678\n"
        "==4242== \n"
        "==4242== I   refs:      812,345,678\n"
    )
    assert total_instructions(printed) == 812_345_678
    assert total_instructions("==1== I   refs:      1,234\n") == 1_234
    with pytest.raises(Unavailable, match="no instruction count"):
        total_instructions("valgrind: command not found\n")


@pytest.mark.parametrize("variant", ["pixel.returning", "wsgi.trackmw.returning"])
def test_an_instruction_count_child_runs_its_variant_and_writes_nothing_at_exit(
    tmp_path: Path, variant: str
) -> None:
    """The child the instructions section runs under callgrind, run here without it: it
    checks the variant's answer, runs it and leaves before any exit handler would write
    the buffered hits (whose writing would be counted as the request path's)."""
    done = _python("-m", "bench.instructions", "--child", variant, "40", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "answered wrongly" not in done.stderr
    assert not any(tmp_path.glob("*.db")), "a store was opened: hits were written"


def test_the_instructions_section_runs_only_when_named() -> None:
    from bench.__main__ import OPTIONAL, RUNNERS, SECTIONS

    assert "instructions" in OPTIONAL and "instructions" not in SECTIONS
    assert set(RUNNERS) == set(SECTIONS) | set(OPTIONAL)


@pytest.mark.parametrize(("stream", "requests"), [("writer.beacons", "40"), ("writer.mixed", "40"),
                                                  ("writer.beacons", "40/100")])
def test_a_writer_count_child_writes_the_hits_it_is_asked_to(
    tmp_path: Path, stream: str, requests: str
) -> None:
    """``N``, or ``N/MADE``: ``N`` of ``MADE`` hits made (so that the section's two runs
    make the same hits, and only the writing differs)."""
    import sqlite3

    from bench.instructions import WRITER_WARM_UP

    done = _python("-m", "bench.instructions", "--child", stream, requests, str(tmp_path))
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "writer.db") as conn:
        ((written,),) = conn.execute("SELECT sum(n) FROM pageview_groups").fetchall()
    assert written == WRITER_WARM_UP + 40


def test_the_wire_instructions_section_runs_only_when_named() -> None:
    from bench.__main__ import OPTIONAL, RUNNERS, SECTIONS

    assert "wire-instructions" in OPTIONAL and "wire-instructions" not in SECTIONS
    assert "wire-instructions" in RUNNERS


def test_wire_instruction_counts_are_read_from_callgrind_dumps_and_wrk(tmp_path: Path) -> None:
    from bench.wire_instructions import (
        Unavailable,
        dump_totals,
        requests_served,
        thread_dumps,
    )

    dump = "version: 1\ncreator: callgrind-3.19.0\npid: 42\nthread: 1\n\ntotals: 675200687\n"
    assert dump_totals(dump) == 675_200_687
    with pytest.raises(Unavailable, match="no totals"):
        dump_totals("version: 1\n")
    printed = (
        "Running 15s test @ http://127.0.0.1:8000/\n  1 threads and 8 connections\n"
        "  4721 requests in 15.01s, 1.03MB read\nRequests/sec:    314.52\n"
    )
    assert requests_served(printed) == 4721
    with pytest.raises(Unavailable, match="could not read"):
        requests_served("wrk: command not found\n")
    for name in ("cg.42.1-01", "cg.42.1-06", "cg.42-01", "cg.43.1-01", "cg.42.2-01"):
        (tmp_path / name).write_text(dump)
    assert thread_dumps(tmp_path, 42) == {1: tmp_path / "cg.42.1-01", 6: tmp_path / "cg.42.1-06"}
