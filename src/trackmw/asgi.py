"""ASGI middleware (Starlette, FastAPI, any ASGI app). Pure ASGI.

>>> app.add_middleware(TrackingMiddleware, tracker=tracker)   # doctest: +SKIP

Per request: trackmw's own paths are answered here without calling the app; excluded
paths go straight to the app; every other request gets its ``Visitor`` in
``scope["trackmw"]`` and, when the response starts, the cookies the core asks for.
Websocket scopes pass through; on lifespan shutdown buffered events are flushed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread

from .core import Request, Response
from .endpoints import MAX_BODY, text_response
from .tracker import Tracker

__all__ = ["TrackingMiddleware"]

log = logging.getLogger("trackmw")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_from_scope(scope: Scope) -> Request:
    """Describe an ASGI HTTP scope for the core."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name == "cookie" and name in headers:
            headers[name] = headers[name] + "; " + value
        else:
            headers.setdefault(name, value)
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


class TrackingMiddleware:
    """Track visitors of an ASGI app (see the module docstring)."""

    def __init__(self, app: ASGIApp, tracker: Tracker) -> None:
        self.app = app
        self.tracker = tracker
        self.core = tracker.core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
            else:
                await self.app(scope, receive, send)
            return
        core = self.core
        path: str = scope["path"]
        if core.owns(path):
            await self._endpoint(scope, receive, send)
            return
        if core.excluded(path):
            await self.app(scope, receive, send)
            return
        try:
            visitor = core.visitor(request_from_scope(scope))
        except Exception:  # never break the host app
            log.exception("trackmw: could not read the visitor; serving the page untracked")
            await self.app(scope, receive, send)
            return
        scope["trackmw"] = visitor

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                try:
                    raw = message.get("headers", [])
                    app_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
                    changed = core.finish(visitor, message["status"], app_headers)
                    if changed is not None:
                        message = dict(message)
                        message["headers"] = _encode(changed)
                except Exception:
                    log.exception("trackmw: could not add cookies; response sent unchanged")
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await anyio.to_thread.run_sync(self.tracker.flush)
            await send(message)

        return lifespan_send

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        core = self.core
        req = request_from_scope(scope)
        if scope["path"] == core.pixel_path:
            response = core.pixel(req)  # no I/O: answered on the event loop
        else:
            body: bytes | None = b""
            if req.method in ("POST", "PUT", "DELETE", "PATCH"):
                body = await _read_body(receive)
            if body is None:
                response = text_response(413, "request body too large")
            else:
                from starlette.requests import Request as StarletteRequest

                req.native = StarletteRequest(scope, receive)
                # Endpoints may read the store: keep that off the event loop.
                response = await anyio.to_thread.run_sync(core.handle, req, body)
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
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": _encode(response.headers),
        }
    )
    await send({"type": "http.response.body", "body": response.body})
