"""The bounded buffer between the request path and the store, and its writer thread.

The request path only calls ``Pipeline.add``: one ``deque.append`` (atomic under the
GIL, no lock). A daemon thread wakes every ``flush_interval`` seconds, or as soon as a
batch is full, turns raw hits into page views (User-Agent classification, query
stripping, the local day: all of it off the request path) and writes them to the store
in batches of ``batch_size``, one transaction each.

Nothing accepted is lost while the process lives:

- A batch the store refuses is kept whole and retried with exponential backoff
  (``retry_min`` … ``retry_max`` seconds), and written exactly once when the store is
  back (a store writes a batch atomically, or not at all). A store whose ``send``
  returns before the batch is written (Redis, SQLite, PostgreSQL) keeps it and retries it
  the same way.
- While the store is down, new hits wait in the buffer. Past ``buffer_size`` the oldest
  are dropped; the drops are counted (``Pipeline.dropped``) and logged once per
  ``flush_interval`` with the count.
- ``flush()`` writes everything now; ``close()`` flushes and stops the thread; an
  ``atexit`` hook closes every live pipeline (a gunicorn worker stopped by SIGTERM
  exits through it); the ASGI middleware flushes on lifespan shutdown.
- After ``os.fork()`` (gunicorn ``--preload``) the child starts its own thread and store
  connections; nothing opened in the parent is used in the child. A fork waits for a
  write under way to finish, so that no lock inside the store is held across it.

With a ``sink_factory`` (``writer="process"``), batches go, raw, to the sink it makes
(``trackmw.writer.ProcessSink``), which has a store's write half and normalizes and
writes them in a process of its own; the store still serves reads and erasures.

The largest loss on ``kill -9`` is what was buffered and not yet written: at most
``flush_interval`` seconds of events (plus what the store took and had not yet
committed: a batch in flight to Redis, or the batches SQLite and PostgreSQL hold to
write together, up to their ``group_events``, and PostgreSQL's group being written).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

from .errors import StoreError
from .events import ConsentChoice, Hit, PageView
from .normalize import normalize, normalize_batch

if TYPE_CHECKING:
    from .stores.base import Store

__all__ = ["Pipeline", "normalize"]

log = logging.getLogger("trackmw")


class Sink(Protocol):
    """What the writer sends batches to (``Pipeline.sink``): a ``Store``, or an object
    with a store's write half (``trackmw.writer.ProcessSink``), whose ``send`` says how
    many of the batch's events it kept (those it could not normalize are left out)."""

    def send(
        self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]
    ) -> int | None: ...
    def held(self) -> int: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...
    def after_fork(self) -> None: ...

_live: weakref.WeakSet[Pipeline] = weakref.WeakSet()

#: Events normalized in one stretch; after a stretch, once it has normalized for
#: ``_HOLD`` seconds, the writer offers the GIL to the request path. Without it, a
#: thread serving requests waits while a whole batch is normalized (about 1 ms for
#: 1,000 events in Python) unless CPython's switch interval (5 ms) runs out first: a
#: beacon served over the wire measured p99 4.5-5.1 ms with an offer after every
#: stretch, 6.7-7.9 ms without any. Offering it after every stretch cost two context
#: switches each time a request thread took it, for stretches the C loop
#: (``normalize_run``) takes in about 15 µs; in Python (no C speedups) a request now
#: waits up to about 0.6 ms for the writer's normalizing, where it waited 0.13 ms.
_STRETCH = 128
_HOLD = 0.0005


def _offer_gil() -> None:
    """Let a request thread waiting for the GIL take it (see ``_STRETCH``)."""
    time.sleep(0)


class _Lane:
    """What ``Pipeline.add`` reads on every hit, as slots: the pixel's C count
    (``trackmw._speedups``) reads them in place, where an instance's dict would cost it
    a lookup each. Pipeline's other attributes stay in its ``__dict__``."""

    __slots__ = ("_buffer", "_thread", "buffer_size", "batch_size")
    _buffer: deque[Hit | ConsentChoice]
    _thread: threading.Thread | None
    buffer_size: int
    batch_size: int


class Pipeline(_Lane):
    """Buffer and background writer for one store.

    ``store_factory`` opens the store (on first use); ``sink_factory``, if given, makes
    what the writer sends batches to instead (raw: the sink normalizes them).
    """

    retry_min = 0.5
    retry_max = 30.0

    def __init__(
        self,
        store_factory: Callable[[], Store],
        *,
        buffer_size: int = 100_000,
        batch_size: int = 1_000,
        flush_interval: float = 1.0,
        timezone: str = "UTC",
        sink_factory: Callable[[], Sink] | None = None,
    ) -> None:
        self._store_factory = store_factory
        self._store: Store | None = None
        # Where batches are written, when not to the store itself (``writer="process"``:
        # ``trackmw.writer.ProcessSink``, which takes raw hits).
        self._sink_factory = sink_factory
        self._sink: Sink | None = None
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.tz = ZoneInfo(timezone)
        self._buffer = deque()
        self._pending: tuple[list[PageView], list[ConsentChoice]] | None = None
        self._sent = 0  # events the store took and holds, not yet written (``Store.held``)
        self._lock = threading.RLock()  # one drain at a time (writer thread, flush, erase)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._failing_since: float | None = None
        self._backoff = 0.0
        self.dropped = 0
        self._dropped_logged = 0
        self._last_drop_log: float | None = None
        self.written = 0
        _live.add(self)

    # -- request path -----------------------------------------------------------------

    def add(self, item: Hit | ConsentChoice) -> None:
        """Queue one hit or consent choice. Never blocks, never raises."""
        buf = self._buffer
        buf.append(item)
        n = len(buf)
        if n > self.buffer_size:  # the store is behind or down: drop the oldest
            try:
                buf.popleft()
                self.dropped += 1
            except IndexError:
                pass
        elif n % self.batch_size == 0:
            # Once per batch_size events, not on every event past it: a wake-up takes
            # the GIL from the request path (see ``_run``).
            self._wake.set()
        if self._thread is None:
            self._start()

    def __len__(self) -> int:
        """Events waiting: buffered, a batch waiting for the store to come back, and
        those the store took but has not confirmed."""
        pending = self._pending
        waiting = len(pending[0]) + len(pending[1]) if pending else 0
        return len(self._buffer) + waiting + self._sent

    # -- store access -----------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store: what reports, visitors' data and erasures read and change."""
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    @property
    def sink(self) -> Sink:
        """Where batches are written: the store, or what stands in for it."""
        if self._sink_factory is None:
            return self.store
        if self._sink is None:
            self._sink = self._sink_factory()
        return self._sink

    def _opened(self) -> list[Sink]:
        """The sink and the store, those opened (each once)."""
        return [x for x in (self._sink, self._store) if x is not None]

    # -- the writer ---------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="trackmw-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Whole batches as soon as they are full; everything every ``flush_interval``.

        Writing the remainder each time the writer wakes would chase the buffer: under
        load, a batch's write lets a few dozen events in, the next write takes just
        those, and so on: many small transactions, each one's Python work competing
        with the request path for the GIL (measured with the beacon served at 14k
        requests a second over the wire: batches of 108 events on average).
        """
        due = time.monotonic() + self.flush_interval  # when the remainder is next written
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if time.monotonic() >= due:
                    self._drain(whole=False)
                # Woken early by a full batch: the remainder keeps its time, and a retry
                # waits for its backoff.
                elif self._failing_since is not None or self._drain(whole=True):
                    continue
            except Exception:  # a bug here must not stop the writing for good
                log.exception("trackmw: the writer failed; retrying in %.1fs", self.flush_interval)
            due = time.monotonic() + (self._backoff or self.flush_interval)

    def drain(self) -> bool:
        """Write everything buffered now. ``False`` if the store failed (kept for retry)."""
        return self._drain(whole=False)

    def _drain(self, whole: bool) -> bool:
        """Write what is buffered now (only whole batches if ``whole``); ``False`` if the
        store failed.

        Events that arrive meanwhile wait for the next round: taking them too would
        chase the buffer, a few dozen events per transaction under load.
        """
        with self._lock:
            self._log_drops()
            left = len(self._buffer)
            try:
                while True:
                    batch = self._pending
                    if batch is None:
                        size = min(self.batch_size, left)
                        if size <= 0 or (whole and size < self.batch_size):
                            break
                        left -= size
                        batch = self._take(size)
                        if batch is None:
                            break
                        self._pending = batch
                    kept = self.sink.send(*batch)  # less erased visitors' events (Store.send)
                    self._count(len(batch[0]) + len(batch[1]) if kept is None else kept)
                    self._pending = None  # the store's now, until written
                self._sync()
            except Exception as exc:  # the store's errors must never escape the thread
                self._failed(exc)
                return False
            if self._failing_since is not None:
                log.warning(
                    "trackmw: store %r is back after %.1fs; buffered events written",
                    self.store,
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
                self._backoff = 0.0
            return True

    def _sync(self) -> None:
        """Wait until the store has written every batch it took (``Store.sync``)."""
        self.sink.sync()
        self._count(0)

    def _count(self, taken: int) -> None:
        """The store took ``taken`` more events: count those it has written."""
        held = self.sink.held()
        self.written += self._sent + taken - held
        self._sent = held

    def _take(self, size: int) -> tuple[list[PageView], list[ConsentChoice]] | None:
        """The next ``size`` buffered events (fewer if the buffer runs out), normalized."""
        buf = self._buffer
        if not buf:
            return None
        pageviews: list[PageView] = []
        consents: list[ConsentChoice] = []
        popleft = buf.popleft
        clock = time.perf_counter
        since = clock()
        while size > 0:
            chunk = []
            try:
                for _ in range(min(size, _STRETCH)):
                    chunk.append(popleft())
            except IndexError:  # the request path dropped the oldest meanwhile
                size = len(chunk)
            if self._sink_factory is None:
                normalize_batch(chunk, self.tz, pageviews, consents, _unreadable)
            else:  # a sink normalizes what it takes (ProcessSink, in its process)
                for item in chunk:
                    (pageviews if type(item) is Hit else consents).append(item)  # type: ignore[arg-type]
            size -= len(chunk)
            if size > 0 and clock() - since > _HOLD:
                _offer_gil()
                since = clock()
        return pageviews, consents

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        first = self._failing_since is None
        if first:
            self._failing_since = now
        self._backoff = min(self.retry_max, max(self.retry_min, self._backoff * 2))
        if first or self._backoff >= self.retry_max:
            kind = "store error" if isinstance(exc, StoreError) else type(exc).__name__
            # Not ``self.sink``: when opening it is what failed, that raises again.
            opened = self._sink if self._sink_factory is not None else self._store
            store = "the store" if opened is None else repr(opened)
            log.error(
                "trackmw: %s writing to %s: %s; %d events kept, retrying in %.1fs",
                kind,
                store,
                exc,
                len(self),
                self._backoff,
            )

    def _log_drops(self) -> None:
        dropped = self.dropped
        now = time.monotonic()
        last = self._last_drop_log
        if dropped != self._dropped_logged and (last is None or now - last >= self.flush_interval):
            log.error(
                "trackmw: buffer full (%d events): dropped the %d oldest since last report",
                self.buffer_size,
                dropped - self._dropped_logged,
            )
            self._dropped_logged = dropped
            self._last_drop_log = now

    # -- control --------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write everything buffered now, in the caller's thread."""
        return self.drain()

    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        """Remove a visitor's events from the store and the buffer.

        The store goes first: if it fails (``StoreError``), nothing is changed, the
        buffer included. Holding the drain lock means no batch taken before the erasure
        can be written after it, so erased data cannot come back. The buffer is
        filtered in place (requests keep appending to it meanwhile).
        """

        def keep(item: Hit | ConsentChoice | PageView) -> bool:
            if item.visitor_id == visitor_id:
                return False
            return not (user_id and isinstance(item, Hit | PageView) and item.user_id == user_id)

        with self._lock:
            self._sync()  # a batch the store still holds is written, then erased
            removed = self.store.erase(visitor_id, user_id)
            buf = self._buffer
            for _ in range(len(buf)):  # exactly the items present now, oldest first
                try:
                    item = buf.popleft()
                except IndexError:
                    break
                if keep(item):
                    buf.append(item)
                else:
                    removed += 1
            if self._pending:
                pv, cc = self._pending
                pv2 = [p for p in pv if keep(p)]
                cc2 = [c for c in cc if keep(c)]
                removed += len(pv) - len(pv2) + len(cc) - len(cc2)
                self._pending = (pv2, cc2)
            return removed

    def close(self, timeout: float = 10.0) -> bool:
        """Flush, stop the writer thread and close the store. Safe to call twice."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        ok = True
        try:
            ok = self.drain()
        finally:
            # Under the lock, as a drain: an erasure or a report meanwhile waits (a
            # writer process's requests must not interleave with its closing).
            with self._lock:
                opened = self._opened()
                for each in opened:
                    try:
                        each.close()  # a store still holding batches tries them once more
                    except Exception:
                        log.exception("trackmw: closing %r failed", each)
                if opened:
                    self._count(0)  # what the closing wrote
            ok = ok or not len(self)  # the store's close may have written what it held
            if not ok:
                log.error("trackmw: %d events could not be written at close", len(self))
        return ok

    def after_fork(self) -> None:
        """In a forked child: a new lock and thread, no inherited connections or events.

        Events buffered before the fork stay the parent's to write; keeping a copy here
        would write them twice.
        """
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._buffer = deque()
        self._pending = None
        self._sent = 0
        for opened in self._opened():
            opened.after_fork()


def _unreadable(hit: Hit, exc: Exception) -> None:
    """A hit we cannot make sense of is logged, not fatal."""
    log.error("trackmw: dropped a page view that could not be normalized", exc_info=exc)


def _close_all() -> None:
    for pipeline in list(_live):
        try:
            pipeline.close()
        except Exception:
            log.exception("trackmw: flushing at exit failed")


#: How long a fork waits for a pipeline's write under way (``_before_fork``).
_FORK_WAIT = 5.0
_held_for_fork: list[threading.RLock] = []


def _before_fork() -> None:
    """Let no pipeline be writing when the process forks.

    A writer thread inside the store at the fork (inside SQLite, which keeps locks of
    its own per process) could leave the child a lock that no thread there will ever
    release: the child's first connection to the file would wait forever. So a fork
    waits for a write under way, ``_FORK_WAIT`` seconds at most, and the parent goes on
    once the child exists. (Forks are serialized by CPython, and a lock this thread
    already holds is taken again at once.)
    """
    for pipeline in list(_live):
        lock = pipeline._lock
        if lock.acquire(timeout=_FORK_WAIT):
            _held_for_fork.append(lock)
        else:
            log.warning("trackmw: forking while a write to %r is under way", pipeline._store)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def _after_fork_in_child() -> None:
    _held_for_fork.clear()  # the child's pipelines get new locks
    for pipeline in list(_live):
        pipeline.after_fork()


atexit.register(_close_all)
os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
