"""Start the example sites under real servers, wait until they answer, stop them cleanly.

Shared by the real-server tests and the browser tests. Every server gets a free port on
127.0.0.1, its own process group, a log file, and is always stopped (SIGTERM, then
SIGKILL of its own group if it does not exit in time) when its ``with`` block ends.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FLASK_DIR = REPO / "examples" / "flask_app"
STARLETTE_DIR = REPO / "examples" / "starlette_app"
ARTIFACTS = REPO / "tests" / "artifacts"

#: Generous: the machine is shared, and a slow start is not what these tests measure.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0

CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
BROWSER_UAS = (
    CHROME_UA,
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
)
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``TRACKMW_*``, plus ``settings``.

    ``server_env(STORE="sqlite:///x.db")`` sets ``TRACKMW_STORE``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKMW_")}
    env.update({"TRACKMW_" + name.upper(): value for name, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sqlite_url(path: Path) -> str:
    """The store URL of an SQLite file (``sqlite:////abs/path.db``)."""
    return f"sqlite:///{path.resolve()}"


#: What each server logs last after a graceful shutdown (an exit by the signal's default
#: action would not log it).
UVICORN_DONE = "Finished server process"
GUNICORN_DONE = "Shutting down: Master"


def uvicorn_argv(port: int) -> list[str]:
    """The Starlette example under uvicorn, as the README and ``make demo`` run it."""
    return [
        str(BIN / "uvicorn"),
        "app:app",
        "--app-dir",
        str(STARLETTE_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]


def gunicorn_argv(port: int, workers: int = 2) -> list[str]:
    """The Flask example under gunicorn with ``workers`` sync workers."""
    return [
        str(BIN / "gunicorn"),
        "--chdir",
        str(FLASK_DIR),
        "app:app",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        # Its default control socket is one path per user: parallel servers would clash.
        "--no-control-socket",
    ]


#: Both examples, by name: how to start each on a port, and its last clean-exit line.
#: (One gunicorn worker: enough for behaviour tests, and ``/_trackmw/me`` then reads
#: what the same process buffered.)
EXAMPLES: dict[str, tuple[Callable[[int], list[str]], str]] = {
    "flask-gunicorn": (lambda port: gunicorn_argv(port, workers=1), GUNICORN_DONE),
    "starlette-uvicorn": (lambda port: uvicorn_argv(port), UVICORN_DONE),
}


@dataclass
class Server:
    """A server process started by ``running``."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, wait for the exit, return the exit code (SIGKILL as a last resort).

        uvicorn re-raises the signal once it has shut down gracefully, so its clean
        exit code is ``-SIGTERM``; gunicorn's is 0. ``stopped_cleanly`` tells them apart
        from a kill.
        """
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own group: only what it started
                proc.wait()
        return proc.returncode


def stopped_cleanly(server: Server, last_line: str) -> bool:
    """Did the server exit after a graceful shutdown that logged ``last_line``?"""
    code = server.proc.returncode
    return code in (0, -signal.SIGTERM) and last_line in server.log()


@contextmanager
def running(
    argv: list[str], *, env: Mapping[str, str], cwd: Path, log_path: Path, port: int
) -> Iterator[Server]:
    """Run ``argv`` until the block ends; yields once ``GET /`` answers 200."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Server(proc, port, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            status, _, _ = request(server.port, "GET", "/", timeout=5)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {START_TIMEOUT}s:\n{server.log()}")
        time.sleep(0.1)


def request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP request on a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def set_cookie(headers: http.client.HTTPMessage, name: str) -> str | None:
    """The value a response's ``Set-Cookie`` headers give cookie ``name``."""
    for header in headers.get_all("set-cookie") or []:
        pair = header.split(";", 1)[0]
        key, _, value = pair.partition("=")
        if key.strip() == name:
            return value.strip()
    return None


def report_days() -> tuple[date, date]:
    """Yesterday and today (UTC, the servers' default time zone): a period holding
    everything a test sent, even across midnight, and the same for every reader."""
    today = datetime.now(UTC).date()
    return today - timedelta(days=1), today


def report_via_tracker(
    store_url: str, since: date | None = None, until: date | None = None
) -> dict[str, Any]:
    """The report document read through ``Tracker.stats()`` (the Python API)."""
    from tests.conftest import SECRET
    from trackmw import Tracker

    tracker = Tracker(secret_keys=[SECRET], store=store_url)
    try:
        return tracker.stats(since, until).to_dict()
    finally:
        tracker.close()


def report_via_cli(
    store_url: str, since: date | None = None, until: date | None = None
) -> dict[str, Any]:
    """The report document from the installed ``trackmw stats --json`` console script."""
    argv = [str(BIN / "trackmw"), "stats", "--store", store_url, "--json"]
    if since is not None:
        argv += ["--since", since.isoformat()]
    if until is not None:
        argv += ["--until", until.isoformat()]
    done = subprocess.run(argv, capture_output=True, env=server_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    document: dict[str, Any] = json.loads(done.stdout)
    return document
