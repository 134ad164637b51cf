"""``memory://``: a store in this process's memory, for tests and trying things out.

Reports are computed by ``build_report``, the reference every other store must match.
Each ``memory://name`` URL is a separate store; the same name in one process shares
data between ``Tracker`` instances (handy for tests); plain ``memory://`` is private.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from datetime import UTC, date
from typing import Any

from ..events import ConsentChoice, PageView
from ..report import Report, build_report
from .base import Store, purge_horizon, tombstone_keys

__all__ = ["MemoryStore"]

_SHARED: dict[str, tuple[list[PageView], list[ConsentChoice], dict[str, float]]] = {}


class MemoryStore(Store):
    """Keeps everything in two lists, guarded by a lock."""

    schemes = ("memory",)

    @classmethod
    def in_process(cls, url: str) -> bool:
        return True

    def __init__(self, url: str, settings: Any = None) -> None:
        super().__init__(url, settings)
        name = url.split("://", 1)[1]
        if name:
            self._pageviews, self._consents, self._erased = _SHARED.setdefault(name, ([], [], {}))
        else:
            self._pageviews, self._consents, self._erased = [], [], {}
        self._lock = threading.Lock()

    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        with self._lock:
            self._pageviews.extend(pageviews)
            self._consents.extend(consents)

    def report(self, since: date, until: date) -> Report:
        with self._lock:
            pageviews, consents = list(self._pageviews), list(self._consents)
        return build_report(pageviews, consents, since, until)

    def visitor_data(self, visitor_id: str) -> dict[str, Any]:
        with self._lock:
            mine = [pv for pv in self._pageviews if pv.visitor_id == visitor_id]
            choices = [c for c in self._consents if c.visitor_id == visitor_id]
        return visitor_document(mine, choices)

    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        def gone(visitor: str | None, user: str | None) -> bool:
            return visitor == visitor_id or (user_id is not None and user == user_id)

        with self._lock:
            now = time.time()
            for key in tombstone_keys(visitor_id, user_id):
                self._erased[key] = now
            before = len(self._pageviews) + len(self._consents)
            self._pageviews[:] = [
                pv for pv in self._pageviews if not gone(pv.visitor_id, pv.user_id)
            ]
            self._consents[:] = [c for c in self._consents if c.visitor_id != visitor_id]
            return before - len(self._pageviews) - len(self._consents)

    def erasures(self, keys: Collection[str]) -> dict[str, float]:
        with self._lock:
            return {k: self._erased[k] for k in keys if k in self._erased}

    def purge(self, before: date) -> int:
        cut = before.isoformat()
        with self._lock:
            n = len(self._pageviews) + len(self._consents)
            self._pageviews[:] = [pv for pv in self._pageviews if pv.day >= cut]
            self._consents[:] = [c for c in self._consents if c.day >= cut]
            horizon = purge_horizon(before)
            for key in [k for k, at in self._erased.items() if at < horizon]:
                del self._erased[key]
            return n - len(self._pageviews) - len(self._consents)


def visitor_document(
    pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]
) -> dict[str, Any]:
    """The ``visitor_data`` document from a visitor's rows (shared by the stores)."""
    from datetime import datetime

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

    pvs = sorted(pageviews, key=lambda pv: pv.ts)
    users = sorted({pv.user_id for pv in pvs if pv.user_id})
    return {
        "pageviews": [{"time": iso(pv.ts), "page": pv.path} for pv in pvs],
        "consents": [
            {
                "time": iso(c.ts),
                "analytics": c.analytics,
                "preferences": c.preferences,
                "policy_version": c.policy_version,
            }
            for c in sorted(consents, key=lambda c: c.ts)
        ],
        "user_ids": users,
    }
