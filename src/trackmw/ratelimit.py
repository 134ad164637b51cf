"""A per-visitor rate limit for the pixel, in this process's memory.

Fixed one-minute windows: each key (the visitor id, or a hash of client IP and
User-Agent when there is no visitor) may be counted ``limit`` times a minute; past that
the pixel still answers (the GIF, or 429 when configured) but records nothing. Other
keys are never affected. Memory is bounded: the table is dropped at each new minute and
never holds more than ``max_keys`` entries (past that, unseen keys are not limited
rather than evicting others). Each worker process limits on its own, so a visitor
spread over N workers is limited at N times the setting at most.
"""

from __future__ import annotations

import hashlib
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Counts hits per key per minute.

    >>> limiter = RateLimiter(2)
    >>> [limiter.allow("v", now=0) for _ in range(3)]
    [True, True, False]

    Its attributes are slots: the pixel's C count (``trackmw._speedups``) reads them in
    place, and leaves a subclass or a patched ``allow`` to ``allow``.
    """

    __slots__ = ("limit", "max_keys", "_since", "_until", "_counts")

    def __init__(self, limit: int, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._since = self._until = 0.0  # the current minute: [since, until)
        self._counts: dict[str, int] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        """Count one hit for ``key``; ``False`` once it is over the limit this minute."""
        if self.limit <= 0:
            return True
        if now is None:
            now = time.time()
        if not self._since <= now < self._until:  # a new minute (or the clock went back)
            self._since = now // 60 * 60
            self._until = self._since + 60
            self._counts = {}
        counts = self._counts
        n = counts.get(key, 0)
        if n == 0 and len(counts) >= self.max_keys:
            return True
        counts[key] = n + 1
        return n < self.limit

    @staticmethod
    def anonymous_key(ip: str | None, user_agent: str) -> str:
        """A key for a visitor without an id: a hash, so no raw IP is kept even here."""
        return hashlib.blake2b(f"{ip}|{user_agent}".encode(), digest_size=12).hexdigest()
