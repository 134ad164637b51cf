"""Over the wire: uvicorn and gunicorn on 127.0.0.1, loaded by ``wrk`` in another process.

Every server is started once (one worker each, uvicorn with uvloop and httptools when
installed, gunicorn with the sync worker), then the rounds run ``wrk`` against each in
turn (forward, then backward, so a variant and its baseline run close together), so a
busy moment of the machine spreads over all variants instead of hitting one. The
figures are the median requests/s and p99 latency over the rounds; a ratio is the
median of the rounds' ratios.
The trackers record into a SQLite file with the default pipeline settings: their
writer thread shares the server's CPU as it does in production.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import apps
from .local import free_port

ROOT = Path(__file__).resolve().parent.parent
WRK = shutil.which("wrk") or "/usr/bin/wrk"


@dataclass
class Server:
    name: str
    label: str
    command: list[str]
    path: str
    cookie: str | None
    baseline: str | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    rps: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)


def uvicorn_command(factory: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", f"bench.apps:{factory}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--no-access-log", "--log-level", "warning"]
    for module, flag, value in (("uvloop", "--loop", "uvloop"),
                                ("httptools", "--http", "httptools")):
        try:
            __import__(module)
        except ImportError:
            continue
        cmd += [flag, value]
    return cmd


def gunicorn_command(factory: str, port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "sync", "-b", f"127.0.0.1:{port}",
            "--log-level", "warning", f"bench.apps:{factory}()"]


def servers(store_dir: str) -> tuple[list[Server], str | None]:
    """Every variant's server (not started), and why Flask-Track-Usage is not among them
    (``None`` when it is: only when it builds here)."""
    returning = apps.returning_cookie()
    session = apps.session_cookie()
    pixel = f"/_trackmw/pixel.gif?{apps.PIXEL_QUERY}"
    specs = [  # name, label, server, factory, path, cookie, baseline
        ("wire.asgi.bare", "uvicorn: Starlette hello, bare", "u", "starlette_bare_app", "/",
         returning, None),
        ("wire.asgi.trackmw", "uvicorn: + trackmw, returning visitor", "u",
         "starlette_tracked_app", "/", returning, "wire.asgi.bare"),
        ("wire.asgi.noop", "uvicorn: + no-op pure ASGI middleware (floor)", "u",
         "starlette_noop_app", "/", returning, "wire.asgi.bare"),
        ("wire.asgi.new", "uvicorn: + trackmw, new visitor (cookie signed)", "u",
         "starlette_tracked_app", "/", None, "wire.asgi.bare"),
        ("wire.asgi.bare.static", "uvicorn: Starlette /static/x, bare", "u",
         "starlette_bare_app", "/static/x", returning, None),
        ("wire.asgi.static", "uvicorn: + trackmw, excluded /static path", "u",
         "starlette_tracked_app", "/static/x", returning, "wire.asgi.bare.static"),
        ("wire.asgi.session", "uvicorn: + SessionMiddleware (peer)", "u",
         "starlette_session_app", "/", session, "wire.asgi.bare"),
        ("wire.asgi.basehttp", "uvicorn: + no-op BaseHTTPMiddleware (peer)", "u",
         "starlette_basehttp_app", "/", returning, "wire.asgi.bare"),
        ("wire.gif.raw", "uvicorn: raw ASGI GIF (floor)", "u", "raw_gif_app", pixel, returning,
         None),
        ("wire.gif.middleware",
         "uvicorn: Starlette middleware answering the GIF, inside the error layer", "u",
         "gif_middleware_app", pixel, returning, "wire.gif.raw"),
        ("wire.pixel", "uvicorn: trackmw pixel, returning visitor", "u", "starlette_tracked_app",
         pixel, returning, "wire.gif.raw"),
        ("wire.pixel.wrapped", "uvicorn: trackmw pixel, returning, trackmw wrapping the app",
         "u", "starlette_wrapped_app", pixel, returning, "wire.gif.raw"),
        ("wire.pixel.process", "uvicorn: trackmw pixel, returning, writer in its own process",
         "u", "starlette_process_app", pixel, returning, "wire.gif.raw"),
        ("wire.pixel.new", "uvicorn: trackmw pixel, new visitor", "u", "starlette_tracked_app",
         pixel, None, "wire.gif.raw"),
        ("wire.flask.bare", "gunicorn: Flask hello, bare", "g", "flask_bare_app", "/", returning,
         None),
        ("wire.flask.trackmw", "gunicorn: Flask + trackmw, returning visitor", "g",
         "flask_tracked_app", "/", returning, "wire.flask.bare"),
        ("wire.flask.new", "gunicorn: Flask + trackmw, new visitor", "g",
         "flask_tracked_app", "/", None, "wire.flask.bare"),
    ]
    # Built here only to learn whether it builds; the server builds its own.
    skipped = apps.flask_track_usage(os.path.join(store_dir, "ftu-probe.db"))
    if not isinstance(skipped, str):
        skipped = None
        specs.append(("wire.flask.track_usage", "gunicorn: Flask + Flask-Track-Usage (peer)",
                      "g", "flask_track_usage_app", "/", returning, "wire.flask.bare"))
    out = []
    for name, label, kind, factory, path, cookie, baseline in specs:
        port = free_port()
        cmd = uvicorn_command(factory, port) if kind == "u" else gunicorn_command(factory, port)
        out.append(Server(name, label, cmd, path, cookie, baseline, port))
    return out, skipped


def start(all_servers: list[Server], store_dir: str, timeout: float = 60) -> None:
    """Start every server and wait (at most ``timeout`` seconds) until each answers."""
    for s in all_servers:
        env = dict(os.environ, TRACKMW_BENCH_STORE=f"sqlite:///{store_dir}/{s.name}.db",
                   TRACKMW_BENCH_DIR=store_dir, PYTHONPATH=str(ROOT))
        s.proc = subprocess.Popen(s.command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    for s in all_servers:
        while True:
            if s.proc is not None and s.proc.poll() is not None:
                err = s.proc.stderr.read().decode(errors="replace") if s.proc.stderr else ""
                raise RuntimeError(f"{s.name} exited: {err[-2000:]}")
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{s.port}{s.path}",
                                                 headers=_headers(s))
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{s.name} did not start on port {s.port}")
            time.sleep(0.1)


def stop(all_servers: list[Server]) -> None:
    for s in all_servers:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.terminate()
    for s in all_servers:
        if s.proc is None:
            continue
        try:
            s.proc.wait(10)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
        if s.proc.stderr:
            s.proc.stderr.close()


def _headers(s: Server) -> dict[str, str]:
    headers = {"Host": apps.HOST, "User-Agent": apps.UA, "Referer": "https://bench.example/a/42",
               "Accept": "*/*"}
    if s.cookie:
        headers["Cookie"] = s.cookie
    return headers


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(s: Server, seconds: float, connections: int) -> str:
    """What one ``wrk`` run against ``s`` printed; non-2xx answers are an error."""
    cmd = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in _headers(s).items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://127.0.0.1:{s.port}{s.path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"{s.name}: wrk saw errors:\n{out}")
    return out


def run_wrk(s: Server, seconds: float, connections: int) -> tuple[float, float]:
    """(requests/s, p99 in ms) of one ``wrk`` run; non-2xx answers are an error."""
    out = wrk(s, seconds, connections)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if not rps or not p99:
        raise RuntimeError(f"{s.name}: could not read wrk's output:\n{out}")
    return float(rps.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)]


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn serves from a worker child), from ``/proc``."""
    pids = [pid]
    for p in pids:
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                pids += [int(child) for child in fh.read().split()]
        except OSError:
            continue
    return pids


def _cpu_seconds(all_servers: list[Server]) -> float:
    """CPU seconds used so far by the server processes and their workers (from ``/proc``;
    0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for s in all_servers:
        if s.proc is None:
            continue
        for pid in _process_tree(s.proc.pid):
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def settle(all_servers: list[Server], timeout: float = 15.0) -> None:
    """Wait until no server is busy (at most ``timeout`` seconds).

    A tracked server's writer thread goes on writing the events of its last run for a
    moment after the load stops; on a 2-core machine that would take CPU from the
    next variant's run, so each run starts once the servers have gone quiet.
    """
    deadline = time.monotonic() + timeout
    before = _cpu_seconds(all_servers)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = _cpu_seconds(all_servers)
        if now - before < 0.025:  # under 10 % of one core over the last 0.25 s
            return
        before = now


def measure(all_servers: list[Server], rounds: int, seconds: float, connections: int,
            log: Callable[[str], None]) -> dict[str, tuple[list[float], list[float]]]:
    """(requests/s, p99 ms) of each server, one sample each per round, interleaved."""
    for s in all_servers:  # warm up: caches, connections, the writer thread
        run_wrk(s, 1, connections)
    for r in range(rounds):
        for s in all_servers if r % 2 == 0 else all_servers[::-1]:
            settle(all_servers)
            rps, p99 = run_wrk(s, seconds, connections)
            s.rps.append(rps)
            s.p99.append(p99)
        log(f"  wire round {r + 1}/{rounds} done")
    return {s.name: (s.rps, s.p99) for s in all_servers}
