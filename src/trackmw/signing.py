"""Signed cookie values, with itsdangerous.

One serializer per cookie kind, each with its own salt (``trackmw.visitor``,
``trackmw.consent``, ``trackmw.prefs``, ``trackmw.dashboard``), so no cookie can be
replayed as another. Keys are given newest first (the ``secret_keys`` setting);
itsdangerous wants them oldest first and signs with the last, so the list is reversed
here and nowhere else. A value signed with an older key still loads, and says so, so
the caller can re-issue it under the newest key.

Loading is the costly part of a returning visitor's request (an HMAC and a JSON
decode), so verified values are cached by their exact text: the same cookie is
verified once per process, and only its age is checked again.
"""

from __future__ import annotations

import time
from typing import Any

from itsdangerous import BadData, URLSafeTimedSerializer

__all__ = ["CookieSigner", "SignedValue"]

#: Cookies longer than this are not even looked at: no real trackmw cookie comes close.
MAX_COOKIE_VALUE = 3072
_CACHE_SIZE = 10_000


class SignedValue:
    """A verified payload, when it was signed, and whether it needs re-signing."""

    __slots__ = ("payload", "signed_at", "stale_key")

    def __init__(self, payload: Any, signed_at: float, stale_key: bool) -> None:
        self.payload = payload
        self.signed_at = signed_at
        self.stale_key = stale_key


class CookieSigner:
    """Signs and verifies one kind of cookie.

    >>> s = CookieSigner(["n" * 16, "o" * 16], salt="trackmw.visitor", max_age=60)
    >>> s.loads(s.dumps(["abc"])).payload
    ['abc']
    """

    def __init__(self, secret_keys: list[str] | tuple[str, ...], salt: str, max_age: int) -> None:
        oldest_first = list(reversed(secret_keys))
        self._all = URLSafeTimedSerializer(oldest_first, salt=salt)
        self._newest = URLSafeTimedSerializer(oldest_first[-1], salt=salt)
        self.max_age = max_age
        self._cache: dict[str, SignedValue] = {}

    def dumps(self, payload: Any) -> str:
        """Sign ``payload`` with the newest key; the result is cookie-safe text."""
        return self._newest.dumps(payload)

    def loads(self, value: str, now: float | None = None) -> SignedValue | None:
        """The verified value, or ``None`` if tampered, expired, future-dated or garbled."""
        hit = self._cache.get(value)
        if hit is None:
            if len(value) > MAX_COOKIE_VALUE:
                return None
            hit = self._verify(value)
            if hit is None:
                return None
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[value] = hit
        age = (time.time() if now is None else now) - hit.signed_at
        if age > self.max_age or age < -60:
            return None
        return hit

    def _verify(self, value: str) -> SignedValue | None:
        try:
            payload, ts = self._newest.loads(value, return_timestamp=True)
            stale = False
        except BadData:
            try:
                payload, ts = self._all.loads(value, return_timestamp=True)
            except BadData:
                return None
            except Exception:  # garbage that itsdangerous' decoders trip over
                return None
            stale = True
        except Exception:
            return None
        return SignedValue(payload, ts.timestamp(), stale)
