"""A modest load generator: a few threads sending pixel hits over keep-alive connections.

It counts the 200 responses the clients actually received: that is what a server must
have recorded. Every thread stops at its first refused connection once ``stopping`` is
set (the server is going away), or when ``limit`` hits have been answered in all.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.hardening.servers import CHROME


@dataclass
class Load:
    """Counts shared by the client threads."""

    port: int
    threads: int = 4
    limit: int | None = None
    path: Callable[[int, int], str] = lambda thread, n: f"/_trackmw/pixel.gif?p=/load/{n % 7}"
    headers: Callable[[int, int], dict[str, str]] = lambda thread, n: {}
    answered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def join(self, timeout: float = 120) -> None:
        for worker in self._workers:
            worker.join(timeout)
        assert not any(w.is_alive() for w in self._workers), "load threads did not stop"

    def wait_for(self, answered: int, timeout: float = 120) -> None:
        """Block until ``answered`` hits have been answered (or the load ended)."""
        import time

        deadline = time.monotonic() + timeout
        while self.answered < answered and not self.done.is_set():
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.answered} hits answered in {timeout}s")
            time.sleep(0.02)

    def _take(self) -> int | None:
        with self._lock:
            if self.limit is not None and self._sent >= self.limit:
                return None
            self._sent += 1
            return self._sent

    def _count(self, status: int) -> None:
        with self._lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.answered += 1

    def _run(self, thread: int) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while True:
                n = self._take()
                if n is None:
                    break
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                try:
                    headers = {"User-Agent": CHROME, **self.headers(thread, n)}
                    conn.request("GET", self.path(thread, n), headers=headers)
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = None
                    with self._lock:
                        self._sent -= 1  # not answered: may be retried
                    if self.stopping.is_set():
                        break
                    continue
                self._count(response.status)
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
            if all(not w.is_alive() or w is threading.current_thread() for w in self._workers):
                self.done.set()
