"""Shared fixtures: a fresh tracker per test, and the service requirement switch."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from trackmw import Tracker

SECRET = "test-secret-key-0123456789"
OLD_SECRET = "old-secret-key-9876543210"

#: With TRACKMW_REQUIRE_SERVICES=1 (CI), a test whose server is missing fails instead of skipping.
REQUIRE_SERVICES = os.environ.get("TRACKMW_REQUIRE_SERVICES") == "1"


def need_service(available: bool, reason: str) -> None:
    """Skip (or, when services are required, fail) a test whose server is missing."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"TRACKMW_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = 30.0, poll: float = 0.01
) -> None:
    """Poll ``check`` until it is true; fail the test with ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(poll)


def alive(pid: int) -> bool:
    """Is process ``pid`` running (or a zombie not yet reaped)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def writer_processes(ancestor: int) -> set[int]:
    """The writer processes (``writer="process"``) that ``ancestor`` (a pid) or its
    descendants started, from ``/proc`` (Linux)."""
    parents: dict[int, int] = {}
    writers = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if b"trackmw.writer" in fh.read():
                    writers.add(int(entry))
        except (OSError, ValueError):  # gone meanwhile
            continue

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == ancestor:
                return True
        return False

    return {pid for pid in writers if descends(pid)}


@pytest.fixture
def make_tracker() -> Iterator[object]:
    """``make_tracker(**settings)``: a tracker (``memory://`` by default), closed after."""
    made: list[Tracker] = []

    def make(**settings: object) -> Tracker:
        settings.setdefault("secret_keys", [SECRET])
        settings.setdefault("store", "memory://")
        tracker = Tracker(**settings)  # type: ignore[arg-type]
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.close()
