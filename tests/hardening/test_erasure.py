"""Erasure is final: from the store, from the buffer, from a batch waiting for a retry,
and against the writer thread racing it. Other visitors' events are never lost to it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.core.harness import BROWSER_UA, Client
from tests.hardening.flaky import FlakyStore
from trackmw import Tracker
from trackmw.errors import StoreError
from trackmw.events import Hit

A = "visitor-a-0123456789abcdef"
B = "visitor-b-0123456789abcdef"


def hit(visitor_id: str | None, page: str = "/p", user_id: str | None = None) -> Hit:
    return Hit(time.time(), visitor_id, user_id, page, None, None, BROWSER_UA, "testserver")


def flaky(make_tracker: Callable[..., Tracker], **settings: object) -> tuple[Tracker, object]:
    name = uuid.uuid4().hex
    tracker = make_tracker(store=f"flaky://{name}", **settings)
    return tracker, FlakyStore.switches(name)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_erase_removes_stored_and_buffered_events(
    make_tracker: Callable[..., Tracker], tmp_path: Path, store: str
) -> None:
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 't.db'}"
    tracker = make_tracker(store=url, flush_interval=3600)
    for _ in range(5):
        tracker.pipeline.add(hit(A))
        tracker.pipeline.add(hit(B))
    tracker.flush()
    for _ in range(3):  # buffered, not yet written
        tracker.pipeline.add(hit(A))
        tracker.pipeline.add(hit(B))
    assert tracker.erase(A) == 8
    assert tracker.visitor_data(A)["pageviews"] == []
    assert len(tracker.visitor_data(B)["pageviews"]) == 8
    assert tracker.stats().pageviews == 8


def test_erase_removes_a_batch_waiting_for_the_store(make_tracker: Callable[..., Tracker]) -> None:
    tracker, switch = flaky(make_tracker, flush_interval=3600)
    for _ in range(4):
        tracker.pipeline.add(hit(A))
        tracker.pipeline.add(hit(B))
    switch.writes_down = True  # type: ignore[attr-defined]
    assert tracker.flush() is False  # the batch is now pending, kept for a retry
    assert len(tracker.pipeline) == 8
    assert tracker.erase(A) == 4
    switch.writes_down = False  # type: ignore[attr-defined]
    assert tracker.flush() is True
    assert tracker.visitor_data(A)["pageviews"] == []
    assert tracker.stats().pageviews == 4


def test_a_failed_erasure_changes_nothing(make_tracker: Callable[..., Tracker]) -> None:
    """The endpoint answers 503 "nothing was erased": that must be true, buffer included."""
    tracker, switch = flaky(make_tracker, flush_interval=3600)
    tracker.pipeline.add(hit(A))
    tracker.flush()
    tracker.pipeline.add(hit(A))
    switch.down = True  # type: ignore[attr-defined]
    with pytest.raises(StoreError):
        tracker.erase(A)
    switch.down = False  # type: ignore[attr-defined]
    assert len(tracker.visitor_data(A)["pageviews"]) == 2
    assert tracker.erase(A) == 2


def test_erasure_through_the_endpoint_when_the_store_is_down_is_a_503(
    kind: str, make_tracker: Callable[..., Tracker]
) -> None:
    tracker, switch = flaky(make_tracker, flush_interval=3600)
    client = Client(kind, tracker)
    client.get("/")
    assert client.get("/_trackmw/pixel.gif?p=/x").status == 200
    switch.down = True  # type: ignore[attr-defined]
    result = client.request("POST", "/_trackmw/me/delete")
    assert result.status == 503
    assert "trackmw_id" in client.jar  # nothing erased, so the cookie is kept
    switch.down = False  # type: ignore[attr-defined]
    result = client.request("POST", "/_trackmw/me/delete")
    assert result.status == 200 and result.json == {"erased": 1}
    assert "trackmw_id" not in client.jar


def test_an_event_buffered_before_the_erasure_never_comes_back(
    make_tracker: Callable[..., Tracker],
) -> None:
    """Race the writer thread: it drains every 10 ms while visitors are erased."""
    tracker = make_tracker(flush_interval=0.01, batch_size=7)
    pipeline = tracker.pipeline
    others = 0
    for i in range(300):
        victim = f"victim-{i:04d}-0123456789abcdef"
        for n in range(i % 9 + 1):
            pipeline.add(hit(victim, f"/v/{n}"))
            pipeline.add(hit(B))
            others += 1
        if i % 3 == 0:
            time.sleep(0.002)  # let the writer take a batch mid-way
        tracker.erase(victim)
        assert tracker.visitor_data(victim)["pageviews"] == [], i
    tracker.flush()
    report = tracker.stats()
    assert report.pageviews == others
    assert report.visitors == 1


def test_erasure_racing_many_requests_loses_no_one_elses_events(
    make_tracker: Callable[..., Tracker],
) -> None:
    """Requests append without a lock while an erasure filters the buffer."""
    tracker = make_tracker(flush_interval=3600, batch_size=10**6, buffer_size=10**6)
    pipeline = tracker.pipeline
    total = 200_000
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:
        for _ in range(total):
            pipeline.add(hit(B))
        stop.set()

    thread = threading.Thread(target=traffic)
    thread.start()
    erasures = 0
    while not stop.is_set():
        try:
            tracker.erase(A)
            erasures += 1
        except Exception as exc:  # e.g. "deque mutated during iteration"
            errors.append(exc)
    thread.join()
    assert erasures > 0
    assert errors == []
    tracker.flush()
    assert tracker.stats().pageviews == total


def test_an_erasure_reaches_events_buffered_in_another_process(
    make_tracker: Callable[..., Tracker], tmp_path: Path
) -> None:
    """Two workers on one SQLite file: a hit buffered in worker A, then the erasure
    answered by worker B. When A's writer runs, the erased visitor must not come back
    (the store has to refuse events of an erased visitor, e.g. by a tombstone)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    worker_a = make_tracker(store=url, flush_interval=3600)
    worker_b = make_tracker(store=url, flush_interval=3600)
    worker_a.pipeline.add(hit(A))
    worker_a.flush()
    worker_a.pipeline.add(hit(A, "/buffered-before-the-erasure"))
    worker_a.pipeline.add(hit(B))
    assert worker_b.erase(A) >= 1
    worker_a.flush()
    assert worker_b.visitor_data(A)["pageviews"] == []
    assert worker_b.stats().pageviews == 1
