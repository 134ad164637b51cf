"""The writer in a process of its own (``writer="process"``).

By default the pipeline's writer is a thread of the server's process: it normalizes the
buffered hits and writes them to the store, holding the GIL for most of that, and each
time it takes the GIL back (after each SQLite step, each network read) the thread
serving requests waits for it. Over the wire that is most of what recording costs the
beacon (README, "Performance"). With ``writer="process"`` that thread only ships the
raw hits, marshalled, to a child process (``ProcessSink``); the child normalizes them
and writes them to the store with a GIL of its own. The request path is the same.

The child is ``python -c 'from trackmw.writer import main; main()'``, started on the
first batch and spoken to over its stdin and stdout: frames of a kind byte, a length and
a ``marshal`` payload (plain tuples of strings and numbers; nothing is unpickled). Each
request gets one reply: ``(True, events the store holds, logs)`` or ``(False, the
error, logs)``, the logs being the child's ``trackmw`` log records, which the parent
logs again through its own ``trackmw`` logger.

Nothing accepted is lost:

- A batch is the child's once its ``SEND`` is answered; a failure there leaves it with
  the pipeline, which retries it as it retries a store's (``Store.send``).
- Until a ``SYNC`` says the store has written everything, the sink keeps what it sent. If
  the child dies, the next call starts a new one and sends those batches again first.
  (A batch the child had written just before it died is then written twice: at least
  once, where a store's own failure has each batch written exactly once.)
- If the parent dies, even by ``kill -9``, the child reads the end of its stdin, writes
  what its store holds, and exits. It ignores SIGINT and SIGTERM, which a terminal or a
  service manager sends to the whole process group: the parent's shutdown, which
  flushes through it, closes it.
- After ``os.fork()`` (gunicorn ``--preload``), the forked process starts a child of its
  own on its first batch and leaves its parent's alone.

Reports, visitors' data, erasures and purges are not the child's: the parent opens the
store too and reads and changes it directly, as another worker process of the site
would. An erasure waits for the child to write what it took first (``Pipeline.erase``),
and the store's tombstones keep the child from writing an erased visitor's events back
(``Store.send``).
"""

from __future__ import annotations

import dataclasses
import logging
import marshal
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any

from .errors import StoreError
from .events import ConsentChoice, Hit, PageView
from .settings import Settings

__all__ = ["ProcessSink", "main"]

log = logging.getLogger("trackmw")

_FRAME = struct.Struct("<BI")  # kind, payload length
CONFIG, SEND, SYNC, CLOSE, REPLY = 1, 2, 3, 4, 5
#: Settings the child is not given: it signs nothing and serves nothing.
_PRIVATE = frozenset({"secret_keys", "dashboard_token", "authorize"})
#: The child's first words on its replies' pipe: what a site hook printed there before
#: (at the interpreter's start, before the pipe left fd 1) is skipped up to them.
_HELLO = b"\x00trackmw-writer/1\x00"
_MAX_NOISE = 1 << 16
#: The child's stand-in for the secret keys, which ``Settings`` requires.
_NO_KEY = "the-writer-process-signs-nothing"
#: How long ``close`` waits for the child to write what it holds and exit.
CLOSE_WAIT = 30.0


def _write(stream: IO[bytes], kind: int, payload: bytes) -> None:
    stream.write(_FRAME.pack(kind, len(payload)))
    stream.write(payload)
    stream.flush()


def _read(stream: IO[bytes], only: int | None = None) -> tuple[int, bytes] | None:
    """The next frame, or ``None`` at the end of the stream. A frame of another kind
    than ``only`` (when given) is not read past its header: its length is not one."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    kind, size = _FRAME.unpack(head)
    if only is not None and kind != only:
        return kind, b""
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return kind, payload


class ProcessSink:
    """The pipeline's sink for ``writer="process"``: sends raw hits to a child process
    that writes them to the store (see the module's docstring).

    It has a store's write half (``send``, ``held``, ``sync``, ``close``,
    ``after_fork``), and takes ``Hit`` and ``ConsentChoice`` tuples as they were
    buffered: the child normalizes them.
    """

    def __init__(self, settings: Settings) -> None:
        self._config = marshal.dumps(
            (
                {
                    f.name: getattr(settings, f.name)
                    for f in dataclasses.fields(settings)
                    if f.name not in _PRIVATE
                },
                log.getEffectiveLevel(),
            )
        )
        self._url = settings.store
        self._proc: subprocess.Popen[bytes] | None = None
        self._unsynced: list[bytes] = []  # SEND payloads the store may not have written
        self._held = 0

    def __repr__(self) -> str:
        from .stores.base import redact

        pid = self._proc.pid if self._proc is not None else None
        return f"<ProcessSink pid={pid} store={redact(self._url)!r}>"

    @property
    def pid(self) -> int | None:
        """The child's process id (``None`` until the first batch, or after ``close``)."""
        return self._proc.pid if self._proc is not None else None

    # -- a store's write half -----------------------------------------------------------

    def send(self, pageviews: Sequence[Any], consents: Sequence[ConsentChoice]) -> None:
        """Hand one batch to the child: ``pageviews`` are raw hits (``Hit``), as the
        pipeline buffered them (``Pipeline._take`` leaves them to the child)."""
        batch = ([tuple(h) for h in pageviews], [tuple(c) for c in consents])
        try:
            payload = marshal.dumps(batch)
        except ValueError:  # a subclass of str (or of a number) where plain values go
            payload = marshal.dumps(tuple([_plain(item) for item in part] for part in batch))
        self._held = self._request(SEND, payload)
        self._unsynced.append(payload)

    def held(self) -> int:
        """Events sent that are not known to be written."""
        return self._held

    def sync(self) -> None:
        """Return once the child's store has written every batch sent."""
        self._held = self._request(SYNC)
        if not self._held:
            self._unsynced.clear()

    def close(self) -> None:
        """Have the child write what its store holds, and exit. The sink starts a new
        child if it is used again."""
        proc = self._proc
        if proc is None:
            return
        try:
            self._held = self._call(CLOSE)
            if not self._held:
                self._unsynced.clear()
        finally:
            self._proc = None
            _end(proc, CLOSE_WAIT)

    def after_fork(self) -> None:
        """In a forked process: leave the parent's child alone; start one's own later."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        os.close(stream.fileno())  # this process's copy only
                    except OSError:
                        pass
            proc.returncode = 0  # not this process's to wait for
        self._unsynced = []
        self._held = 0

    # -- the child ----------------------------------------------------------------------

    def _started(self) -> None:
        """Start the child if none runs, and send it again what a dead one took."""
        if self._proc is not None:
            return
        # The directory trackmw is imported from, first on the child's path: the child
        # runs the same trackmw whatever its working directory or environment.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # Its stdout, the replies' pipe, is moved off fd 1 before anything is imported:
        # whatever prints there (a library, a site hook) goes to stderr instead.
        code = (
            "import os, sys; replies = os.dup(1); os.dup2(2, 1); "
            f"sys.path.insert(0, {root!r}); from trackmw.writer import main; main(replies)"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError as exc:
            raise StoreError(f"could not start the writer process: {exc}") from exc
        assert self._proc.stdout is not None
        if not _skip_to_hello(self._proc.stdout):
            proc, self._proc = self._proc, None
            proc.kill()
            raise _Exited(f"the writer process {proc.pid} did not start (code {_end(proc, 1.0)})")
        self._call(CONFIG, self._config)
        for payload in self._unsynced:
            self._held = self._call(SEND, payload)

    def _request(self, kind: int, payload: bytes = b"") -> int:
        """``_call``, in a new child if the one there was has died (once)."""
        try:
            self._started()
            return self._call(kind, payload)
        except _Exited as exc:
            log.warning("trackmw: %s; starting another", exc)
        self._started()
        return self._call(kind, payload)

    def _call(self, kind: int, payload: bytes = b"") -> int:
        """One request and its reply: the events the store holds, or ``StoreError``."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            _write(proc.stdin, kind, payload)
            frame = _read(proc.stdout, REPLY)
        except (OSError, ValueError):  # a broken pipe, a closed file
            frame = None
        reply = None if frame is None else _reply(*frame)
        if reply is None:
            self._proc = None
            why = "exited"
            if frame is not None:  # alive, but its stdout carries something else
                why = "answered out of turn"
                proc.kill()
            code = _end(proc, 1.0)
            raise _Exited(f"the writer process {proc.pid} {why} (code {code})")
        ok, value, logs = reply
        for level, message in logs:
            log.log(level, "%s", message)
        if not ok:
            raise StoreError(value)
        return int(value)


def _skip_to_hello(stream: IO[bytes]) -> bool:
    """Read ``stream`` up to the child's ``_HELLO`` (``False``: it ended, or sent more
    than ``_MAX_NOISE`` bytes of something else first)."""
    seen = bytearray()
    while not seen.endswith(_HELLO):
        if len(seen) > _MAX_NOISE:
            return False
        byte = stream.read(1)
        if not byte:
            return False
        seen += byte
    return True


def _reply(kind: int, payload: bytes) -> tuple[bool, Any, list[tuple[int, str]]] | None:
    """A reply frame's ``(ok, value, logs)``; ``None`` if it is not one."""
    if kind != REPLY:
        return None
    try:
        ok, value, logs = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return bool(ok), value, logs


class _Exited(StoreError):
    """The child is gone (its pipe broke, or it ended without a reply)."""


def _plain(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """``item`` with each value that ``marshal`` refuses made a plain one."""
    return tuple(
        v if v is None or type(v) in (str, float, int, bool)
        else str(v) if isinstance(v, str)
        else bool(v) if isinstance(v, bool)
        else int(v) if isinstance(v, int)
        else float(v)
        for v in item
    )


def _end(proc: subprocess.Popen[bytes], wait: float) -> int | None:
    """Close the child's pipes and reap it: killed if it does not exit in ``wait``
    seconds."""
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    try:
        return proc.wait(wait)
    except subprocess.TimeoutExpired:
        log.error("trackmw: the writer process %d did not exit in %.0fs; killed", proc.pid, wait)
        proc.kill()
        return proc.wait()


# -- the child process ---------------------------------------------------------------------


class _Forward(logging.Handler):
    """Keeps the child's ``trackmw`` log records for the next reply."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append((record.levelno, message))


def main(replies_fd: int | None = None) -> None:
    """The child: read requests from stdin until it ends or ``CLOSE`` comes, and answer
    on ``replies_fd`` (by default, stdout moved off fd 1, which then goes to stderr)."""
    from zoneinfo import ZoneInfo

    from .normalize import normalize_batch
    from .pipeline import _unreadable
    from .stores import Store, open_store

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if replies_fd is None:
        replies_fd = os.dup(1)
        os.dup2(2, 1)
    requests, replies = sys.stdin.buffer, os.fdopen(replies_fd, "wb")
    replies.write(_HELLO)
    replies.flush()
    forward = _Forward()
    logger = logging.getLogger("trackmw")
    logger.addHandler(forward)
    logger.propagate = False

    first = _read(requests)
    if first is None or first[0] != CONFIG:
        return
    fields, level = marshal.loads(first[1])
    logger.setLevel(level)
    settings = Settings(secret_keys=(_NO_KEY,), **fields)
    tz = ZoneInfo(settings.timezone)
    store: Store | None = None
    _write(replies, REPLY, marshal.dumps((True, 0, [])))

    while (frame := _read(requests)) is not None:
        kind, payload = frame
        try:
            if store is None:
                if kind == CLOSE:
                    _write(replies, REPLY, marshal.dumps((True, 0, forward.records)))
                    return
                store = open_store(settings.store, settings)
            if kind == SEND:
                hits, choices = marshal.loads(payload)
                pageviews: list[PageView] = []
                normalize_batch([Hit._make(h) for h in hits], tz, pageviews, [], _unreadable)
                store.send(pageviews, [ConsentChoice._make(c) for c in choices])
            elif kind == SYNC:
                store.sync()
            elif kind == CLOSE:
                store.close()
            reply: tuple[Any, ...] = (True, store.held())
        except StoreError as exc:
            reply = (False, str(exc))
        except Exception as exc:  # a bug must not end the child: the parent retries
            logger.exception("trackmw: the writer process failed")
            reply = (False, f"{type(exc).__name__}: {exc}")
        _write(replies, REPLY, marshal.dumps((*reply, forward.records)))
        forward.records = []
        if kind == CLOSE:
            return
    # The parent is gone (its end of the pipe closed without CLOSE): write what is held.
    if store is not None:
        logger.propagate = True
        logger.removeHandler(forward)
        store.close()
