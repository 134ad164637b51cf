"""WSGI middleware (Flask, Django, any WSGI app).

>>> app.wsgi_app = TrackingMiddleware(app.wsgi_app, tracker=tracker)   # doctest: +SKIP

Per request: trackmw's own paths are answered here without calling the app; excluded
paths go straight to the app; every other request gets its ``Visitor`` in
``environ["trackmw.visitor"]`` (built when first asked for: see ``LazyVisitor``) and,
in ``start_response``, the cookies the core asks for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from time import time as _time
from typing import Any

from werkzeug.wsgi import get_content_length

from .cookiestate import CookieState
from .core import Core
from .endpoints import MAX_BODY, text_response
from .messages import ENDPOINT_HEADERS, Request, Response, private_headers
from .pixel import GIF, PIXEL_HEADERS
from .tracker import Tracker
from .visitor import LazyVisitor as BaseLazyVisitor

__all__ = ["LazyVisitor", "TrackingMiddleware"]

log = logging.getLogger("trackmw")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# The headers the core reads, by their environ key.
_HEADERS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in ENDPOINT_HEADERS)


def _text(value: str) -> str:
    """WSGI strings are bytes decoded as latin-1; recover the UTF-8 text."""
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value


def request_from_environ(environ: dict[str, Any]) -> Request:
    """Describe a WSGI environ for the core."""
    headers = {name: environ[key] for name, key in _HEADERS if key in environ}
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    if "host" not in headers:
        port = environ.get("SERVER_PORT", "")
        headers["host"] = environ.get("SERVER_NAME", "") + (f":{port}" if port else "")
    return Request(
        method=environ.get("REQUEST_METHOD", "GET"),
        path=_text(environ.get("PATH_INFO", "") or "/"),
        query=environ.get("QUERY_STRING", ""),
        scheme=environ.get("wsgi.url_scheme", "http"),
        headers=headers,
        client=environ.get("REMOTE_ADDR"),
    )


class LazyVisitor(BaseLazyVisitor):
    """``environ["trackmw.visitor"]``: the request's ``Visitor``, built on first call
    (see ``trackmw.visitor.LazyVisitor``), and the app's ``start_response``, wrapped
    (``start_quiet``, ``start_fresh``, ``start_full``) to add the cookies the core asks
    for.
    """

    __slots__ = ("_core", "_state", "visitor", "issued_id", "_environ", "_start_response")

    def __init__(
        self, core: Core, environ: dict[str, Any], state: CookieState, start: StartResponse
    ) -> None:
        self._core = core  # the base's attributes, without a super().__init__ call
        self._state = state
        self.visitor = self.issued_id = None
        # The environ as it arrived: an app may rewrite PATH_INFO and SCRIPT_NAME in
        # place (werkzeug's DispatcherMiddleware) before it asks for the visitor. A
        # copy made before this object goes into the environ also holds no cycle.
        self._environ = environ.copy()
        self._start_response = start

    def _request(self) -> Request:
        return request_from_environ(self._environ)

    def start_quiet(self, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        """For a visitor who needs no cookie unless the app changes something."""
        if self.visitor is None:
            return self._start(status, headers, exc_info)
        return self.start_full(status, headers, exc_info)

    def start_fresh(self, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        """For a new visitor: the id cookie, unless the app asked for its visitor."""
        if self.visitor is not None:
            return self.start_full(status, headers, exc_info)
        try:
            cookie = self.fresh_cookie(self._environ.get("wsgi.url_scheme", "http"))
            headers = private_headers(headers, [cookie])
        except Exception:
            log.exception("trackmw: could not add cookies; response sent unchanged")
        return self._start(status, headers, exc_info)

    def start_full(self, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        """For any other visitor: the core decides (and may count the page)."""
        try:
            changed = self._core.finish(self(), int(status[:3]), headers)
            if changed is not None:
                headers = changed
        except Exception:
            log.exception("trackmw: could not add cookies; response sent unchanged")
        return self._start(status, headers, exc_info)

    def _start(self, status: str, headers: list[Any], exc_info: Any) -> Any:
        if exc_info is None:  # some start_response callables take two arguments
            return self._start_response(status, headers)
        return self._start_response(status, headers, exc_info)


#: Request headers that rule out the pixel's quick path (signals and prefetches).
_NOT_QUICK = ("HTTP_DNT", "HTTP_SEC_GPC", "HTTP_SEC_PURPOSE", "HTTP_PURPOSE", "HTTP_X_MOZ")


class TrackingMiddleware:
    """Track visitors of a WSGI app (see the module docstring)."""

    def __init__(self, app: WSGIApp, tracker: Tracker) -> None:
        self.app = app
        self.tracker = tracker
        core = self.core = tracker.core
        # Paths that may be trackmw's or excluded start with one of these; any other
        # path is a tracked page, decided by one C-level ``startswith``.
        self._special = (core.prefix, *core.settings.exclude_paths)
        self._quiet_ok = not core.settings.count_server_side
        self._request_state = core.request_state

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path.startswith(self._special):
            core = self.core
            if core.owns(path):
                return self._endpoint(environ, start_response)
            if core.excluded(path):
                return self.app(environ, start_response)
        try:
            state = self._request_state(
                environ.get("HTTP_COOKIE"),
                environ.get("HTTP_DNT"),
                environ.get("HTTP_SEC_GPC"),
                _time(),
            )
        except Exception:  # never break the host app
            log.exception("trackmw: could not read the visitor; serving the page untracked")
            return self.app(environ, start_response)
        lazy = LazyVisitor(self.core, environ, state, start_response)
        environ["trackmw.visitor"] = lazy
        # A returning visitor the app leaves alone gets no cookie: nothing to do at all;
        # a new one gets its id cookie, without building its Visitor.
        if self._quiet_ok and state.quiet:
            return self.app(environ, lazy.start_quiet)
        if self._quiet_ok and state.fresh:
            return self.app(environ, lazy.start_fresh)
        return self.app(environ, lazy.start_full)

    def _endpoint(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        if environ.get("PATH_INFO") == core.pixel_path:
            status = self._quick_pixel(environ)
            if status is not None:
                start_response(_STATUS[status], list(PIXEL_HEADERS))
                return [GIF]
        req = request_from_environ(environ)
        if req.path == core.pixel_path:
            response = core.pixel(req)
        else:
            body: bytes | None = b""
            if req.method in ("POST", "PUT", "DELETE", "PATCH"):
                body = _read_body(environ)
            if body is None:
                response = text_response(413, "request body too large")
            else:
                from werkzeug.wrappers import Request as WerkzeugRequest

                req.native = WerkzeugRequest(environ)
                response = core.handle(req, body)
        return send_response(start_response, response)

    def _quick_pixel(self, environ: dict[str, Any]) -> int | None:
        """The beacon's common case (``Core.quick_beacon``): the status, or ``None``."""
        if environ.get("REQUEST_METHOD") != "GET":
            return None
        agent = environ.get("HTTP_USER_AGENT")
        host = environ.get("HTTP_HOST")
        if agent is None or host is None or any(k in environ for k in _NOT_QUICK):
            return None
        try:
            return self.core.quick_beacon(
                environ.get("HTTP_COOKIE"), agent, host, environ.get("QUERY_STRING", ""), _time()
            )
        except Exception:  # never break the pixel: the general path decides
            log.exception("trackmw: the pixel's quick path failed")
            return None


_STATUS = {200: "200 OK", 429: "429 Too Many Requests"}


def _read_body(environ: dict[str, Any]) -> bytes | None:
    length = get_content_length(environ)
    if length is None:
        if environ.get("wsgi.input_terminated"):
            data: bytes = environ["wsgi.input"].read(MAX_BODY + 1)
            return None if len(data) > MAX_BODY else data
        return b""
    if length > MAX_BODY:
        return None
    data = environ["wsgi.input"].read(length) if length else b""
    return data


def send_response(start_response: StartResponse, response: Response) -> list[bytes]:
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Unknown"
    start_response(f"{response.status} {phrase}", list(response.headers))
    return [response.body] if response.body else []
