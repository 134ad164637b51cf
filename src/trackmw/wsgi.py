"""WSGI middleware (Flask, Django, any WSGI app).

>>> app.wsgi_app = TrackingMiddleware(app.wsgi_app, tracker=tracker)   # doctest: +SKIP

Per request: trackmw's own paths are answered here without calling the app; excluded
paths go straight to the app; every other request gets its ``Visitor`` in
``environ["trackmw.visitor"]`` and, in ``start_response``, the cookies the core asks for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from werkzeug.wsgi import get_content_length

from .endpoints import MAX_BODY, text_response
from .messages import ENDPOINT_HEADERS, Request, Response
from .tracker import Tracker

__all__ = ["TrackingMiddleware"]

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


class TrackingMiddleware:
    """Track visitors of a WSGI app (see the module docstring)."""

    def __init__(self, app: WSGIApp, tracker: Tracker) -> None:
        self.app = app
        self.tracker = tracker
        self.core = tracker.core

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        path = environ.get("PATH_INFO", "") or "/"
        if core.owns(path):
            return self._endpoint(environ, start_response)
        if core.excluded(path):
            return self.app(environ, start_response)
        try:
            visitor = core.visitor(request_from_environ(environ))
        except Exception:  # never break the host app
            log.exception("trackmw: could not read the visitor; serving the page untracked")
            return self.app(environ, start_response)
        environ["trackmw.visitor"] = visitor

        def start_with_cookies(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            try:
                changed = core.finish(visitor, int(status[:3]), headers)
                if changed is not None:
                    headers = changed
            except Exception:
                log.exception("trackmw: could not add cookies; response sent unchanged")
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        return self.app(environ, start_with_cookies)

    def _endpoint(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
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
