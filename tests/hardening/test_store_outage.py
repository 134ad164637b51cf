"""A store stopped and restarted mid-run: a private ``redis-server`` process (started
by the test on a spare port, with an append-only file in ``tmp_path``) is stopped while
a site under uvicorn keeps receiving hits, then started again. Pages and the pixel keep
answering, the outage is logged, and every answered hit is counted exactly once."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import need_service
from tests.hardening.load import Load
from tests.hardening.servers import CHROME, argv_for, env_for
from tests.servers.running import REPO, free_port, report_via_tracker, request, running

pytestmark = pytest.mark.server

REDIS_SERVER = shutil.which("redis-server")


@contextmanager
def redis_process(port: int, data: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A private redis-server with an fsync'd append-only file; always stopped."""
    data.mkdir(exist_ok=True)
    assert REDIS_SERVER is not None
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--appendonly", "yes", "--appendfsync", "always", "--save", "",
         "--protected-mode", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def counts(url: str) -> tuple[int, int]:
    report = report_via_tracker(url)
    return int(report["pageviews"]), int(report["visitors"])


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {what}")
        time.sleep(0.1)


def test_redis_stopped_and_restarted_mid_run_loses_nothing(tmp_path: Path) -> None:
    need_service(REDIS_SERVER is not None, "redis-server is not installed")
    redis_port = free_port()
    url = f"redis://127.0.0.1:{redis_port}/0?uniques=exact"
    port = free_port()
    env = env_for(tmp_path / "unused.db", FLUSH_INTERVAL="0.2", REDIS_UNIQUES="exact")
    env["TRACKMW_STORE"] = url
    data = tmp_path / "redis"
    with redis_process(redis_port, data) as redis:
        with running(
            argv_for("uvicorn", port), env=env, cwd=REPO, log_path=tmp_path / "s.log", port=port
        ) as srv:
            before = Load(port, threads=2, limit=200).start()
            before.join()
            assert before.answered == 200
            wait_until(lambda: counts(url) == (200, 200), 60, "the first 200 hits written")

            redis.send_signal(signal.SIGTERM)  # the store goes away mid-run
            redis.wait(30)
            during = Load(port, threads=2, limit=200).start()
            during.join()
            pages = {request(port, "GET", "/", {"User-Agent": CHROME})[0] for _ in range(10)}
            assert during.answered == 200 and set(during.statuses) == {200}
            assert pages == {200}
            wait_until(lambda: "events kept" in srv.log(), 60, "the outage logged")

            with redis_process(redis_port, data):  # the same port and data: it is back
                wait_until(lambda: counts(url) == (400, 400), 120, "all 400 hits written")
                assert srv.stop() in (0, -signal.SIGTERM)
                log = srv.log()
                assert counts(url) == (400, 400)
    assert "is back" in log
    assert "Traceback" not in log
