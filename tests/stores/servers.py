"""Real servers for the multi-process and outage tests: the examples under gunicorn and
uvicorn on spare loopback ports, and a small load driver sending pixel hits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bench.local import free_port

from tests.conftest import SECRET, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def site_env(store: str, **settings: str) -> dict[str, str]:
    """The environment for an example site on ``store`` (no pixel rate limit: the load is
    deliberately many hits per visitor)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKMW_")}
    env.update(
        {
            "TRACKMW_SECRET_KEYS": SECRET,
            "TRACKMW_STORE": store,
            "TRACKMW_PIXEL_RATE_LIMIT": "0",
            "TRACKMW_FLUSH_INTERVAL": "0.2",
        }
    )
    env.update({"TRACKMW_" + k.upper(): v for k, v in settings.items()})
    return env


class Site:
    """One server process (gunicorn with workers, or uvicorn) serving an example."""

    def __init__(self, kind: str, env: Mapping[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if kind == "gunicorn":
            cmd = [
                sys.executable,
                "-m",
                "gunicorn",
                "--chdir",
                "examples/flask_app",
                "-w",
                str(workers),
                "-b",
                f"127.0.0.1:{self.port}",
                "--graceful-timeout",
                "30",
                "app:app",
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "app:app",
                "--app-dir",
                "examples/starlette_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--lifespan",
                "on",
                "--no-access-log",
            ]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait_ready(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"server exited early: {err[-2000:]}")
            try:
                return httpx.get(self.url + "/about", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, f"the site on {self.url}", timeout=60)

    def stop(self) -> None:
        """SIGTERM, as a process manager stops it; buffered events are flushed on the way."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


def visitor_cookies(url: str, n: int) -> list[str]:
    """``n`` distinct visitors: each visits the home page once and keeps its id cookie."""
    cookies = []
    with httpx.Client(headers={"User-Agent": CHROME}) as client:
        for _ in range(n):
            r = client.get(url + "/", headers={"Cookie": ""})
            assert r.status_code == 200
            value = r.cookies.get("trackmw_id")
            assert value, "the site issued no visitor cookie"
            cookies.append(value)
            client.cookies.clear()
    return cookies


def send_hits(targets: Iterable[tuple[str, str, str]], threads: int = 6) -> list[int]:
    """GET each ``(site url, cookie, page)`` pixel; returns the status codes, in order."""
    items = list(targets)

    def hit(chunk: list[tuple[str, str, str]]) -> list[int]:
        codes = []
        with httpx.Client(timeout=30) as client:
            for url, cookie, page in chunk:
                r = client.get(
                    url + "/_trackmw/pixel.gif",
                    params={"p": page},
                    headers={"Cookie": f"trackmw_id={cookie}", "User-Agent": CHROME},
                )
                codes.append(r.status_code)
        return codes

    chunks = [items[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(hit, chunks))
    codes: list[int] = []
    for i in range(len(items)):  # back to the input order
        codes.append(results[i % threads][i // threads])
    return codes
