"""One way to drive both adapters, so every behaviour test runs against ASGI and WSGI.

``Client(kind, tracker)`` wraps a small site (Starlette for ``"asgi"`` and
``"asgi-py"``, Flask for ``"wsgi"``) in trackmw's middleware and sends raw requests to
it in-process (``"asgi-py"``: the ASGI middleware without its C speedups, when they
are built, so that both ways through it are tested): the ASGI
app is called with a real scope, the WSGI app through ``wsgiref.validate`` with a real
environ. Responses come back as status, raw header list and body, and a tiny cookie
jar applies ``Set-Cookie`` headers the way a browser would.
"""

from __future__ import annotations

import asyncio
import io
import json
import wsgiref.validate
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request as SRequest
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from trackmw import Tracker, get_visitor
from trackmw.asgi import SPEEDUPS, PyLazyVisitor
from trackmw.asgi import TrackingMiddleware as ASGIMiddleware
from trackmw.flask import Tracking
from trackmw.visitor import Visitor

KINDS = ("asgi", "asgi-py", "wsgi") if SPEEDUPS else ("asgi", "wsgi")


class PurePythonMiddleware(ASGIMiddleware):
    """The ASGI middleware as it runs without ``trackmw._speedups``."""

    def __init__(self, app: Any, tracker: Tracker, **kwargs: Any) -> None:
        super().__init__(app, tracker, **kwargs)
        self._lazy, self._plan = PyLazyVisitor, None


BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def describe(v: Visitor) -> str:
    c = v.consent
    return json.dumps(
        {
            "id": v.id,
            "new": v.is_new,
            "user": v.user_id,
            "analytics": c.analytics,
            "preferences": c.preferences,
            "decided": c.decided,
            "stale": c.stale,
            "reason": c.reason,
            "prefs": dict(v.preferences),
            "beacon": v.beacon_url(),
            "tag": v.beacon_tag(),
        }
    )


def act(v: Visitor, action: str, arg: str | None) -> None:
    """The app-side actions the test site offers, shared by both frameworks."""
    if action == "login":
        v.identify(arg or "alice")
    elif action == "logout":
        v.forget_user()
    elif action == "accept":
        v.accept()
    elif action == "accept-analytics":
        v.accept(analytics=True, preferences=False)
    elif action == "reject":
        v.reject()
    elif action == "minor":
        v.mark_minor()
    elif action == "minor-guardian":
        v.mark_minor(guardian_consent=True)
    elif action == "pref":
        v.preferences["theme"] = arg or "dark"


def starlette_site(tracker: Tracker, middleware: type[ASGIMiddleware] = ASGIMiddleware) -> Any:
    async def page(req: SRequest) -> Response:
        v = get_visitor(req)
        act(v, req.query_params.get("do", ""), req.query_params.get("arg"))
        headers = {}
        if "cache" in req.query_params:
            headers["cache-control"] = req.query_params["cache"]
        return PlainTextResponse(describe(v), headers=headers)

    async def static(req: SRequest) -> Response:
        try:
            get_visitor(req)
            found = "visitor"
        except LookupError:
            found = "none"
        return PlainTextResponse(found)

    app = Starlette(routes=[Route("/static/{p:path}", static), Route("/{p:path}", page)])
    app.add_middleware(middleware, tracker=tracker)
    return app


def flask_site(tracker: Tracker) -> Any:
    app = Flask(__name__, static_folder=None)
    Tracking(app, tracker)

    @app.route("/static/<path:p>")
    def static_file(p: str) -> str:
        try:
            get_visitor(request)
            return "visitor"
        except LookupError:
            return "none"

    @app.route("/", defaults={"p": ""})
    @app.route("/<path:p>")
    def page(p: str) -> Any:
        v = get_visitor(request)
        act(v, request.args.get("do", ""), request.args.get("arg"))
        response = app.response_class(describe(v), mimetype="text/plain")
        if "cache" in request.args:
            response.headers["Cache-Control"] = request.args["cache"]
        return response

    return app.wsgi_app


@dataclass
class Result:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def cookies(self) -> dict[str, dict[str, str]]:
        """Set-Cookie headers parsed: name -> {"value": …, "max-age": …, attributes…}."""
        out: dict[str, dict[str, str]] = {}
        for line in self.all("set-cookie"):
            first, *attrs = [p.strip() for p in line.split(";")]
            name, _, value = first.partition("=")
            parsed = {"value": value}
            for attr in attrs:
                k, _, v = attr.partition("=")
                parsed[k.lower()] = v if v else "true"
            out[name] = parsed
        return out

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    kind: str
    tracker: Tracker
    jar: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "asgi":
            self.app = starlette_site(self.tracker)
        elif self.kind == "asgi-py":
            self.app = starlette_site(self.tracker, PurePythonMiddleware)
        else:
            self.app = flask_site(self.tracker)

    def get(self, path: str, **kw: Any) -> Result:
        return self.request("GET", path, **kw)

    def page(self, path: str = "/", **kw: Any) -> tuple[Result, dict[str, Any]]:
        result = self.get(path, **kw)
        return result, json.loads(result.body)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: bytes | str = b"",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        scheme: str = "http",
        host: str = "testserver",
        cookie: str | None = None,
        use_jar: bool = True,
        raw_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Result:
        if isinstance(query, str):
            query = query.encode()
        if "?" in path:
            path, _, q = path.partition("?")
            query = q.encode()
        hdrs = {"host": host, "user-agent": BROWSER_UA}
        hdrs.update({k.lower(): v for k, v in (headers or {}).items()})
        hdrs = {k: v for k, v in hdrs.items() if v is not None}
        if cookie is None and use_jar and self.jar:
            cookie = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        if cookie is not None:
            hdrs["cookie"] = cookie
        if self.kind != "wsgi":
            result = self._asgi(method, path, query, hdrs, body, scheme, raw_headers)
        else:
            result = self._wsgi(method, path, query, hdrs, body, scheme, raw_headers)
        if use_jar:
            for name, c in result.cookies.items():
                if c.get("max-age") == "0":
                    self.jar.pop(name, None)
                else:
                    self.jar[name] = c["value"]
        return result

    def _asgi(
        self,
        method: str,
        path: str,
        query: bytes,
        hdrs: dict[str, str],
        body: bytes,
        scheme: str,
        raw: list[tuple[bytes, bytes]] | None,
    ) -> Result:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": scheme,
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in hdrs.items()]
            + (raw or []),
            "client": ("203.0.113.9", 50000),
            "server": ("testserver", 80),
        }
        messages: list[dict[str, Any]] = []
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        asyncio.run(self.app(scope, receive, send))
        start = next(m for m in messages if m["type"] == "http.response.start")
        data = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
        return Result(start["status"], headers, data)

    def _wsgi(
        self,
        method: str,
        path: str,
        query: bytes,
        hdrs: dict[str, str],
        body: bytes,
        scheme: str,
        raw: list[tuple[bytes, bytes]] | None,
    ) -> Result:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path.encode("utf-8").decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "203.0.113.9",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if body:
            environ["CONTENT_LENGTH"] = str(len(body))
        for k, v in hdrs.items():
            if k == "content-type":
                environ["CONTENT_TYPE"] = v
            else:
                environ["HTTP_" + k.upper().replace("-", "_")] = v
        for k_raw, v_raw in raw or []:
            environ["HTTP_" + k_raw.decode("latin-1").upper().replace("-", "_")] = v_raw.decode(
                "latin-1"
            )
        captured: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            captured["status"] = status
            captured["headers"] = headers
            return lambda data: None

        app = wsgiref.validate.validator(self.app)
        iterable = app(environ, start_response)
        try:
            data = b"".join(iterable)
        finally:
            iterable.close()  # type: ignore[attr-defined]
        return Result(int(captured["status"][:3]), list(captured["headers"]), data)
