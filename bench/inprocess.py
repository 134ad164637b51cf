"""In-process cost per request: ASGI and WSGI apps called directly, no server, no socket.

Each variant is an app plus the request it gets (an ASGI scope or a WSGI environ, with
the headers a browser sends; for the re-signed session, one of many scopes in turn).
``measure`` first checks each variant answers as it should (status, and whether a
cookie is set), then runs them interleaved: every round times a short batch of each
variant in turn (forward, then backward in the next round, so a variant and its
baseline always run close together), and the figure is the median batch's µs per
request. A ratio is the median of the rounds' ratios, each taken
between batches a moment apart: on a shared machine, that cancels most of the drift.

The trackers record into a SQLite file, as a site would, but their writer thread is
kept asleep while requests are timed (a long ``flush_interval`` and a batch size larger
than a timed batch); a batch runs in chunks of the pipeline's default batch size
(``CHUNK``), and the hits buffered are written after each chunk, untimed, as a site's
writer empties the buffer each time a batch fills: the figure is the request path's
cost, and the writer's cost is the ``stores`` section's write rate. Over the wire
(``bench.wire``) the writer runs as it does in production.
"""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from trackmw.cookiestate import _STATE_CACHE
from trackmw.settings import Settings

from . import apps

#: What a browser sends with a page request (minus the cookie, added per variant).
BROWSER_HEADERS = [
    ("host", apps.HOST),
    ("user-agent", apps.UA),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-GB,en;q=0.9"),
    ("accept-encoding", "gzip, deflate, br"),
    ("referer", "https://news.example.org/"),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-site", "cross-site"),
    ("connection", "keep-alive"),
]


#: Distinct Cookie headers the re-signed session variant sends in turn: more than
#: trackmw keeps states of (the Python path keeps each new header's; the C path keeps
#: none), as a site's visitors never send one header again.
ROTATING = 2 * _STATE_CACHE


@dataclass
class Variant:
    """One thing to time."""

    name: str
    label: str
    call: Callable[[int], float]  # runs n requests, returns seconds
    check: Callable[[], str | None]  # None when the answer is right, else what is wrong
    baseline: str | None = None
    after: Callable[[], Any] | None = None  # untimed work after each batch
    samples: list[float] = field(default_factory=list)


def asgi_scope(path: str, query: str = "", cookie: str | None = None) -> dict[str, Any]:
    headers = list(BROWSER_HEADERS)
    if cookie:
        headers.append(("cookie", cookie))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def wsgi_environ(path: str, cookie: str | None = None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in BROWSER_HEADERS:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    return environ


# -- drivers ---------------------------------------------------------------------------------


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Any) -> None:
    return None


def asgi_runner(
    loop: asyncio.AbstractEventLoop, app: Any, scopes: Callable[[int], Iterable[dict[str, Any]]]
) -> Callable:
    """``n`` requests a batch, with the ``n`` scopes ``scopes(n)`` gives, made before the
    clock starts."""
    async def batch(n: int) -> float:
        todo = scopes(n)
        start = time.thread_time()
        for scope in todo:
            await app(dict(scope), _receive, _discard)
        return time.thread_time() - start

    return lambda n: loop.run_until_complete(batch(n))


def asgi_checker(
    loop: asyncio.AbstractEventLoop, app: Any, scope: dict[str, Any], status: int, cookie: bool
) -> Callable[[], str | None]:
    async def once() -> list[Any]:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        await app(dict(scope), _receive, send)
        return sent

    def check() -> str | None:
        sent = loop.run_until_complete(once())
        start = sent[0]
        got_cookie = any(k == b"set-cookie" for k, _ in start.get("headers", []))
        if start["status"] != status or got_cookie != cookie:
            return f"status {start['status']}, set-cookie {got_cookie}"
        return None

    return check


def _start_response(status: str, headers: list[Any], exc_info: Any = None) -> Callable:
    return _write


def _write(data: bytes) -> None:
    return None


def wsgi_runner(app: Any, environ: dict[str, Any]) -> Callable[[int], float]:
    def batch(n: int) -> float:
        start = time.thread_time()
        for _ in range(n):
            body = app(dict(environ), _start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return time.thread_time() - start

    return batch


def wsgi_checker(
    app: Any, environ: dict[str, Any], status: int, cookie: bool
) -> Callable[[], str | None]:
    def check() -> str | None:
        seen: list[Any] = []

        def start_response(s: str, headers: list[Any], exc_info: Any = None) -> Callable:
            seen.append((s, headers))
            return _write

        body = app(dict(environ), start_response)
        b"".join(body)
        getattr(body, "close", lambda: None)()
        s, headers = seen[0]
        got_cookie = any(k.lower() == "set-cookie" for k, _ in headers)
        if int(s[:3]) != status or got_cookie != cookie:
            return f"status {s}, set-cookie {got_cookie}"
        return None

    return check


# -- the variants ------------------------------------------------------------------------------


def build(loop: asyncio.AbstractEventLoop, store_dir: str) -> tuple[list[Variant], list[str]]:
    """Every in-process variant, and notes on the ones that could not be built."""
    notes: list[str] = []
    trackers: list[Any] = []

    def tracker(name: str) -> Any:
        t = apps.make_tracker(
            f"sqlite:///{store_dir}/{name}.db", flush_interval=3600, batch_size=10**6 - 1,
            buffer_size=10**6,
        )
        trackers.append(t)
        return t

    returning = apps.returning_cookie()
    session = apps.session_cookie()
    variants: list[Variant] = []

    def asgi(name: str, label: str, app: Any,
             scope: dict[str, Any] | Callable[[int], Iterable[dict[str, Any]]], status: int = 200,
             cookie: bool = False, baseline: str | None = None, after: Any = None) -> None:
        scopes = scope if callable(scope) else lambda n, one=scope: itertools.repeat(one, n)
        variants.append(Variant(
            name, label, asgi_runner(loop, app, scopes),
            asgi_checker(loop, app, next(iter(scopes(1))), status, cookie), baseline, after,
        ))

    def wsgi(name: str, label: str, app: Any, environ: dict[str, Any], cookie: bool = False,
             baseline: str | None = None, after: Any = None) -> None:
        variants.append(Variant(
            name, label, wsgi_runner(app, environ), wsgi_checker(app, environ, 200, cookie),
            baseline, after,
        ))

    bare = apps.starlette_bare()
    asgi("asgi.bare", "Starlette hello, bare", bare, asgi_scope("/", cookie=returning))
    t = tracker("asgi")
    tracked = apps.starlette_tracked(t)
    asgi("asgi.trackmw.returning", "+ trackmw, returning visitor", tracked,
         asgi_scope("/", cookie=returning), baseline="asgi.bare", after=t.flush)
    # The site's own session cookie, signed again for each request (as Starlette's
    # SessionMiddleware signs it again every second): the Cookie header is new each time.
    # Only the headers are kept between batches (bytes, which the garbage collector does
    # not follow: thousands of scopes held would make every variant's collections dearer).
    base = asgi_scope("/")
    turn = itertools.cycle([f"{session}{i:06d}; {returning}".encode() for i in range(ROTATING)])

    def resigned(n: int) -> list[dict[str, Any]]:
        return [{**base, "headers": [*base["headers"], (b"cookie", cookie)]}
                for cookie in itertools.islice(turn, n)]

    asgi("asgi.trackmw.resigned", "+ trackmw, returning visitor, the site's session re-signed",
         tracked, resigned, baseline="asgi.bare", after=t.flush)
    asgi("asgi.trackmw.new", "+ trackmw, new visitor (cookie signed)", tracked,
         asgi_scope("/"), cookie=True, baseline="asgi.bare", after=t.flush)
    asgi("asgi.bare.static", "Starlette /static/x, bare", bare,
         asgi_scope("/static/x", cookie=returning))
    asgi("asgi.trackmw.static", "+ trackmw, excluded /static path", tracked,
         asgi_scope("/static/x", cookie=returning), baseline="asgi.bare.static")
    asgi("asgi.noop", "+ no-op pure ASGI middleware (floor)", apps.starlette_noop(),
         asgi_scope("/", cookie=returning), baseline="asgi.bare")
    asgi("asgi.session", "+ SessionMiddleware, valid cookie (peer)", apps.starlette_session(),
         asgi_scope("/", cookie=session), baseline="asgi.bare")
    asgi("asgi.basehttp", "+ no-op BaseHTTPMiddleware (peer)", apps.starlette_basehttp(),
         asgi_scope("/", cookie=returning), baseline="asgi.bare")
    asgi("gif.raw", "raw ASGI GIF (beacon floor)", apps.raw_gif,
         asgi_scope("/gif", apps.PIXEL_QUERY, cookie=returning))
    asgi("gif.middleware", "Starlette middleware answering the GIF, inside the error layer",
         apps.starlette_gif_middleware(),
         asgi_scope("/_trackmw/pixel.gif", apps.PIXEL_QUERY, cookie=returning), baseline="gif.raw")
    asgi("gif.route", "Starlette route answering the GIF", bare,
         asgi_scope("/gif", apps.PIXEL_QUERY, cookie=returning), baseline="gif.raw")
    asgi("pixel.returning", "trackmw pixel, returning visitor", tracked,
         asgi_scope("/_trackmw/pixel.gif", apps.PIXEL_QUERY, cookie=returning),
         baseline="gif.raw", after=t.flush)
    tw = tracker("asgi-wrapped")
    asgi("pixel.wrapped", "trackmw pixel, returning visitor, trackmw wrapping the app",
         apps.starlette_wrapped(tw),
         asgi_scope("/_trackmw/pixel.gif", apps.PIXEL_QUERY, cookie=returning),
         baseline="gif.raw", after=tw.flush)
    asgi("pixel.new", "trackmw pixel, new visitor", tracked,
         asgi_scope("/_trackmw/pixel.gif", apps.PIXEL_QUERY), cookie=True,
         baseline="gif.raw", after=t.flush)

    fbare = apps.flask_bare()
    wsgi("wsgi.flask", "Flask hello, bare", fbare, wsgi_environ("/", cookie=returning))
    ft = tracker("flask")
    ftracked = apps.flask_tracked(ft)
    wsgi("wsgi.trackmw.returning", "Flask + trackmw, returning visitor", ftracked,
         wsgi_environ("/", cookie=returning), baseline="wsgi.flask", after=ft.flush)
    wsgi("wsgi.trackmw.new", "Flask + trackmw, new visitor", ftracked,
         wsgi_environ("/"), cookie=True, baseline="wsgi.flask", after=ft.flush)
    ftu = apps.flask_track_usage(f"{store_dir}/ftu.db")
    if isinstance(ftu, str):
        notes.append(f"Flask-Track-Usage skipped: {ftu}")
    else:
        wsgi("wsgi.track_usage", "Flask + Flask-Track-Usage, SQLite file (peer)", ftu,
             wsgi_environ("/", cookie=returning), baseline="wsgi.flask")
    return variants, notes


#: Requests timed between two flushes of a variant's tracker: the pipeline's default
#: ``batch_size``. A site's writer thread empties the buffer each time a batch fills,
#: so its request path never holds many more hits than that; a timed batch of 0.1 s
#: without a flush would end with about 100,000 buffered, and the fresh memory each new
#: hit then lands in cost the pixel about 12% more than any site pays (4.17x against
#: 3.68x the raw GIF on one VM). Every variant runs in chunks, its baseline too.
CHUNK = Settings.batch_size


def measure(variants: list[Variant], rounds: int, batch_seconds: float,
            log: Callable[[str], None]) -> dict[str, list[float]]:
    """µs per request of each variant, one sample per round, rounds interleaved."""
    for v in variants:
        problem = v.check()
        if problem is not None:
            raise RuntimeError(f"{v.name} answered wrongly ({problem}): not benchmarking it")
        if v.after:
            v.after()
    sizes: dict[str, int] = {}
    for v in variants:  # warm up, and size the batches to about batch_seconds each
        n = 20
        while True:
            elapsed = timed(v, n)
            if elapsed > batch_seconds / 10 or n > 10**6:
                break
            n *= 4
        sizes[v.name] = max(20, int(n * batch_seconds / max(elapsed, 1e-9)))
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            gc.collect()
            n = sizes[v.name]
            v.samples.append(timed(v, n) / n * 1e6)
        log(f"  in-process round {r + 1}/{rounds} done")
    return {v.name: v.samples for v in variants}


def timed(v: Variant, n: int) -> float:
    """Seconds ``n`` requests of ``v`` take, run ``CHUNK`` at a time with the variant's
    untimed ``after`` (its tracker's flush) after each chunk."""
    elapsed = 0.0
    while n > 0:
        chunk = min(n, CHUNK)
        elapsed += v.call(chunk)
        n -= chunk
        if v.after:
            v.after()
    return elapsed
