"""ASGI middleware (Starlette, FastAPI, any ASGI app). Pure ASGI.

>>> app.add_middleware(TrackingMiddleware, tracker=tracker)   # doctest: +SKIP

Per request: trackmw's own paths are answered here without calling the app; excluded
paths go straight to the app; every other request gets its ``Visitor`` in
``scope["trackmw"]`` (built when first asked for: see ``LazyVisitor``) and, when the
response starts, the cookies the core asks for.
Websocket scopes pass through; on lifespan shutdown buffered events are flushed.
Added as a Starlette app's outermost middleware, it moves ahead of Starlette's
``ServerErrorMiddleware`` at its first call (``TrackingMiddleware._settle``).

A tracked page whose ``Cookie`` header's state is cached (every returning visitor's)
is taken in C when ``trackmw._speedups`` is built (``SPEEDUPS``): ``__call__`` does the
header pass and the cache lookup, makes the ``LazyVisitor`` and calls the app, whose
awaitable a C object (``Call``) awaits in place of a coroutine frame. For a returning
visitor the app's ``send`` is that object too, unless ``send_quiet`` is patched: it does
what ``send_quiet`` does, one object a request less than a bound method. (So that
``send`` is awaitable itself, has no ``__self__`` and takes no weak reference; and a
``Call`` dropped without ever being awaited, which its app's coroutine holds through
``send``, is closed at the collector's next pass.) The beacon's common case
(``Core.quick_beacon``, answered from its caches) and the cookie headers added to a
response (``_add_headers``) have a C version too.
Without the module (no C compiler at install, another Python, or
``TRACKMW_NO_EXTENSIONS`` set) the same is done here in Python (``_asgi``); the tests
run both ways, and the C code leaves anything but the common case to the Python. (The
C path reads ``CookieReader.states`` itself: a returning visitor's request does not go
through ``Core.request_state``.)
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from time import time as _time
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from . import _ext
from .cookiestate import CookieState
from .core import Core
from .endpoints import MAX_BODY, text_response
from .messages import PAGE_HEADERS, PRIVATE_ADDED, Request, Response, private_headers
from .pixel import GIF, PIXEL_HEADERS, gif_response
from .tracker import Tracker
from .visitor import LazyVisitor as BaseLazyVisitor
from .visitor import RequestOver

__all__ = ["SPEEDUPS", "LazyVisitor", "TrackingMiddleware"]

log = logging.getLogger("trackmw")

if TYPE_CHECKING:
    from . import _speedups
else:  # None without a compiler at install, on another Python, or turned off
    _speedups = _ext.module()
if _speedups is None:  # the same in Python
    log.debug("trackmw: the ASGI middleware runs in pure Python")

#: Does the middleware take a tracked page's common case in C (``trackmw._speedups``)?
SPEEDUPS = _speedups is not None

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


#: The headers the core reads on the page and pixel paths, by their raw ASGI name.
#: Servers and Starlette itself use lower-case names, as the ASGI spec recommends.
_CORE_HEADERS = {name.encode("latin-1"): name for name in PAGE_HEADERS}


def request_from_scope(scope: Scope, names: dict[bytes, str] | None = None) -> Request:
    """Describe an ASGI HTTP scope for the core.

    With ``names``, only those headers are decoded (the page and pixel paths need a
    dozen of a request's headers; the endpoints get them all).
    """
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        if names is None:
            name = raw_name.decode("latin-1").lower()
        else:
            found = names.get(raw_name)
            if found is None:
                continue
            name = found
        value = raw_value.decode("latin-1")
        if name == "cookie" and name in headers:
            headers[name] = headers[name] + "; " + value
        else:
            headers.setdefault(name, value)
    return _request(scope, headers)


def _request(scope: Scope, headers: dict[str, str]) -> Request:
    if "host" not in headers and scope.get("server"):
        host, port = scope["server"][0], scope["server"][1]
        headers["host"] = f"{host}:{port}" if port else host
    client = scope.get("client")
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
        scheme=scope.get("scheme", "http"),
        headers=headers,
        client=client[0] if client else None,
    )


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


_PIXEL_RAW = tuple(_encode(PIXEL_HEADERS))  # copied into each response
_PRIVATE_RAW = _encode(list(PRIVATE_ADDED))
_CACHE_NAMES = frozenset((b"vary", b"cache-control"))


def _with_cookies(raw: list[tuple[bytes, bytes]], cookies: list[str]) -> list[tuple[bytes, bytes]]:
    """The app's raw headers plus ``cookies``, made private (``core.private_headers``).

    Without ``Vary`` and ``Cache-Control`` in the app's headers (the usual case), that
    is the app's headers as they are plus fixed ones; only otherwise are they decoded.
    """
    for name, _ in raw:
        if name.lower() in _CACHE_NAMES:
            return _encode(private_headers(_Decoded(raw), cookies))
    out = [*raw, *_PRIVATE_RAW]
    for cookie in cookies:
        out.append((b"set-cookie", cookie.encode("latin-1")))
    return out


class _Decoded:
    """The app's raw headers as text, decoded only if the core iterates them."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for k, v in self.raw:
            yield k.decode("latin-1"), v.decode("latin-1")


class _ASGIVisitor(BaseLazyVisitor):
    """``scope["trackmw"]``: the request's ``Visitor``, built on first call (see
    ``trackmw.visitor.LazyVisitor``), and the app's ``send``, wrapped (on the C path, a
    quiet state's wrapper is the request's ``Call``: see the module docstring).

    The wrappers (``send_quiet``, ``send_fresh``, ``send_full``) add the cookies the
    core asks for when the response starts. They are plain functions returning the
    server's awaitable, so a message left alone costs one call, not an extra coroutine.
    The middleware drops ``_scope`` and ``_send`` when the request ends (its
    ``finally``): the server's send belongs to an object holding the scope, which
    holds this object, so keeping them would leave a reference cycle per request for
    the collector.

    Two kinds share these methods: ``LazyVisitor``, whose storage, ``send_quiet`` and
    ``enter`` (the common case: a tracked page whose cookie state is cached) are in C
    (``trackmw._speedups.LazyBase``), and ``PyLazyVisitor``, the same in pure Python,
    which ``LazyVisitor`` is when that module is not built (``SPEEDUPS`` says which).
    """

    if TYPE_CHECKING:  # the storage is each kind's
        __slots__ = ("_scope", "_send")
    else:
        __slots__ = ()
    _scope: Scope | None
    _send: Send
    send_quiet: Callable[[Message], Awaitable[None]]  # each kind's own

    def _request(self) -> Request:
        if self._scope is None:
            raise RequestOver("trackmw: the request is over; its visitor was not read")
        return request_from_scope(self._scope, _CORE_HEADERS)

    # -- send wrappers: the middleware passes the one its cookie state calls for ----------
    # (``send_quiet``, the returning visitor's, is each kind's own.)

    def send_fresh(self, message: Message) -> Awaitable[None]:
        """For a new visitor: the id cookie, unless the app asked for its visitor."""
        if message["type"] != "http.response.start":
            return self._send(message)
        if self.visitor is not None:
            return self._send(self._with_cookies(message))
        try:
            scope = self._scope
            if scope is not None:  # None only if the app sends after it returned
                cookie = self.fresh_cookie(scope.get("scheme", "http"))
                message = _add_headers(message, [cookie])
        except Exception:
            log.exception("trackmw: could not add cookies; response sent unchanged")
        return self._send(message)

    def send_full(self, message: Message) -> Awaitable[None]:
        """For any other visitor: the core decides (and may count the page)."""
        if message["type"] != "http.response.start":
            return self._send(message)
        return self._send(self._with_cookies(message))

    def _with_cookies(self, message: Message) -> Message:
        try:
            raw = message.get("headers", [])
            cookies = self._core.response_cookies(self(), message["status"], _Decoded(raw))
            if cookies:
                return _add_headers(message, cookies)
        except Exception:
            log.exception("trackmw: could not add cookies; response sent unchanged")
        return message


class PyLazyVisitor(_ASGIVisitor):
    """``LazyVisitor`` in pure Python (see ``_ASGIVisitor``)."""

    __slots__ = ("_core", "_state", "visitor", "issued_id", "_scope", "_send")

    def __init__(self, core: Core, scope: Scope, state: CookieState, send: Send) -> None:
        # The base's attributes set here rather than by super().__init__: one call
        # less on every request.
        self._core = core
        self._state = state
        self.visitor = self.issued_id = None
        self._scope: Scope | None = scope
        self._send = send

    def send_quiet(self, message: Message) -> Awaitable[None]:
        """For a visitor who needs no cookie unless the app changes something."""
        if self.visitor is None or message["type"] != "http.response.start":
            return self._send(message)
        return self._send(self._with_cookies(message))


if _speedups is not None:

    class LazyVisitor(_speedups.LazyBase, _ASGIVisitor):
        """``scope["trackmw"]`` (see ``_ASGIVisitor``), its storage, ``send_quiet``
        and ``enter`` in C (``trackmw._speedups.LazyBase``)."""

        __slots__ = ()

else:
    LazyVisitor = PyLazyVisitor  # type: ignore[misc]


def _over(message: Message) -> Awaitable[None]:
    """What ``send`` becomes once the app has returned (ASGI allows no later message)."""
    raise RuntimeError("trackmw: the response is over; no more messages can be sent")


def _c_path_failed(exc: BaseException) -> None:
    """Log an error of the C path (the Python path then takes the request)."""
    log.error("trackmw: the middleware's C path failed", exc_info=exc)


def _add_headers(message: Message, cookies: list[str]) -> Message:
    """A copy of an ``http.response.start`` message with ``cookies`` set, made private.

    In C when built (``_speedups.add_cookies``), which leaves to the Python below the
    app's headers it does not recognise and those with ``Vary`` or ``Cache-Control``.
    """
    if _add_cookies is not None:
        added = _add_cookies(message, _PRIVATE_RAW, cookies)
        if added is not None:
            return added
    message = dict(message)
    message["headers"] = _with_cookies(message.get("headers", []), cookies)
    return message


_add_cookies = None if _speedups is None else _speedups.add_cookies


_SCANNED = frozenset((b"cookie", b"dnt", b"sec-gpc"))
#: What the beacon's common case reads, and what rules it out (signals, prefetches).
_BEACON_HEADERS = frozenset(
    (b"cookie", b"user-agent", b"host", b"dnt", b"sec-gpc", b"sec-purpose", b"purpose", b"x-moz")
)


def beacon_headers(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes, bytes] | None:
    """The beacon's common case, from its raw ASGI headers: ``(cookie, user_agent,
    host)`` (the Cookie headers joined, else ``None``; the first User-Agent and Host),
    or ``None`` without a User-Agent or a Host, or with DNT, Sec-GPC or a prefetch
    header. ``trackmw._speedups.beacon_headers`` is the same in C.

    The loop is the page path's with other names, on purpose: one scanner shared by
    both cost each of them 1.3k instructions a request (1.6% of a bare request)."""
    cookie = agent = host = None
    for name, value in headers:
        if name in _BEACON_HEADERS:
            if name == b"cookie":
                cookie = value if cookie is None else cookie + b"; " + value
            elif name == b"user-agent":
                agent = value if agent is None else agent
            elif name == b"host":
                host = value if host is None else host
            else:  # DNT, Sec-GPC or a prefetch: not the common case
                return None
    if agent is None or host is None:
        return None
    return cookie, agent, host


def _error_layer_around(middleware: TrackingMiddleware, scope: Scope) -> tuple[Any, Any] | None:
    """``(host, layer)`` if ``middleware`` sits right inside Starlette's
    ``ServerErrorMiddleware`` (``layer``) at the top of the Starlette app ``host``'s
    stack: the app's outermost middleware. Else ``None``."""
    host = scope.get("app")
    errors: Any = getattr(host, "middleware_stack", None)
    # Only Starlette's own class: a subclass (an error reporter's, say) may do more.
    module = sys.modules.get("starlette.middleware.errors")
    if module is None or type(errors) is not module.ServerErrorMiddleware:
        return None
    return (host, errors) if errors.app is middleware else None


class TrackingMiddleware:
    """Track visitors of an ASGI app (see the module docstring).

    With the C speedups, what the middleware is made with (the app, the tracker's
    settings) is read once, here: make a new middleware rather than change ``app`` on
    this one. For a request the C path takes, the app is called (and a beacon's hit
    counted) when the middleware is called, not when its awaitable is first awaited;
    ``await middleware(scope, receive, send)``, as servers and Starlette call it,
    sees no difference.

    ``ahead_of_errors``: when the middleware is a Starlette app's outermost (added last
    with ``add_middleware``, or listed first in its ``middleware``), move ahead of
    Starlette's ``ServerErrorMiddleware`` at the first call (see ``_settle``); ``False``
    keeps the order Starlette made.
    """

    def __init__(self, app: ASGIApp, tracker: Tracker, *, ahead_of_errors: bool = True) -> None:
        self.app = app
        self.tracker = tracker
        self.ahead_of_errors = ahead_of_errors
        core = self.core = tracker.core
        # Paths that may be trackmw's or excluded start with one of these; any other
        # path is a tracked page, decided by one C-level ``startswith``.
        self._special = (core.prefix, *core.settings.exclude_paths)
        self._quiet_ok = not core.settings.count_server_side
        self._request_state = core.request_state
        self._states = core.reader.states
        self._pixel_path = core.pixel_path
        # The kind of ``LazyVisitor`` the Python path makes (read here, so that tests
        # can choose).
        self._lazy: Callable[[Core, Scope, CookieState, Send], _ASGIVisitor] = LazyVisitor
        # Whichever path takes the first call calls ``_settle`` first (the C path through
        # its plan's ``settle``).
        self._settled = False
        # What ``__call__``'s C path reads (``None``: the Python path takes every request).
        self._plan = None if _speedups is None else self._make_plan(type(self)._settle)

    def _settle(self, scope: Scope) -> None:
        """The first call, before anything else: if this middleware sits right inside
        Starlette's ``ServerErrorMiddleware`` (the outermost one added with
        ``add_middleware``), move ahead of it.

        That layer turns an exception the app raises into a 500 response. trackmw's own
        answers never raise, yet each one, the pixel above all, paid for the layer: a
        coroutine frame, a closure and a coroutine per message, which cost the pixel
        more than all of its own work. Ahead of it, the stack is trackmw -> a copy of
        the ``ServerErrorMiddleware`` -> the rest, as when trackmw wraps the app. A page
        goes through the same layers as before; the app's 500 responses now pass
        through trackmw, as its other responses do (README, "Starlette and FastAPI").
        This call, already inside the layer, goes on with the app it had. Once only:
        later calls do nothing.
        """
        if self._settled:
            return
        self._settled = True
        if not self.ahead_of_errors:
            return
        try:
            found = _error_layer_around(self, scope)
            if found is None:
                return
            host, errors = found
            # A copy: a request already inside the app's layer (served by another
            # thread or event loop, or this very call) still finds trackmw in it.
            layer = copy.copy(errors)
            layer.app = self.app
            plan = None if self._plan is None else self._make_plan(None, layer)
            host.middleware_stack = self  # if the app refuses, nothing has changed
        except Exception:  # never break the host app: stay where it put us
            log.warning(
                "trackmw: could not move ahead of Starlette's error layer", exc_info=True
            )
            return
        self.app = layer
        if plan is not None:
            self._plan = plan  # the C path's later calls call the new app
        log.debug("trackmw: moved ahead of Starlette's ServerErrorMiddleware in %r", host)

    def _make_plan(
        self, settle: Callable[[TrackingMiddleware, Scope], None] | None, app: ASGIApp | None = None
    ) -> Any:
        """The C path's ``Plan``: what it reads of this middleware, and ``app`` (this
        middleware's by default) to call."""
        core = self.core
        return _speedups.Plan(
            app=self.app if app is None else app,
            prefixes=self._special,
            states=self._states,
            core=core,
            lazy_type=LazyVisitor,
            quiet_ok=self._quiet_ok,
            globals=globals(),
            over=_over,
            failed=_c_path_failed,
            pixel_path=self._pixel_path,
            # The beacon's common case: ``Core.quick_beacon`` from its caches alone.
            beacon_caches=core.beacon_caches,
            pixel_start={
                "type": "http.response.start", "status": 200, "headers": list(_PIXEL_RAW)
            },
            pixel_body={"type": "http.response.body", "body": GIF},
            settle=settle,
        )

    async def _asgi(
        self, scope: Scope, receive: Receive, send: Send, *, _app: ASGIApp | None = None
    ) -> None:
        """The middleware in Python: ``__call__`` without the speedups, and for any
        request their C path does not take.

        ``_app``: the app to call, which the C path gives for the call it settled (that
        call goes on with the app it came to); ``self.app`` otherwise."""
        # Read before settling: a call that moves this middleware ahead of the error
        # layer came through that layer already, and goes on as it came.
        app = self.app if _app is None else _app
        if not self._settled:  # (the C path settles before it calls this)
            self._settle(scope)
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await app(scope, receive, self._lifespan_send(send))
            else:
                await app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(self._special):
            if path == self._pixel_path:
                status = self._quick_pixel(scope)
                if status is None:
                    await self._pixel(scope, send)
                else:
                    # Fresh messages: middleware around this one may edit headers.
                    start = {"type": "http.response.start", "status": status}
                    start["headers"] = [*_PIXEL_RAW]
                    await send(start)
                    await send({"type": "http.response.body", "body": GIF})
                return
            core = self.core
            if core.owns(path):
                await self._endpoint(scope, receive, send)
                return
            if core.excluded(path):
                await app(scope, receive, send)
                return
        try:
            # Cookie (repeats joined), DNT and Sec-GPC (first of each), in one
            # pass: one set lookup for each of the other headers.
            cookie = dnt = gpc = None
            for name, value in scope["headers"]:
                if name in _SCANNED:
                    if name == b"cookie":
                        cookie = value if cookie is None else cookie + b"; " + value
                    elif name == b"dnt":
                        dnt = value if dnt is None else dnt
                    elif gpc is None:
                        gpc = value
            state = self._request_state(cookie, dnt, gpc, _time())
        except Exception:  # never break the host app
            log.exception("trackmw: could not read the visitor; serving the page untracked")
            await app(scope, receive, send)
            return
        lazy = self._lazy(self.core, scope, state, send)
        scope["trackmw"] = lazy
        # A returning visitor the app leaves alone gets no cookie: nothing to do at all;
        # a new one gets its id cookie, without building its Visitor.
        if self._quiet_ok and state.quiet:
            wrapped = lazy.send_quiet
        elif self._quiet_ok and state.fresh:
            wrapped = lazy.send_fresh
        else:
            wrapped = lazy.send_full
        try:
            await app(scope, receive, wrapped)
        finally:
            lazy._scope, lazy._send = None, _over  # no reference cycle outlives the request

    if _speedups is None:
        __call__ = _asgi
    else:
        # A tracked page whose Cookie header's state is cached (every returning
        # visitor's page): from the type check to the app's call, in C, without a
        # coroutine frame; anything else goes to ``_asgi``. Read from an instance,
        # ``__call__`` is ``_asgi`` bound to it (an async method, as servers that tell
        # ASGI 3 from 2 expect); calling the instance takes the C path.
        __call__ = _speedups.Entry(_asgi)

    def _quick_pixel(self, scope: Scope) -> int | None:
        """The beacon's common case (``Core.quick_beacon``), from three headers read in
        one pass (``beacon_headers``): the status to answer with, or ``None`` to take the
        general path."""
        # (With the speedups, a beacon gets here only when the C count left it: the
        # caches did not hold it yet, or it is not the common case.)
        try:
            found = beacon_headers(scope["headers"]) if scope["method"] == "GET" else None
        except Exception:  # a scope no ASGI server makes: ``_pixel`` reads it, or says so
            return None
        if found is None:
            return None
        cookie, agent, host = found
        try:
            return self.core.quick_beacon(
                cookie, agent, host, scope.get("query_string", b""), _time()
            )
        except Exception:  # never break the pixel: the general path decides
            log.exception("trackmw: the pixel's quick path failed")
            return None

    async def _pixel(self, scope: Scope, send: Send) -> None:
        """The beacon, from the whole request (``Core.pixel``); the GIF, not counted, if
        the scope cannot be read (its headers or query not bytes, a key missing: a
        server's or an outer middleware's mistake, never a client's)."""
        try:
            req = request_from_scope(scope, _CORE_HEADERS)
        except Exception:  # never break the pixel
            log.exception("trackmw: could not read the beacon's request; serving the GIF")
            response = gif_response(scope.get("method", "GET"))
        else:
            response = self.core.pixel(req)
        await send_response(send, response)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await anyio.to_thread.run_sync(self.tracker.flush)
            await send(message)

        return lifespan_send

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """trackmw's endpoints other than the pixel (which ``_pixel`` answers); 400 if the
        scope cannot be read (as ``_pixel``)."""
        try:
            req = request_from_scope(scope)
        except Exception:  # never a 500 from trackmw
            log.exception("trackmw: could not read the request to %r; answering 400", scope["path"])
            await send_response(send, text_response(400, "bad request"))
            return
        body: bytes | None = b""
        if req.method in ("POST", "PUT", "DELETE", "PATCH"):
            body = await _read_body(receive)
        if body is None:
            response = text_response(413, "request body too large")
        else:
            from starlette.requests import Request as StarletteRequest

            req.native = StarletteRequest(scope, receive)
            # Endpoints may read the store: keep that off the event loop.
            response = await anyio.to_thread.run_sync(self.core.handle, req, body)
        await send_response(send, response)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_response(send: Send, response: Response) -> None:
    headers = response.headers
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            # A fresh list: middleware around this one may edit headers in place.
            "headers": [*_PIXEL_RAW] if headers is PIXEL_HEADERS else _encode(headers),
        }
    )
    await send({"type": "http.response.body", "body": response.body})
