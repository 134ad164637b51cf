"""The writer in a process of its own (``writer="process"``).

By default the pipeline's writer is a thread of the server's process: it normalizes the
buffered hits and writes them to the store, holding the GIL for most of that, and each
time it takes the GIL back (after each SQLite step, each network read) the thread
serving requests waits for it. Over the wire that is most of what recording costs the
beacon (README, "Performance"). With ``writer="process"`` that thread only ships the
raw hits, marshalled, to a child process (``ProcessSink``); the child normalizes them
and writes them to the store with a GIL of its own. The request path is the same.

The child is ``python -c '... from trackmw.writer import main; main(...)'``, run by
this process's interpreter on the first batch (a tracker that records nothing starts
none), with this process's import path, the store class this process registered for
the URL's scheme, and the settings less the secrets; none of the ``TRACKMW_*``
variables is in its environment. It is spoken to over its stdin (a socket, so that a
request to a child that has died is an error, not a SIGPIPE) and a pipe that was
its stdout, moved off fd 1 before anything is imported (so that what prints there goes
to stderr): frames of a kind byte, a length and a ``marshal`` payload (plain tuples of
strings and numbers; nothing is unpickled). Each request gets one reply, within
``REPLY_WAIT`` seconds of the request or of the child's last sign of work (``WORKING``,
sent every quarter of that while a request is under way): ``(True, value, logs)`` or
``(False, the error, logs)``, the logs
being the child's ``trackmw`` log records, which the parent logs again through its own
``trackmw`` logger. A child that does not answer in time, or answers out of turn, is
killed and treated as one that died.

Nothing accepted is lost:

- A batch is the child's once its ``SEND`` is answered; a failure there leaves it with
  the pipeline, which retries it as it retries a store's (``Store.send``).
- The sink keeps each batch it sent until the store has written it: each reply says
  how many events the store holds, and a store writes the batches it took in their
  order (at most ``MAX_UNSYNCED`` are kept: a ``SYNC`` comes first). If the child dies,
  the next call starts a new one and sends those batches again first; if that fails,
  the new child is ended too, and the next call starts over. (A write the child
  committed just before it died, its reply lost, is then written again: at least
  once, where a store's own failure has each batch written exactly once.)
- If the parent dies, even by ``kill -9``, even while waiting for a reply, the child
  reads the end of its stdin (or fails to answer), writes what its store holds, and
  exits. It ignores SIGINT and SIGTERM, which a terminal or a service manager sends to
  the whole process group: the parent's shutdown, which flushes through it, closes it.
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
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from .errors import StoreError
from .events import ConsentChoice, Hit, PageView
from .settings import Settings

__all__ = ["ProcessSink", "main"]

log = logging.getLogger("trackmw")

_FRAME = struct.Struct("<BI")  # kind, payload length
CONFIG, SEND, SYNC, CLOSE, REPLY, WORKING = 1, 2, 3, 4, 5, 6
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
#: How long a request waits for its reply, and a new child for its first words: past
#: that, the child is ended as one that died (the next call starts another). A child at
#: work on a long request (a store's schema upgrade, say) says so (``WORKING``) every
#: quarter of it, and each time the wait starts again.
REPLY_WAIT = 60.0
START_WAIT = 60.0
#: Batches sent and not known to be written, at most (a ``sync`` comes first): what a
#: dead child's successor may be sent again.
MAX_UNSYNCED = 5
_CHUNK = 1 << 16
_WORKING = _FRAME.pack(WORKING, 0)
_NO_SIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # Linux; elsewhere Python ignores SIGPIPE


def _write(stream: IO[bytes], kind: int, payload: bytes) -> None:
    """One frame (the child's replies; the parent writes with a deadline, ``_call``)."""
    stream.write(_FRAME.pack(kind, len(payload)))
    stream.write(payload)
    stream.flush()


def _read(stream: IO[bytes]) -> tuple[int, bytes] | None:
    """The next frame, or ``None`` at the end of the stream (the child's requests)."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    kind, size = _FRAME.unpack(head)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return kind, payload


class ProcessSink:
    """The pipeline's sink for ``writer="process"``: sends raw hits to a child process
    that writes them to the store (see the module's docstring).

    It has a store's write half (``send``, ``held``, ``sync``, ``close``,
    ``after_fork``), and takes ``Hit`` and ``ConsentChoice`` tuples as they were
    buffered: the child normalizes them. A sink that has sent nothing starts no child.
    """

    def __init__(self, settings: Settings) -> None:
        from .stores.base import registered

        scheme = settings.store.split("://", 1)[0].lower()
        fields = {
            f.name: _plain_value(getattr(settings, f.name))
            for f in dataclasses.fields(settings)
            if f.name not in _PRIVATE
        }
        # The store's class as this process found it (``stores.register`` included), and
        # this process's import path, so that the child finds the same modules.
        paths = [p for p in sys.path if type(p) is str]
        where = (scheme, registered(scheme))
        self._config = marshal.dumps(
            (fields, log.getEffectiveLevel(), paths, where, REPLY_WAIT / 4)
        )
        self._url = settings.store
        self._proc: subprocess.Popen[bytes] | None = None
        # Requests go through a socket, not a pipe: sent with MSG_NOSIGNAL, a request to
        # a child that has died is an error, never a SIGPIPE (which kills a process that
        # has put SIGPIPE back to its default).
        self._sock: socket.socket | None = None
        # SEND payloads the store may not have written, oldest first, with the events the
        # child gave the store of each.
        self._unsynced: list[tuple[bytes, int]] = []

    def __repr__(self) -> str:
        from .stores.base import redact

        return f"<ProcessSink pid={self.pid} store={redact(self._url)!r}>"

    @property
    def pid(self) -> int | None:
        """The child's process id (``None`` until the first batch, or after ``close``)."""
        return self._proc.pid if self._proc is not None else None

    # -- a store's write half -----------------------------------------------------------

    def send(self, pageviews: Sequence[Any], consents: Sequence[ConsentChoice]) -> int:
        """Hand one batch to the child: ``pageviews`` are raw hits (``Hit``), as the
        pipeline buffered them (``Pipeline._take`` leaves them to the child). Returns
        how many events the child gave the store (hits it could not normalize are
        logged and left out, as the thread leaves them out)."""
        batch = ([tuple(h) for h in pageviews], [tuple(c) for c in consents])
        try:
            payload = marshal.dumps(batch)
        except ValueError:  # a subclass of str (or of a number) where plain values go
            payload = marshal.dumps(_plain_value(batch))
        if len(self._unsynced) >= MAX_UNSYNCED:
            self.sync()  # what a dead child's successor is sent again stays short
        held, given = self._request(SEND, payload)
        self._unsynced.append((payload, given))
        self._trim(held)
        return given

    def held(self) -> int:
        """Events sent that are not known to be written: those of the batches the sink
        keeps (a dead child's included, which a new one is sent again)."""
        return sum(n for _, n in self._unsynced)

    def sync(self) -> None:
        """Return once the child's store has written every batch sent."""
        if self._proc is None and not self._unsynced:
            return  # nothing sent: no child to start
        self._trim(self._request(SYNC)[0])

    def close(self) -> None:
        """Have the child write what its store holds, and exit. The sink starts a new
        child if it is used again."""
        if self._proc is None:
            return
        try:
            self._trim(self._call(CLOSE)[0])
        finally:
            self._end(CLOSE_WAIT)

    def after_fork(self) -> None:
        """In a forked process: leave the parent's child alone; start one's own later."""
        proc = self._let_go()
        if proc is not None:
            proc.returncode = 0  # not this process's to wait for
        self._unsynced = []

    # -- the child ----------------------------------------------------------------------

    def _let_go(self) -> subprocess.Popen[bytes] | None:
        """Forget the child, closing this process's ends of its socket and pipe (no
        shutdown: a forked process's copies only)."""
        proc, sock = self._proc, self._sock
        self._proc = self._sock = None
        if sock is not None:
            sock.close()
        if proc is not None and proc.stdout is not None:
            try:
                proc.stdout.close()
            except OSError:
                pass
        return proc

    def _end(self, wait: float, kill: bool = False) -> int | None:
        """Let the child go (killed first if ``kill``) and reap it within ``wait``
        seconds (then killed): its exit code."""
        if kill and self._proc is not None:
            self._proc.kill()
        proc = self._let_go()
        if proc is None:
            return None
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            log.error("trackmw: writer process %d did not exit in %.0fs; killed", proc.pid, wait)
            proc.kill()
            return proc.wait()

    def _trim(self, held: int) -> None:
        """Let go of the batches the store has written: the oldest, all but those its
        ``held`` events are (a store writes the batches it took in their order)."""
        unsynced = self._unsynced
        total = sum(n for _, n in unsynced)
        while unsynced and total - unsynced[0][1] >= held:
            total -= unsynced.pop(0)[1]

    def _request(self, kind: int, payload: bytes = b"") -> tuple[int, int]:
        """``_call``, in a new child if the one there was has died (once)."""
        try:
            self._started()
            return self._call(kind, payload)
        except _Exited as exc:
            log.warning("trackmw: %s; starting another", exc)
        self._started()
        return self._call(kind, payload)

    def _started(self) -> None:
        """Start the child if none runs, and send it again what a dead one took. If any
        of that fails, the new child is ended: the next call starts over."""
        if self._proc is not None:
            return
        if not sys.executable or getattr(sys, "frozen", False):
            raise StoreError(
                f"this process's interpreter ({sys.executable!r}) cannot start the writer "
                "process; use writer='thread'"
            )
        # The directory trackmw is imported from, first on the child's path: the child
        # runs the same trackmw whatever its working directory or environment. Its
        # stdout, the replies' pipe, is moved off fd 1 before anything is imported:
        # whatever prints there (a library, a site hook) goes to stderr instead.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (
            "import os, sys; replies = os.dup(1); os.dup2(2, 1); "
            f"sys.path.insert(0, {root!r}); from trackmw.writer import main; main(replies)"
        )
        # Its settings come through the pipe: none of TRACKMW_* (the secret keys, the
        # dashboard token) through its environment.
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TRACKMW_")}
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=theirs.fileno(),
                stdout=subprocess.PIPE,
                env=env,
                bufsize=0,
            )
        except OSError as exc:
            ours.close()
            raise StoreError(f"could not start the writer process: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)  # a request waits in poll, with a deadline
        self._proc, self._sock = proc, ours
        try:
            if not _skip_to_hello(proc):
                raise _Exited(f"the writer process {proc.pid} did not start")
            self._call(CONFIG, self._config)
            for payload, _ in self._unsynced:
                self._call(SEND, payload)
        except BaseException:
            if self._proc is proc:
                self._end(1.0, kill=True)
            raise

    def _call(self, kind: int, payload: bytes = b"") -> tuple[int, int]:
        """One request and its reply (``REPLY_WAIT`` seconds at most), or
        ``StoreError``: the events the store holds, and, to a ``SEND``, how many the
        child gave it."""
        proc, sock = self._proc, self._sock
        assert proc is not None and sock is not None and proc.stdout is not None
        deadline = time.monotonic() + REPLY_WAIT
        why = "exited"
        try:
            _send_all(sock, _FRAME.pack(kind, len(payload)) + payload, deadline)
            while (head := _read_exact(proc.stdout.fileno(), _FRAME.size, deadline)) == _WORKING:
                deadline = time.monotonic() + REPLY_WAIT  # at work: the wait starts again
            reply = None
            if head is not None:
                why = "answered out of turn"
                got, size = _FRAME.unpack(head)
                if got == REPLY:  # else its length is not one: not read
                    body = _read_exact(proc.stdout.fileno(), size, deadline)
                    reply = None if body is None else _reply(body)
        except TimeoutError:
            why, reply = f"did not answer in {REPLY_WAIT:.0f}s", None
        except (OSError, ValueError):  # a broken pipe, a closed file
            why, reply = "exited", None
        if reply is None:
            code = self._end(1.0, kill=why != "exited")
            raise _Exited(f"the writer process {proc.pid} {why} (code {code})")
        ok, value, logs = reply
        for level, message in logs:
            log.log(level, "%s", message)
        if not ok:
            raise StoreError(value)
        held, given = value
        return int(held), int(given)


def _ready(fd: int, event: int, deadline: float) -> None:
    """Wait until ``fd`` is ready for ``event`` (``select.POLLIN``, ``POLLOUT``), or
    ``TimeoutError`` at ``deadline``. (``poll``, not ``select``: a busy server's pipes
    can have numbers past ``select``'s 1,024.)"""
    poller = select.poll()
    poller.register(fd, event)
    left = deadline - time.monotonic()
    if left <= 0 or not poller.poll(left * 1000):
        raise TimeoutError


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send ``data`` on the non-blocking ``sock`` by ``deadline`` (``TimeoutError``);
    a closed peer is ``OSError`` (``EPIPE``), not a signal."""
    view = memoryview(data)
    while view:
        _ready(sock.fileno(), select.POLLOUT, deadline)
        try:
            view = view[sock.send(view[:_CHUNK], _NO_SIGNAL) :]
        except BlockingIOError:
            continue


def _read_exact(fd: int, size: int, deadline: float) -> bytes | None:
    """``size`` bytes from ``fd`` by ``deadline`` (``TimeoutError``); ``None`` at its end."""
    data = bytearray()
    while len(data) < size:
        _ready(fd, select.POLLIN, deadline)
        chunk = os.read(fd, min(size - len(data), _CHUNK))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _skip_to_hello(proc: subprocess.Popen[bytes]) -> bool:
    """Read the child's stdout up to its ``_HELLO`` (``False``: it ended, or sent more
    than ``_MAX_NOISE`` bytes of something else first); ``START_WAIT`` seconds at most."""
    assert proc.stdout is not None
    fd, deadline = proc.stdout.fileno(), time.monotonic() + START_WAIT
    seen = bytearray()
    try:
        while not seen.endswith(_HELLO):
            byte = _read_exact(fd, 1, deadline)
            if byte is None or len(seen) > _MAX_NOISE:
                return False
            seen += byte
    except TimeoutError:
        return False
    return True


def _reply(payload: bytes) -> tuple[bool, Any, list[tuple[int, str]]] | None:
    """A reply's ``(ok, value, logs)``; ``None`` if it is not one."""
    try:
        ok, value, logs = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return bool(ok), value, logs


class _Exited(StoreError):
    """The child is gone (its pipe broke, or it ended without a reply), or was ended
    (it did not answer in time, or answered out of turn)."""


def _plain_value(value: Any) -> Any:
    """``value`` with what ``marshal`` refuses (a subclass of ``str``, of a number, of
    a tuple or list: a ``StrEnum``, a settings library's URL type) made plain."""
    if value is None or type(value) in (str, float, int, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, tuple | list):
        return tuple(_plain_value(v) for v in value)
    return value  # marshal says what it refuses


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
    from .stores import Store, open_store, register

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

    writing = threading.Lock()  # the replies' pipe: a reply, or a sign of work
    busy = threading.Event()  # a request is under way

    def answer(ok: bool, value: Any) -> bool:
        """Send a reply; ``False`` if the parent is gone."""
        with writing:
            busy.clear()
            try:
                _write(replies, REPLY, marshal.dumps((ok, value, forward.records)))
            except OSError:  # the parent died waiting for it
                return False
            finally:
                forward.records = []
        return True

    def at_work(every: float) -> None:
        """While a request is under way, say so every ``every`` seconds."""
        while True:
            time.sleep(every)
            with writing:
                if busy.is_set():
                    try:
                        _write(replies, WORKING, b"")
                    except OSError:
                        return

    first = _read(requests)
    if first is None or first[0] != CONFIG:
        return
    try:
        fields, level, paths, (scheme, target), every = marshal.loads(first[1])
        logger.setLevel(level)
        sys.path[1:1] = [p for p in paths if p not in sys.path]
        if target is not None:
            register(scheme, target)  # a store the parent registered
        settings = Settings(secret_keys=(_NO_KEY,), **fields)
        tz = ZoneInfo(settings.timezone)
    except Exception as exc:  # the parent logs it, and tries again later
        answer(False, f"the writer process could not start: {type(exc).__name__}: {exc}")
        return
    if not answer(True, (0, 0)):
        return
    threading.Thread(target=at_work, args=(every,), name="trackmw-at-work", daemon=True).start()
    store: Store | None = None

    while (frame := _read(requests)) is not None:
        kind, payload = frame
        given = 0
        if kind == CLOSE and store is None:
            answer(True, (0, 0))
            return
        busy.set()
        try:
            if store is None:
                store = open_store(settings.store, settings)
            if kind == SEND:
                hits, choices = marshal.loads(payload)
                pageviews: list[PageView] = []
                normalize_batch([Hit._make(h) for h in hits], tz, pageviews, [], _unreadable)
                consents = [ConsentChoice._make(c) for c in choices]
                store.send(pageviews, consents)
                given = len(pageviews) + len(consents)
            elif kind == SYNC:
                store.sync()
            elif kind == CLOSE:
                store.close()
            reply: tuple[bool, Any] = (True, (store.held(), given))
        except StoreError as exc:
            reply = (False, str(exc))
        except Exception as exc:  # a bug must not end the child: the parent retries
            logger.exception("trackmw: the writer process failed")
            reply = (False, f"{type(exc).__name__}: {exc}")
        if not answer(*reply):
            break  # the parent is gone: as at the end of its requests
        if kind == CLOSE:
            return
    # The parent is gone (its end of the pipe closed without CLOSE): write what is held.
    if store is not None:
        logger.propagate = True
        logger.removeHandler(forward)
        store.close()
