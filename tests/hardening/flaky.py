"""``flaky://name``: the memory store, with switches that make it fail (for fault tests only).

``FlakyStore.switches(name)`` returns the switches shared by every store of that name:
``down`` refuses everything (as a stopped server would), ``writes_down`` refuses only
writes (as a full disk would, while deletes still work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar

from trackmw.errors import StoreError
from trackmw.events import ConsentChoice, PageView
from trackmw.report import Report
from trackmw.stores.base import register
from trackmw.stores.memory import MemoryStore

__all__ = ["FlakyStore", "Switches"]


@dataclass
class Switches:
    """What is failing right now."""

    down: bool = False
    writes_down: bool = False
    writes: int = 0  # batches written


class FlakyStore(MemoryStore):
    """A ``MemoryStore`` that raises ``StoreError`` while its switches say so."""

    schemes = ("flaky",)
    _switches: ClassVar[dict[str, Switches]] = {}

    def __init__(self, url: str, settings: Any = None) -> None:
        super().__init__("memory://flaky-" + url.split("://", 1)[1], settings)
        self.switch = self.switches(url.split("://", 1)[1])

    @classmethod
    def switches(cls, name: str) -> Switches:
        return cls._switches.setdefault(name, Switches())

    def _check(self, writing: bool = False) -> None:
        if self.switch.down or (writing and self.switch.writes_down):
            raise StoreError("flaky store is down")

    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        self._check(writing=True)
        super().write(pageviews, consents)
        self.switch.writes += 1

    def report(self, since: date, until: date) -> Report:
        self._check()
        return super().report(since, until)

    def visitor_data(self, visitor_id: str) -> dict[str, Any]:
        self._check()
        return super().visitor_data(visitor_id)

    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        self._check()
        return super().erase(visitor_id, user_id)

    def all_pageviews(self) -> list[PageView]:
        """Every stored page view (read even while down: the test's own view)."""
        with self._lock:
            return list(self._pageviews)


register("flaky", "tests.hardening.flaky:FlakyStore")
