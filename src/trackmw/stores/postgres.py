"""``postgresql://…`` (or ``postgres://…``): PostgreSQL with psycopg 3 and a connection pool.

Raw ``pageviews`` and ``consents``, as in the SQLite store, and two daily rollups kept in
the same transaction (``daily_counts``: page views per day and dimension;
``daily_visitors``: one row per visitor and day with its browser, OS and device), so
counts are exact and reports read small tables.

- Schema (``postgres_sql``, with the statements and the report's queries): created or
  brought up to date on first use under ``pg_advisory_xact_lock``, so many processes
  can start at once. The tables live in the schema named by ``?schema=name`` (default
  ``trackmw``); the parameter is stripped before the URL reaches libpq.
- Writes: one transaction per batch, or per group of the batches sent one after
  another (``send``, up to ``group_events``: the pipeline's writer sends every batch it
  finds waiting when it is behind), written by a thread of the store's while the next
  group is prepared; the statements before the page views' ``COPY`` are sent together
  (pipeline mode, where libpq has it), and those after it too: page views are copied
  (binary ``COPY``) into ``pageviews``; the rollups are counted by the client
  (``daily_counts``, the function that erasure's subtraction uses too, and
  ``visitor_days``) and added with ``INSERT … SELECT … FROM unnest(…) ON CONFLICT DO
  UPDATE``, rows in key order so that concurrent writers lock them in the same order
  (no deadlocks); consents by ``INSERT … SELECT … FROM unnest(…)``. With the C speedups
  built, the page views' ``COPY`` and the rollups' arrays are formatted in C
  (``copy_pageviews``, ``pg_columns``), whole, when the connection's texts go as UTF-8;
  psycopg formats them otherwise, and for any batch the C leaves. A
  visitor's and a user's page views are found by hash indexes: equality is all erasure
  and ``/me`` ask, and a hash index costs a batch less to update than a B-tree over
  random ids. ``daily_visitors`` has no index by visitor: erasure finds its rows by
  key, from the visitor's page views. Reports find page views by day through a BRIN
  index, a few bytes per range of table pages (rows arrive in time order), which costs
  a write next to nothing. A range is only skipped once summarized: autovacuum does it
  (``autosummarize``) when it comes to it, and a busy table can outrun its queue of
  requests, so each process also summarizes the new ranges itself every
  ``summarize_every`` page views it writes, in a transaction of its own (a report over
  a day went from 71 to 19 ms over a million events so summarized). The batch's content
  hash goes into ``batches`` first: a batch retried after its commit reply was lost is
  recognised and written once.
- Erasure: ``erase`` holds an advisory lock that every write shares, so a batch is
  written wholly before an erasure or wholly after it, and then it leaves out the
  erased visitors' earlier events (``drops_erased``). It only looks them up when the
  latest erasure is not older than the batch's first event of a visitor (``unerased``).
  While an erasure runs, every process's writes wait (they stay buffered). This relies
  on READ COMMITTED (each statement sees what committed before it), which the pool's
  connections use whatever ``default_transaction_isolation`` the URL's options set.
- Connections: a ``psycopg_pool.ConnectionPool`` (``?pool_size=N``, default 4), checked
  before use so a restarted server is reconnected to. ``after_fork`` drops the pool
  without closing it, so a forked child never touches its parent's sockets. A pool
  that cannot start its threads (at process exit, from Python 3.12 on) gives way to a
  connection of the store's own for each use, so that the pipeline's atexit flush
  still writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from datetime import date
from functools import cache, partial
from operator import itemgetter
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._ext import speedup
from ..errors import ConfigurationError, StoreError
from ..events import ConsentChoice, PageView
from ..report import Report
from . import postgres_sql as sql
from .base import (
    Held,
    Store,
    daily_counts,
    drivers,
    purge_horizon,
    redact,
    tombstone_keys,
    unerased,
)
from .memory import visitor_document

__all__ = ["PostgresStore"]

log = logging.getLogger("trackmw")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_orphans: list[Any] = []  # pools inherited over fork: never used, never closed, never freed


class PostgresStore(Store):
    """Raw events plus daily rollups in PostgreSQL, written in one transaction per batch
    (or per group of the batches ``send`` took one after another)."""

    schemes = ("postgresql", "postgres")
    connect_timeout = 5.0
    drops_erased = True
    #: Page views a process writes between its summaries of the BRIN index's new ranges.
    summarize_every = 100_000
    #: At most this many events (batches sent one after another) a transaction.
    group_events = 5_000

    def __init__(self, url: str, settings: Any = None) -> None:
        super().__init__(url, settings)
        self._conninfo, self.schema, self.pool_size = self._parse(url)
        given = dict(parse_qsl(urlsplit(url).query)).get("options", "")
        # The URL's own server options (e.g. -c synchronous_commit=off) are kept.
        # Quoted, as CREATE SCHEMA names it: a name with capitals stays one.
        self._options = f'{given} -c search_path="{self.schema}"'.strip()
        self._pool: Any = None
        self._pool_lock = threading.Lock()  # one pool, whichever thread asks first
        self._schema_ready = False
        self._pid = os.getpid()
        self._lock = threading.RLock()  # ``send`` and ``sync``: one batch in flight
        self._held = Held()  # what ``send`` took
        self._flight: _Batch | None = None  # a group of them being written
        self._worker: ThreadPoolExecutor | None = None  # writes the batch in flight
        # Do the connections' texts go as UTF-8 (``_prepare``)? Not known before the first.
        self._utf8: bool | None = None
        self._writes = 0
        self._unsummarized = 0  # page views written since the last summary
        self._token = uuid.uuid4().hex  # batch ids of different processes never collide
        # Writes share it, erase holds it alone (see the module).
        self._erasure_lock = _lock_key("trackmw-erasure:", self.schema)

    @staticmethod
    def _parse(url: str) -> tuple[str, str, int]:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in ("schema", "pool_size", "options")}
        rest = urlencode([(k, v) for k, v in query if k not in ours])
        schema = ours.get("schema", "trackmw")
        if not _IDENT.match(schema):
            raise ConfigurationError("store", f"schema={schema!r} is not a plain SQL name")
        size = ours.get("pool_size", "4")
        if not size.isdigit() or int(size) < 1:
            raise ConfigurationError("store", f"pool_size={size!r} must be a positive integer")
        conninfo = urlunsplit(parts._replace(scheme="postgresql", query=rest))
        return conninfo, schema, int(size)

    @classmethod
    def check_url(cls, url: str) -> None:
        cls._parse(url)
        _drivers()  # now, while imports still work (see ``base.drivers``)

    # -- connections -------------------------------------------------------------------

    @contextmanager
    def _connection(self, transaction: bool = True) -> Iterator[Any]:
        """A connection (``_pooled``) inside a transaction (unless not ``transaction``: the
        caller commits or rolls back); driver errors become ``StoreError``."""
        import psycopg
        from psycopg_pool import PoolTimeout

        self._mine()
        try:
            with self._pooled() as conn:
                if not self._schema_ready:
                    self._migrate(conn)
                if not transaction:
                    yield conn
                    return
                with conn.transaction():
                    yield conn
        except PoolTimeout as exc:
            raise _Unreachable(f"postgresql {redact(self.url)}: {exc}") from exc
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"postgresql {redact(self.url)}: {exc}") from exc

    @contextmanager
    def _pooled(self) -> Iterator[Any]:
        """A connection from the pool; or, if the pool cannot start its threads, one of
        its own, closed after use. (At process exit from Python 3.12 on, the interpreter
        starts no thread: the pipeline's atexit flush of a process that never wrote
        before opens the pool then.)"""
        try:
            pool = self._pool or self._open()
        except RuntimeError as exc:
            log.info("trackmw: postgresql: no pool (%s): a connection of its own", exc)
            import psycopg

            with closing(psycopg.connect(self._conninfo, **self._connect_args())) as conn:
                _configure(conn)
                yield conn
            return
        with pool.connection(timeout=self.connect_timeout) as conn:
            yield conn

    def _open(self) -> Any:
        with self._pool_lock:
            return self._pool or self._new_pool()

    def _new_pool(self) -> Any:
        ConnectionPool = _drivers()
        pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs=self._connect_args(),
            name="trackmw",
            configure=_configure,
        )
        pool.open(wait=False)
        self._pool = pool
        return pool

    def _connect_args(self) -> dict[str, Any]:
        return {
            "connect_timeout": int(self.connect_timeout),
            "options": self._options,
            "application_name": "trackmw",
        }

    def _migrate(self, conn: Any) -> None:
        import psycopg

        key = _lock_key("trackmw:", self.schema)

        def locked() -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            # The first start on an older schema builds indexes over a table that may be
            # large: a statement_timeout from the URL's options must not cut that short.
            conn.execute("SET LOCAL statement_timeout = 0")

        with conn.transaction():
            locked()
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            conn.execute(sql.SCHEMA)
        for statement in sql.DROPPED:
            with conn.transaction():
                locked()
                conn.execute(statement)
        try:
            with conn.transaction():
                locked()
                conn.execute(sql.SET_FILLFACTOR)
        except psycopg.errors.LockNotAvailable:
            log.warning("trackmw: PostgreSQL's daily_counts is busy (a VACUUM?): its "
                        "fill factor is left to a later start")
        with conn.transaction():
            # Never lowered: a later version's schema stays marked as such.
            conn.execute(
                "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value WHERE meta.value::int < excluded.value::int",
                (str(sql.SCHEMA_VERSION),),
            )
        self._schema_ready = True

    def close(self) -> None:
        self._mine()
        with self._lock:
            self._sync_at_close()
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def after_fork(self) -> None:
        # Closing would send the parent's sessions a terminate message: just forget them.
        if self._pool is not None:
            _orphans.append(self._pool)
        self._pool = None
        self._pool_lock = threading.Lock()
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._held = Held()  # the parent's to write
        self._flight = None
        self._worker = None  # its thread is the parent's

    # -- writing -----------------------------------------------------------------------

    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        """Write one batch now, in a transaction of its own, after the batches ``send``
        took (in the order they came)."""
        self._mine()
        with self._lock:
            self.sync()
            if pageviews or consents:
                self._execute(self._prepare(pageviews, consents))

    def send(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        """Take one batch, to be written with the batches sent after it in one transaction
        of up to ``group_events``, by a thread of the store's; ``sync`` waits for them.

        The pipeline's writer sends every batch it finds waiting, then syncs: one batch
        at a time when it keeps up, several in one transaction when it is behind (fewer
        rollup rows to update, one commit). A full group is prepared (its ``COPY`` and
        the rollups' arrays, formatted) while the group before is still being written:
        then that one is waited for, this one handed to the thread, and ``send``
        returns, so that the client and the server work at once. Each group is written
        in one transaction, once (its id), less the events of visitors erased after
        them (``drops_erased``).
        """
        if not pageviews and not consents:
            return
        self._mine()
        with self._lock:
            if self._held.overflows(pageviews, consents, self.group_events):
                self._launch()  # if the group before failed, this batch is not taken
            self._held.add(pageviews, consents)

    def sync(self) -> None:
        """Write what ``send`` holds and wait for it (``Store.sync``)."""
        self._mine()
        with self._lock:
            if self._held:
                self._launch()
            self._settle()

    def held(self) -> int:
        batch = self._flight
        flying = len(batch.pageviews) + len(batch.consents) if batch is not None else 0
        return flying + len(self._held)

    def _mine(self) -> None:
        """In a forked child, forget the parent's batches, thread and lock (first: the
        parent's lock may have been held by one of its threads)."""
        if self._pid != os.getpid():
            self.after_fork()

    def _launch(self) -> None:
        """Prepare the held batches as one group, wait for the group in flight, then hand
        this one to the store's thread (which it starts the first time)."""
        flight = self._flight
        if flight is not None and flight.future is None:
            self._settle()  # the group before failed, or no thread took it: written first
        group = self._prepare(self._held.pageviews, self._held.consents)
        self._settle()  # raises if the group before could not be written: this one waits
        self._flight = group
        self._held = Held()
        try:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="trackmw-postgres")
            group.future = self._worker.submit(self._execute, group)
        except RuntimeError as exc:  # no thread (at exit): ``_settle`` writes it here
            log.info("trackmw: %r: no thread to write in (%s): writing here", self, exc)
            self._worker = None

    def _settle(self) -> None:
        """Finish the group in flight: wait for its thread, and if its transaction failed,
        write it here. Raises ``StoreError`` (the group kept for the next try) if that
        fails too, or at once if the thread found the server unreachable: a second wait
        now would only make the pool's reconnection back off further."""
        batch = self._flight
        if batch is None:
            return
        future = batch.future
        if future is not None:  # (kept if this wait is interrupted: it is still running)
            try:
                future.result()
            except _Unreachable:
                batch.future = None
                raise
            except StoreError as exc:  # said again below if it still holds
                batch.future = None
                log.info("trackmw: %r: a batch failed (%s); trying it again", self, exc)
            except Exception as exc:
                batch.future = None
                log.error("trackmw: %r: a batch failed unexpectedly (%r); trying it again",
                          self, exc)
            else:
                self._flight = None
                return
        self._execute(batch)
        self._flight = None

    def _prepare(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice],
                 batch_id: str | None = None) -> _Batch:
        """``pageviews`` and ``consents`` as their transaction sends them: formatted in C,
        the whole ``COPY`` and the rollups' arrays, when the texts go as UTF-8 (else
        psycopg formats a row, or an array's item, in Python)."""
        # Same content, same id: a retry of this batch (from this process) is recognised.
        if batch_id is None:
            digest = hash((tuple(pageviews), tuple(consents))) & (2**64 - 1)
            batch_id = f"{self._token}:{digest:x}"
        batch = _Batch(pageviews, consents, batch_id, self._utf8)
        if pageviews and batch.utf8 is not None:  # else formatted once it is known
            days = batch.days
            numbers = _day_numbers(pageviews, days) if batch.utf8 else None
            copy_c = _formatter("copy_pageviews", numbers)
            batch.copy = None if copy_c is None else copy_c(pageviews, PageView, numbers)
            batch.counts = _arrays(daily_counts(pageviews), "dtti", numbers)
            visits = visitor_days(pageviews)
            batch.visits = _arrays(visits, "dttttti", numbers) if visits else None
        return batch

    def _execute(self, batch: _Batch) -> None:
        """Write ``batch`` in one transaction (see the module): the statements before the
        page views' ``COPY`` are sent together (pipeline mode, which ``COPY`` cannot be
        part of), and those after it too."""
        with self._connection(transaction=False) as conn:
            try:
                written = self._transaction(conn, batch)
            except BaseException:
                _rollback(conn)
                raise
        if not written:
            return
        self._unsummarized += len(batch.pageviews)
        if self._unsummarized >= self.summarize_every:
            self._unsummarized = 0
            self._summarize()

    def _transaction(self, conn: Any, batch: _Batch) -> bool:
        """Write ``batch`` on ``conn``: True, or False if it was written before."""
        with _together(conn):  # BEGIN, the lock, the batch's id
            conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (self._erasure_lock,))
            # The latest erasure, read after the lock (a statement of its own, so that its
            # snapshot includes an erasure that committed while this write waited).
            marked = conn.execute(
                "INSERT INTO batches (id) VALUES (%s) ON CONFLICT DO NOTHING "
                "RETURNING (SELECT max(at) FROM erasures)",
                (batch.id,),
            )
        row = marked.fetchone()  # after the block: its results are in by then
        if row is None:
            conn.rollback()
            return False  # written already: its commit reply was lost, the retry is a no-op
        kept = unerased(batch.pageviews, batch.consents, partial(_erasures, conn), row[0])
        self._utf8 = conn.info.encoding == "utf-8"
        if kept is not None or batch.utf8 != self._utf8:
            batch = self._prepare(*(kept or (batch.pageviews, batch.consents)), batch.id)
        cur = conn.cursor()
        if batch.pageviews:
            with cur.copy(f"COPY pageviews ({sql.PV_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
                if batch.copy is not None:
                    copy.write(batch.copy)
                else:
                    copy.set_types(sql.PV_TYPES)
                    write_row, days = copy.write_row, batch.days
                    for pv in batch.pageviews:
                        write_row((pv[0], days[pv[1]], *pv[2:]))
        with _together(conn):  # the rollups, the consents, COMMIT
            if batch.pageviews:
                cur.execute(sql.ADD_COUNTS, batch.counts)
                if batch.visits is not None:
                    cur.execute(sql.ADD_VISITORS, batch.visits)
            if batch.consents:
                cur.execute(sql.ADD_CONSENTS, _columns(batch.consents))
            self._writes += 1
            if self._writes % 1000 == 1:  # batch ids only need to outlive a retry
                cur.execute("DELETE FROM batches WHERE at < now() - interval '2 days'")
            conn.commit()
        return True

    def _summarize(self) -> None:
        """Summarize the page views' BRIN ranges that are not yet (see the module), after
        the batch's commit: a failure (a role that does not own the table may not) is
        logged, and the batch stays written."""
        try:
            with self._connection() as conn:
                conn.execute(sql.SUMMARIZE)
        except StoreError as exc:
            log.warning("trackmw: the page views' index by day was not summarized: %s", exc)

    # -- reading -----------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._connection() as conn:
            return list(conn.execute(sql, params).fetchall())

    def report(self, since: date, until: date) -> Report:
        with self._connection() as conn:
            return sql.report(conn, since, until)

    # -- visitors' rights and retention ---------------------------------------------------

    def visitor_data(self, visitor_id: str) -> dict[str, Any]:
        rows = self._read(
            f"SELECT {sql.PV_COLS} FROM pageviews WHERE visitor_id = %s", (visitor_id,)
        )
        choices = self._read(
            f"SELECT {sql.CC_COLS} FROM consents WHERE visitor_id = %s", (visitor_id,)
        )
        return visitor_document(
            [PageView(r[0], r[1].isoformat(), *r[2:]) for r in rows],
            [ConsentChoice(r[0], r[1].isoformat(), *r[2:]) for r in choices],
        )

    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        who = "visitor_id = %s" + (" OR user_id = %s" if user_id else "")
        args: tuple[str, ...] = (visitor_id, user_id) if user_id else (visitor_id,)
        with self._connection() as conn:
            # Alone: no write is between reading the tombstones and committing (see
            # ``_transaction``).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._erasure_lock,))
            conn.execute(
                "INSERT INTO erasures SELECT unnest(%s::text[]), %s ON CONFLICT (key) "
                "DO UPDATE SET at = greatest(erasures.at, excluded.at)",
                (tombstone_keys(visitor_id, user_id), time.time()),
            )
            # Page views leave the rollups too, so the report is as if they never were: the
            # rollups lose exactly the rows deleted (a batch committed meanwhile included).
            victims = [
                PageView(*row)
                for row in conn.execute(
                    f"DELETE FROM pageviews WHERE {who} RETURNING {sql.PV_COLS}",
                    args,  # noqa: S608
                )
            ]
            removed = len(victims)
            counts = daily_counts(victims)
            if counts:
                keys = sorted(counts)
                conn.execute(
                    "UPDATE daily_counts d SET pageviews = d.pageviews - u.n FROM unnest("
                    "%s::date[], %s::text[], %s::text[], %s::bigint[]) AS u(day, kind, name, n) "
                    "WHERE d.day = u.day AND d.kind = u.kind AND d.name = u.name",
                    [*_columns(keys), [counts[k] for k in keys]],
                )
                conn.execute("DELETE FROM daily_counts WHERE pageviews <= 0")
            # Each of their daily_visitors rows comes from one of these page views (as the
            # rollup counts them): deleted by its key, so no index by visitor is kept.
            rows = sorted(visitor_days(victims))
            if rows:
                conn.execute(
                    "DELETE FROM daily_visitors d USING unnest(%s::date[], %s::text[], "
                    "%s::text[]) AS k(day, visitor_id, user_id) WHERE d.day = k.day "
                    "AND d.visitor_id = k.visitor_id AND d.user_id = k.user_id",
                    _columns(rows),
                )
            removed += conn.execute(
                "DELETE FROM consents WHERE visitor_id = %s", (visitor_id,)
            ).rowcount
        return int(removed)

    def erasures(self, keys: Collection[str]) -> dict[str, float]:
        with self._connection() as conn:
            return _erasures(conn, keys)

    def purge(self, before: date) -> int:
        with self._connection() as conn:
            conn.execute("DELETE FROM erasures WHERE at < %s", (purge_horizon(before),))
            removed = conn.execute("DELETE FROM pageviews WHERE day < %s", (before,)).rowcount
            removed += conn.execute("DELETE FROM consents WHERE day < %s", (before,)).rowcount
            conn.execute("DELETE FROM daily_counts WHERE day < %s", (before,))
            conn.execute("DELETE FROM daily_visitors WHERE day < %s", (before,))
            conn.execute("DELETE FROM batches WHERE at < now() - interval '2 days'")
        return int(removed)


class _Unreachable(StoreError):
    """No pooled connection within ``connect_timeout``: the server is down, or busy."""


class _Batch:
    """A batch as its transaction sends it (``PostgresStore._prepare``), and the thread's
    writing of it once ``send`` has handed it over."""

    __slots__ = ("consents", "copy", "counts", "days", "future", "id", "pageviews", "utf8",
                 "visits")

    def __init__(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice],
                 batch_id: str, utf8: bool | None) -> None:
        self.pageviews = pageviews
        self.consents = consents
        self.id = batch_id
        self.utf8 = utf8  # formatted for connections whose texts go as UTF-8 (None: not yet)
        self.days = _Days()
        self.copy: bytes | None = None  # the page views' whole binary COPY, made in C
        self.counts: list[Any] = []  # ADD_COUNTS' parameters
        self.visits: list[Any] | None = None  # ADD_VISITORS', if any visitor is named
        self.future: Future[None] | None = None


def _drivers() -> Any:
    """psycopg_pool's ``ConnectionPool``, with psycopg imported too (``base.drivers``)."""
    _, pool = drivers("postgres", "psycopg", "psycopg_pool")
    return pool.ConnectionPool


def _together(conn: Any) -> Any:
    """A block whose statements ``conn`` sends together, in pipeline mode; one at a
    time where psycopg's libpq lacks it (before libpq 14)."""
    import psycopg

    return conn.pipeline() if psycopg.Pipeline.is_supported() else nullcontext()


def _rollback(conn: Any) -> None:
    """Roll back the transaction a failed write left open: the pool would, with a
    warning; a broken connection (the server gone) is discarded as it is returned."""
    import psycopg

    try:
        conn.rollback()
    except psycopg.Error as exc:
        log.debug("trackmw: postgresql: rollback after a failed write failed: %s", exc)


def _erasures(conn: Any, keys: Collection[str]) -> dict[str, float]:
    rows = conn.execute("SELECT key, at FROM erasures WHERE key = ANY(%s)", (list(keys),))
    return {key: float(at) for key, at in rows}


def visitor_days(pageviews: Iterable[PageView]) -> dict[tuple[str, str, str], list[Any]]:
    """The ``daily_visitors`` rows that ``pageviews`` add to: ``(day, visitor_id, user_id
    or "")`` -> ``[browser, os, device, page views]``, each of the three the least
    (code-point order) of the group's that are not ``None``, as SQL's ``min`` under the
    C collation. Bots and anonymous page views add none."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    get = groups.get
    for _, day, vid, uid, _, _, _, browser, os_, device, bot in pageviews:
        if bot or vid is None:
            continue
        key = (day, vid, uid or "")
        group = get(key)
        if group is None:
            groups[key] = [browser, os_, device, 1]
            continue
        group[3] += 1
        if browser != group[0] or os_ != group[1] or device != group[2]:  # seldom
            for i, value in ((0, browser), (1, os_), (2, device)):
                if value is not None and (group[i] is None or value < group[i]):
                    group[i] = value
    return groups


#: ``date(2000, 1, 1)``: PostgreSQL's binary formats count days from it.
_PG_EPOCH = 730120


def _day_numbers(pageviews: Sequence[PageView], days: _Days) -> dict[str, int]:
    """Each day text of ``pageviews`` -> its day as PostgreSQL's binary formats hold it,
    for ``copy_pageviews`` and ``pg_columns``; a day that is not a date's text raises
    ``StoreError`` (``_Days``). (The C leaves a batch to psycopg if a day is not an exact
    ``str``.)"""
    return {day: days[day].toordinal() - _PG_EPOCH for day in set(map(itemgetter(1), pageviews))}


def _formatter(name: str, numbers: dict[str, int] | None) -> Callable[..., Any] | None:
    """The C speedup ``name`` (``copy_pageviews`` or ``pg_columns``) for a batch with
    day numbers; None without them (the texts do not go as UTF-8) or without the
    speedups."""
    return None if numbers is None else speedup(name)


def _arrays(rows: dict[Any, Any], types: str, numbers: dict[str, int] | None) -> list[Any]:
    """``rows``' columns, as ``unnest`` takes them (a row is its key's items, then its
    value, an int, or the value's items): binary arrays made in C (``pg_columns``, typed
    by the letters of ``types``), or lists for psycopg to format when the C leaves them."""
    pg_columns = _formatter("pg_columns", numbers)
    columns = None if pg_columns is None else pg_columns(rows, types, numbers)
    if columns is None:
        values = list(rows.values())
        return _columns(rows) + (
            _columns(values) if values and isinstance(values[0], list) else [values]
        )
    kinds = _array_types()
    return [kinds[letter][0](column) for letter, column in zip(types, columns, strict=True)]


def _array_types() -> dict[str, tuple[type[bytes], type[Any]]]:
    """``_make_array_types()``, made once: the pool's threads configure connections
    with its dumpers while ``send`` formats arrays of its types in another thread, and
    two sets of types would leave those arrays without a dumper (sent as ``bytea``)."""
    with _array_types_lock:
        return _make_array_types()


_array_types_lock = threading.Lock()


@cache
def _make_array_types() -> dict[str, tuple[type[bytes], type[Any]]]:
    """``pg_columns``' letters -> the ``bytes`` type its arrays are sent as, and the
    psycopg dumper (``_configure`` registers it) that sends them as they are, typed
    ``date[]``, ``text[]`` or ``bigint[]``."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class ArrayDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Any) -> Any:
            return obj

    return {
        letter: (type(name, (bytes,), {}), type(name + "Dumper", (ArrayDumper,), {"oid": oid}))
        for letter, name, oid in (
            ("d", "DateArray", 1182), ("t", "TextArray", 1009), ("i", "BigintArray", 1016)
        )
    }


def _columns(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """``rows`` as one list per column, as ``unnest`` takes them."""
    return [list(column) for column in zip(*rows, strict=True)]


class _Days(dict[str, date]):
    """``date`` objects of page views' days, each text parsed once (binary ``COPY``
    takes dates); a day that is not a ``YYYY-MM-DD`` text is a ``StoreError``, as the
    server's refusal of it in a text ``COPY`` was. (``date.fromisoformat`` also reads
    ISO week dates and ``YYYYMMDD``, which the server's ``date`` input refuses or which
    would make a second rollup key for the same day.)"""

    def __missing__(self, day: str) -> date:
        try:
            parsed = date.fromisoformat(day)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or parsed.isoformat() != day:
            raise StoreError(f"postgresql: a page view's day {day!r} is not a YYYY-MM-DD date")
        self[day] = parsed
        return parsed


def _lock_key(purpose: str, schema: str) -> int:
    """An advisory lock's key, one per purpose and schema."""
    digest = hashlib.blake2b((purpose + schema).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _configure(conn: Any) -> None:
    """A pooled connection, set up: each statement of a write or an erasure sees what
    committed before it (see the module), whatever isolation the server or the URL's
    options default to; ``pg_columns``' arrays are sent as they are."""
    import psycopg

    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    for array, dumper in _array_types().values():
        conn.adapters.register_dumper(array, dumper)
