"""Command lines for the hardening sites under real servers, and a raw HTTP client.

Servers are started with ``tests.servers.running.running`` (own process group, log
file, always stopped). ``raw_get`` reads the response head byte for byte from a socket,
so folded or merged ``Set-Cookie`` headers would be seen as they are on the wire.
"""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

from tests.servers.running import BIN, REPO, server_env, sqlite_url

__all__ = ["CHROME", "SERVERS", "argv_for", "env_for", "header_lines", "keepalive_pool", "raw_get"]

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)

SERVERS = ("uvicorn", "gunicorn-sync", "gunicorn-gthread")


def argv_for(server: str, port: int, *, workers: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    """The hardening site under ``server`` on 127.0.0.1:``port``."""
    if server == "uvicorn":
        return [
            str(BIN / "uvicorn"), "tests.hardening.site_starlette:app", "--app-dir", str(REPO),
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log", *extra,
        ]  # fmt: skip
    argv = [
        str(BIN / "gunicorn"), "--chdir", str(REPO), "tests.hardening.site_flask:app",
        "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--no-control-socket",
        "--graceful-timeout", "30",
    ]  # fmt: skip
    if server == "gunicorn-gthread":
        argv += ["--worker-class", "gthread", "--threads", "4"]
    return argv + list(extra)


def env_for(db: Path, **settings: str) -> dict[str, str]:
    """The servers' environment: a SQLite store at ``db`` and ``settings``."""
    from tests.conftest import SECRET

    base = {
        "SECRET_KEYS": SECRET,
        "STORE": sqlite_url(db),
        "PIXEL_RATE_LIMIT": "0",
        "FLUSH_INTERVAL": "0.5",
    }
    base.update(settings)
    return server_env(**base)


def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """The raw response head (status line and headers) of one GET, as sent."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"User-Agent: {CHROME}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += ["Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def header_lines(head: bytes, name: bytes) -> list[bytes]:
    """The values of every header line called ``name`` (case-insensitive)."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            out.append(value.strip())
    return out


def keepalive_pool(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection (one per client thread)."""
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)
