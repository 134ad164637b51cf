"""The stats API and dashboard endpoints: plain ``Request`` in, ``Response`` out.

| method and path (under the prefix) | answers                                              |
|------------------------------------|------------------------------------------------------|
| ``GET /api/stats?since=&until=``   | the report as JSON; token (or ``authorize``) needed  |
| ``GET /dashboard?since=&until=``   | the HTML dashboard, or the login form (401)          |
| ``POST /dashboard/login``          | token form -> session cookie, 303 to the dashboard   |
| ``POST /dashboard/logout``         | deletes the session cookie, 303 to the dashboard     |
| ``GET /dashboard.css``             | the dashboard's stylesheet                           |

All of them answer 404 when neither ``dashboard_token`` nor ``authorize`` is set. State
changes only on POST and only from the same origin; every answer is ``no-store``; no
CORS headers, so other sites' scripts can never read a report.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from ..endpoints import json_response, parse_body, same_origin, text_response
from ..errors import StoreError
from ..messages import Request, Response
from ..report import Report
from .auth import Guard
from .page import CSS, dashboard_page, login_page, message_page
from .ranges import RangeError, report_range, today

if TYPE_CHECKING:
    from ..core import Core

__all__ = ["DashboardEndpoints"]

log = logging.getLogger("trackmw")

#: The dashboard allows no script, no plugin, no framing, and loads only its stylesheet.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY = [
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),  # no-referrer would make Origin "null"
    ("x-frame-options", "DENY"),
]
_HTML = ("content-type", "text/html; charset=utf-8")


def html(status: int, body: str, extra: list[tuple[str, str]] | None = None) -> Response:
    return Response(
        status,
        [_HTML, *_SECURITY, ("content-security-policy", PAGE_CSP), *(extra or [])],
        body.encode(),
    )


def _query(req: Request) -> dict[str, str]:
    """The query's fields (the first of repeated ones); ``RangeError`` if it has too many."""
    try:
        pairs = parse_qsl(req.query, keep_blank_values=True, max_num_fields=20)
    except ValueError:
        raise RangeError("too many query parameters") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


_TEXT = ("content-type", "text/plain; charset=utf-8")  # WSGI wants one on every response


def _not_allowed(allow: str) -> Response:
    return Response(405, [_TEXT, ("allow", allow), *_SECURITY], b"method not allowed")


def _see_dashboard(prefix: str, cookie: str) -> Response:
    return Response(
        303,
        [
            _TEXT,
            ("location", prefix + "/dashboard"),
            *_SECURITY,
            ("set-cookie", cookie),
        ],
        b"see the dashboard",
    )


class DashboardEndpoints:
    """The handlers, bound to one ``Core``."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.guard = Guard(core)
        self.prefix = core.settings.prefix

    # -- helpers ------------------------------------------------------------------------

    def _range(self, req: Request) -> tuple[str | None, str | None]:
        q = _query(req)
        return q.get("since") or None, q.get("until") or None

    def _report(self, req: Request) -> Report:
        settings = self.core.settings
        since, until = report_range(
            *self._range(req),
            tz=settings.tzinfo,
            max_days=settings.max_report_days,
            now=req.now or None,
        )
        pipeline = self.core.pipeline
        pipeline.flush()
        return pipeline.store.report(since, until)

    def _secure(self, req: Request) -> bool:
        s = self.core.settings
        return s.cookie_secure if s.cookie_secure is not None else self.core.is_https(req)

    # -- GET /api/stats -------------------------------------------------------------------

    def stats(self, req: Request, body: bytes) -> Response:
        guard = self.guard
        if not guard.enabled:
            return text_response(404, "not found")
        if req.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        if not guard.authorized(req):
            response = text_response(401, "send Authorization: Bearer <dashboard_token>")
            response.headers.append(("www-authenticate", 'Bearer realm="trackmw"'))
            return response
        try:
            report = self._report(req)
        except RangeError as exc:
            return text_response(400, str(exc))
        except StoreError as exc:
            log.error("trackmw: the stats API could not read the store: %s", exc)
            return text_response(503, "the store is unavailable; try again later")
        return json_response(200, report.to_dict(), [("x-content-type-options", "nosniff")])

    # -- GET /dashboard ---------------------------------------------------------------------

    def dashboard(self, req: Request, body: bytes) -> Response:
        guard = self.guard
        if not guard.enabled:
            return text_response(404, "not found")
        if req.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        by_session = False
        if not guard.authorized(req):
            by_session = guard.session_ok(req)
            if not by_session:
                return self._login_required()
        tz = self.core.settings.tzinfo
        try:
            report = self._report(req)
        except RangeError as exc:
            return html(400, message_page(self.prefix, "Cannot show this range", str(exc)))
        except StoreError as exc:
            log.error("trackmw: the dashboard could not read the store: %s", exc)
            return html(
                503,
                message_page(
                    self.prefix, "Store unavailable", "The store is unavailable; try again later."
                ),
            )
        page = dashboard_page(
            report,
            prefix=self.prefix,
            timezone=self.core.settings.timezone,
            today=today(tz, req.now or None),
            logout=by_session,
        )
        return html(200, page)

    def _login_required(self) -> Response:
        if self.guard.token is None:  # only the site's own login can open the dashboard
            return html(
                403,
                message_page(
                    self.prefix,
                    "Not allowed",
                    "Sign in to the site with an account allowed to see the visitor dashboard.",
                ),
            )
        return html(401, login_page(self.prefix), [("www-authenticate", 'Bearer realm="trackmw"')])

    # -- POST /dashboard/login and /dashboard/logout -----------------------------------------

    def login(self, req: Request, body: bytes) -> Response:
        guard = self.guard
        if not guard.enabled:
            return text_response(404, "not found")
        if req.method != "POST":
            return _not_allowed("POST")
        if guard.token is None:
            return self._login_required()
        if not same_origin(req, self.core.is_https(req)):
            return text_response(403, "cross-origin request refused")
        wait = guard.limiter.allow(guard.client_key(req))
        if wait:
            return html(
                429,
                login_page(self.prefix, "Too many attempts. Wait a minute and try again."),
                [("retry-after", str(int(wait + 0.999)))],
            )
        data, _ = parse_body(req, body)
        token = data.get("token")
        if not isinstance(token, str) or not guard.token_ok(token):
            return html(401, login_page(self.prefix, "That token is not right."))
        return _see_dashboard(self.prefix, guard.session_cookie(self._secure(req)))

    def logout(self, req: Request, body: bytes) -> Response:
        if not self.guard.enabled:
            return text_response(404, "not found")
        if req.method != "POST":
            return _not_allowed("POST")
        if not same_origin(req, self.core.is_https(req)):
            return text_response(403, "cross-origin request refused")
        return _see_dashboard(self.prefix, self.guard.clear_cookie(self._secure(req)))

    # -- GET /dashboard.css -------------------------------------------------------------------

    def css(self, req: Request, body: bytes) -> Response:
        if not self.guard.enabled:
            return text_response(404, "not found")
        if req.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        return Response(
            200,
            [
                ("content-type", "text/css; charset=utf-8"),
                ("cache-control", "no-cache"),
                ("x-content-type-options", "nosniff"),
            ],
            CSS,
        )
