"""Who may read the counts: the dashboard token, the ``authorize`` setting, the session.

Rules, checked in this order (the first that says yes wins):

| credential                                  | stats API | dashboard |
|---------------------------------------------|-----------|-----------|
| ``Authorization: Bearer <dashboard_token>`` | yes       | yes       |
| ``authorize(request)`` returns true         | yes       | yes       |
| a valid ``trackmw_dash`` session cookie     | no        | yes       |

Tokens are compared with ``hmac.compare_digest`` (constant time). The session cookie
is signed with the tracker's keys under its own salt (``trackmw.dashboard``), holds a
fingerprint of the token (changing the token ends every session), is ``HttpOnly``,
``SameSite=Strict``, scoped to the dashboard's path, and lasts ``SESSION_SECONDS``.
The API never accepts the cookie: a program sends the token, and a cookie that a
browser attaches by itself can then never unlock JSON for another site's script.
Login attempts are limited per client address (kept in memory only, hashed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..cookies import parse_cookies, set_cookie_header
from ..signing import CookieSigner

if TYPE_CHECKING:
    from ..core import Core
    from ..messages import Request

__all__ = ["COOKIE", "SESSION_SECONDS", "Guard", "LoginLimiter"]

log = logging.getLogger("trackmw")

COOKIE = "trackmw_dash"
SALT = "trackmw.dashboard"
SESSION_SECONDS = 8 * 3600


class LoginLimiter:
    """At most ``attempts`` login attempts per client per ``window`` seconds."""

    def __init__(self, attempts: int = 10, window: float = 60.0, max_clients: int = 10_000) -> None:
        self.attempts = attempts
        self.window = window
        self.max_clients = max_clients
        self._seen: dict[bytes, deque[float]] = {}
        self._lock = threading.Lock()
        self._salt = secrets.token_bytes(16)  # addresses are hashed, never kept as given

    def allow(self, client: str, now: float | None = None) -> float:
        """Record an attempt; 0 if allowed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        key = hashlib.blake2b(client.encode(), key=self._salt, digest_size=16).digest()
        with self._lock:
            if len(self._seen) >= self.max_clients:
                self._forget_idle(now)
            times = self._seen.setdefault(key, deque())
            while times and now - times[0] >= self.window:
                times.popleft()
            if len(times) >= self.attempts:
                return max(1.0, self.window - (now - times[0]))
            times.append(now)
            return 0.0

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, t in self._seen.items() if not t or now - t[-1] >= self.window]
        for k in idle:
            del self._seen[k]
        if len(self._seen) >= self.max_clients:  # still full: start afresh rather than grow
            self._seen.clear()


class Guard:
    """Checks credentials for one tracker's stats API and dashboard."""

    def __init__(self, core: Core) -> None:
        settings = core.settings
        self.core = core
        self.token = settings.dashboard_token
        self.authorize = settings.authorize
        self.signer = CookieSigner(settings.secret_keys, SALT, SESSION_SECONDS)
        self.cookie_path = settings.prefix + "/dashboard"
        self.limiter = LoginLimiter()

    @property
    def enabled(self) -> bool:
        """Is the feature on (a token or an ``authorize`` callable configured)?"""
        return self.token is not None or self.authorize is not None

    def token_ok(self, given: str) -> bool:
        """Is ``given`` the dashboard token? Constant time."""
        if self.token is None:
            return False
        # "surrogatepass": a lone surrogate (a JSON escape) is a wrong token, not an error.
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self.token.encode())

    def bearer_ok(self, req: Request) -> bool:
        scheme, _, value = req.headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def authorized(self, req: Request) -> bool:
        """Token in the header, or the site's own ``authorize`` says yes."""
        if self.bearer_ok(req):
            return True
        if self.authorize is None:
            return False
        native: Any = req.native
        if callable(native) and not hasattr(native, "method"):
            native = native()  # a function making the framework request
        try:
            return bool(self.authorize(native))
        except Exception:
            log.exception("trackmw: the authorize setting raised; access refused")
            return False

    # -- the session cookie -------------------------------------------------------------

    def _fingerprint(self) -> str:
        token = self.token or ""
        return hashlib.sha256(("trackmw.dashboard:" + token).encode()).hexdigest()[:32]

    def session_ok(self, req: Request) -> bool:
        if self.token is None:
            return False
        for value in parse_cookies(req.headers.get("cookie")).get(COOKIE, ()):
            signed = self.signer.loads(value, req.now or None)
            payload = signed.payload if signed is not None else None
            if isinstance(payload, dict) and isinstance(payload.get("t"), str):
                if hmac.compare_digest(payload["t"], self._fingerprint()):
                    return True
        return False

    def session_cookie(self, secure: bool) -> str:
        value = self.signer.dumps({"t": self._fingerprint()})
        return self._cookie(value, SESSION_SECONDS, secure)

    def clear_cookie(self, secure: bool) -> str:
        return self._cookie("", 0, secure)

    def _cookie(self, value: str, max_age: int, secure: bool) -> str:
        return set_cookie_header(
            COOKIE,
            value,
            max_age=max_age,
            domain=None,
            secure=secure,
            httponly=True,
            samesite="Strict",
            path=self.cookie_path,
        )

    def client_key(self, req: Request) -> str:
        """The address login attempts are counted by (the proxy's view when trusted)."""
        return self.core.client_ip(req) or "unknown"
