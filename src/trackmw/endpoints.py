"""trackmw's own endpoints besides the pixel: plain ``Request`` in, ``Response`` out.

- ``GET /consent``: the visitor's consent as JSON.
- ``POST /consent``: record a choice (form or JSON); 303 to a safe ``next``, else 204
  (200 with JSON when JSON was sent).
- ``GET /me``: everything held about the visitor, as JSON.
- ``DELETE /me`` and ``POST /me/delete``: erase it, delete the cookies.

Rules: state changes only on POST/DELETE, and only from the same origin (by ``Origin``,
else ``Referer``, else ``Sec-Fetch-Site``); malformed input gets a 4xx with a short
reason; nothing here answers a 500 on purpose. More routes (the stats API and the
dashboard) are added with ``Endpoints.route``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

from .errors import StoreError
from .messages import Request, Response, private_headers

if TYPE_CHECKING:
    from .core import Core

__all__ = ["Endpoints", "json_response", "safe_next", "same_origin", "text_response"]

log = logging.getLogger("trackmw")

MAX_BODY = 64 * 1024
Handler = Callable[[Request, bytes], Response]
_NO_STORE = ("cache-control", "no-store")


def json_response(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(
        status,
        [("content-type", "application/json"), _NO_STORE, *(headers or [])],
        body,
    )


def text_response(status: int, reason: str) -> Response:
    return Response(
        status, [("content-type", "text/plain; charset=utf-8"), _NO_STORE], reason.encode()
    )


def redirect(target: str) -> Response:
    """A 303 See Other to ``target`` (already checked by ``safe_next``)."""
    return Response(
        303,
        [("location", target), ("content-type", "text/plain; charset=utf-8"), _NO_STORE],
        b"See " + target.encode(),
    )


def not_allowed(allow: str) -> Response:
    response = text_response(405, "method not allowed")
    response.headers.append(("allow", allow))
    return response


#: What ``safe_next`` leaves as it is: every printable ASCII character (the value's
#: ``%`` escapes included); the checks before it have refused the blanks and controls.
_ASCII_PRINTABLE = "".join(map(chr, range(33, 127)))


def safe_next(value: Any) -> str | None:
    """``value`` if it is a path on this site, else ``None``; its characters beyond
    ASCII percent-encoded (as UTF-8), since a ``Location`` header carries ASCII only.

    Refused: anything not starting with exactly one ``/`` (``//host``, ``/\\host``,
    ``https:…``), backslashes, and control or space characters (browsers strip tabs and
    newlines, turning ``/\\t/host`` into ``//host``).

    >>> safe_next("/thanks?x=1"), safe_next("//evil.example"), safe_next("/\\\\evil")
    ('/thanks?x=1', None, None)
    >>> safe_next("/café?q=€")
    '/caf%C3%A9?q=%E2%82%AC'
    """
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 2048:
        return None
    if value.startswith("//") or "\\" in value or any(ord(c) <= 32 or ord(c) == 127 for c in value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme or parts.netloc:
        return None
    if value.isascii():
        return value
    try:  # a page whose path is not ASCII (a form's ``next`` is often the page's path)
        encoded = quote(value, safe=_ASCII_PRINTABLE)
    except UnicodeEncodeError:  # a lone surrogate, from a JSON escape
        return None
    return encoded if len(encoded) <= 2048 else None  # the cap holds for the header


def origin_of(req: Request, https: bool) -> str:
    return ("https://" if https else "http://") + req.host


def same_origin(req: Request, https: bool) -> bool:
    """Did this request come from a page of this site?

    ``Origin`` decides when present (``null`` is foreign); else ``Referer``; else
    ``Sec-Fetch-Site``; a request with none of them (a non-browser client, or a
    browser hiding them) is allowed, since a cross-site browser request always sends
    at least one of them for POST and DELETE.
    """
    headers = req.headers
    origin = headers.get("origin")
    if origin is not None:
        return _same(origin, req, https)
    referer = headers.get("referer")
    if referer:
        return _same(referer, req, https)
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    return True


def _same(url: str, req: Request, https: bool) -> bool:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    host = req.host
    if not host:
        return False
    scheme_ok = parts.scheme == ("https" if https else "http")
    return scheme_ok and _norm_host(parts.netloc, parts.scheme) == _norm_host(host, parts.scheme)


def _norm_host(netloc: str, scheme: str) -> str:
    netloc = netloc.lower().rsplit("@", 1)[-1]
    default = ":443" if scheme == "https" else ":80"
    return netloc[: -len(default)] if netloc.endswith(default) else netloc


class BadRequest(Exception):
    """Malformed input: answered with a 400 and this reason."""


def parse_body(req: Request, body: bytes) -> tuple[dict[str, Any], bool]:
    """The fields of a form or JSON body, and whether it was JSON."""
    ctype = req.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if len(body) > MAX_BODY:
        raise BadRequest("body too large")
    if ctype == "application/json":
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # the last: nested too deep
            raise BadRequest("malformed JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("JSON body must be an object")
        return data, True
    if ctype in ("application/x-www-form-urlencoded", ""):
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(
                text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=50
            )
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("malformed form body") from None
        return dict(pairs), False
    if ctype == "multipart/form-data":
        raise BadRequest("send the form as application/x-www-form-urlencoded")
    raise BadRequest(f"unsupported content type {ctype!r}")


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("0", "1", "true", "false", "on", "off", ""):
        return value.lower() in ("1", "true", "on")
    raise BadRequest(f"{name} must be 0 or 1")


class Endpoints:
    """The router for paths under the prefix (the pixel is answered by ``Core``)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.routes: dict[str, Handler] = {
            "/consent": self.consent,
            "/me": self.me,
            "/me/delete": self.me_delete,
        }

    def route(self, subpath: str, handler: Handler) -> None:
        """Answer ``prefix + subpath`` with ``handler``."""
        self.routes[subpath] = handler

    def handle(self, req: Request, body: bytes) -> Response:
        handler = self.routes.get(req.path[len(self.core.prefix) :])
        if handler is None:
            return text_response(404, "not found")
        try:
            return handler(req, body)
        except BadRequest as exc:
            return text_response(400, str(exc))

    # -- consent ---------------------------------------------------------------------------

    def consent(self, req: Request, body: bytes) -> Response:
        core = self.core
        if req.method in ("GET", "HEAD"):
            return json_response(200, core.visitor(req).consent.to_dict())
        if req.method != "POST":
            return not_allowed("GET, POST")
        https = core.is_https(req)
        if not same_origin(req, https):
            return text_response(403, "cross-origin request refused")
        data, is_json = parse_body(req, body)
        choice = data.get("choice")
        if choice is not None:
            if choice not in ("accept", "reject"):
                raise BadRequest("choice must be 'accept' or 'reject'")
            analytics = preferences = choice == "accept"
        elif "analytics" in data or "preferences" in data:
            analytics, preferences = _flag(data, "analytics"), _flag(data, "preferences")
        else:
            raise BadRequest("send choice=accept|reject, or analytics=0|1&preferences=0|1")
        visitor = core.visitor(req)
        visitor.accept(analytics, preferences)
        cookies = core.cookie_headers(visitor)
        target = safe_next(data.get("next"))
        if target is not None:
            response = redirect(target)
        elif is_json:
            response = json_response(200, visitor.consent.to_dict())
        else:
            response = Response(204, [])
        response.headers = private_headers(response.headers, cookies)
        return response

    # -- the visitor's own data ------------------------------------------------------------

    def me(self, req: Request, body: bytes) -> Response:
        if req.method == "DELETE":
            return self._erase(req, body, via_form=False)
        if req.method not in ("GET", "HEAD"):
            return not_allowed("GET, DELETE")
        core = self.core
        state = core.request_state_of(req)
        visitor = core.visitor_from_state(req, state)
        visitor_id = state.sent_id  # verified, with or without analytics now
        held: dict[str, Any] = {"pageviews": [], "consents": [], "user_ids": []}
        if visitor_id is not None:
            try:
                core.pipeline.flush()
                held = core.pipeline.store.visitor_data(visitor_id)
            except StoreError as exc:
                log.error("trackmw: reading a visitor's data failed: %s", exc)
                return text_response(503, "the store is unavailable; try again later")
        document = {
            "id": visitor_id,
            "consent": visitor.consent.to_dict(),
            "preferences": dict(visitor.preferences),
            # The user the id cookie names, as the id: also while a signal or a
            # withdrawn choice leaves the visitor without analytics (``user_id`` None).
            "user_id": state.user_id,
            **held,
        }
        return json_response(200, document)

    def me_delete(self, req: Request, body: bytes) -> Response:
        if req.method != "POST":
            return not_allowed("POST")
        return self._erase(req, body, via_form=True)

    def _erase(self, req: Request, body: bytes, *, via_form: bool) -> Response:
        core = self.core
        if not same_origin(req, core.is_https(req)):
            return text_response(403, "cross-origin request refused")
        target = None
        if via_form and body:
            data, _ = parse_body(req, body)
            target = safe_next(data.get("next"))
        state = core.request_state_of(req)
        visitor = core.visitor_from_state(req, state)
        visitor_id = state.sent_id  # verified, with or without analytics now
        removed = 0
        if visitor_id is not None:
            try:
                # The user the cookie names goes too, with or without analytics now: a
                # request sending DNT or GPC erased this browser's views only.
                removed = core.pipeline.erase(visitor_id, state.user_id)
            except StoreError as exc:
                log.error("trackmw: erasing a visitor failed: %s", exc)
                return text_response(503, "the store is unavailable; nothing was erased")
        visitor._erased = True
        visitor._id_sent = visitor._id_sent or visitor_id is not None
        visitor._prefs_sent = True
        cookies = core.cookie_headers(visitor)
        if target is not None:
            response = redirect(target)
        else:
            response = json_response(200, {"erased": removed})
        response.headers = private_headers(response.headers, cookies)
        return response
