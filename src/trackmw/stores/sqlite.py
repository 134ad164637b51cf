"""``sqlite:///path``: the embedded default, one file shared by every worker process.

The file is opened in WAL mode (readers never block the writer), each write is one
``BEGIN IMMEDIATE`` transaction (one writer at a time across processes, the others wait
up to ``busy_timeout``), so several gunicorn workers can write one file. The batches
the pipeline's writer sends one after another (when it is behind) are held and written
together, up to ``group_events`` a transaction. A group that still cannot get the lock
raises ``StoreError``; the store keeps it and writes it whole on the next ``send`` or
``sync`` (the batch whose ``send`` failed stays the pipeline's, to send again).

Reports never read the raw events. Rollups kept up to date in the same transaction
as the events answer them: ``daily_counts`` (page views per day and dimension: totals,
pages, referrers, campaigns) and the sets of ``sqlite_uniques`` (exact distinct
visitors and users, overall, per day, per page, browser, OS and device, over any range
of days). A 30-day report over a million events reads a few thousand small rows. The
raw page views (``sqlite_pageviews``) are kept for a visitor's own data, erasure and
rebuilding.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from datetime import date
from functools import partial
from typing import Any

from ..errors import ConfigurationError, StoreError
from ..events import ConsentChoice, PageView
from ..report import TOP_N, Report, day_range, ranked
from . import sqlite_pageviews as stored
from .base import Held, Store, daily_counts, purge_horizon, tombstone_keys, unerased
from .memory import visitor_document
from .sqlite_rows import insert_rows, select_in
from .sqlite_uniques import ALL_USERS, ALL_VISITORS, Uniques
from .sqlite_uniques import SCHEMA as UNIQUES_SCHEMA

__all__ = ["SQLiteStore"]

log = logging.getLogger("trackmw")

#: Seconds an erasure or a purge waits for readers before truncating the WAL
#: (``_truncate_wal``): meanwhile, every writer of the file waits too.
TRUNCATE_WAIT = 0.25

#: Seconds ``close`` waits for the lock to write held batches whose last write failed.
_LAST_TRY = 1.0

#: 2: distinct counts from uniq_* link tables instead of daily_visitors.
#: 3: page views in pageview_groups (sqlite_pageviews) instead of one row each.
#: 4: distinct counts from sets of ordinals (uniq_ids, uniq_sets) instead of chains
#: and links (uniq_entities, uniq_links).
SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS daily_counts (
    day TEXT NOT NULL,
    kind TEXT NOT NULL,      -- 'total', 'anonymous', 'bot', 'referrer', 'campaign', 'page'
    name TEXT NOT NULL,
    pageviews INTEGER NOT NULL,
    PRIMARY KEY (day, kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consents (
    ts REAL NOT NULL,
    day TEXT NOT NULL,
    visitor_id TEXT,
    analytics INTEGER NOT NULL,
    preferences INTEGER NOT NULL,
    policy_version TEXT NOT NULL,
    minor INTEGER NOT NULL DEFAULT 0,
    guardian INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS erasures (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
-- The latest erasure, read before each batch (and purge's cut).
CREATE INDEX IF NOT EXISTS erasures_at ON erasures (at);
CREATE INDEX IF NOT EXISTS consents_day ON consents (day);
CREATE INDEX IF NOT EXISTS consents_visitor ON consents (visitor_id) WHERE visitor_id IS NOT NULL;
"""


class SQLiteStore(Store):
    """One SQLite file in WAL mode; a connection per thread."""

    schemes = ("sqlite",)
    busy_timeout = 30.0
    drops_erased = True
    #: The most events ``send`` holds back to write in one transaction. A writer that
    #: finds several batches waiting (a backlog) sends them one after another: one
    #: commit of five batches writes each set and rollup page it touches once, not five
    #: times (the bench's 201,000 events on a 2-core VM, with schema 3's chains: 107k to
    #: 114k events/s with one batch of 1,000 a transaction, 126k to 134k with five).
    group_events = 5_000

    def __init__(self, url: str, settings: Any = None) -> None:
        super().__init__(url, settings)
        self.path = self.path_of(url)
        self._local = threading.local()
        self._schema_ready = False
        self._uniques = Uniques()
        self._pid = os.getpid()
        self._held = Held()
        self._held_lock = threading.Lock()
        self._held_failed = False  # the last attempt to write what is held failed

    @staticmethod
    def path_of(url: str) -> str:
        rest = url.split("://", 1)[1]
        if not rest.startswith("/") or rest == "/":
            raise ConfigurationError(
                "store", f"{url!r}: use sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        path = rest[1:]
        return path if path == ":memory:" else os.path.expanduser(path)

    @classmethod
    def check_url(cls, url: str) -> None:
        cls.path_of(url)

    @classmethod
    def in_process(cls, url: str) -> bool:
        return cls.path_of(url) == ":memory:"

    # -- connections -------------------------------------------------------------------

    def _mine(self) -> None:
        """In a forked child, first forget the parent's connections and held batches."""
        if self._pid != os.getpid():
            self.after_fork()

    def _conn(self) -> sqlite3.Connection:
        self._mine()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
                _wal(conn, self.busy_timeout)
                for pragma in PRAGMAS:
                    conn.execute("PRAGMA " + pragma)
                if not self._schema_ready:
                    self._migrate(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {self.path}: {exc}") from exc
            self._local.conn = conn
            self._connections().append(conn)
        return conn

    def _connections(self) -> list[sqlite3.Connection]:
        conns: list[sqlite3.Connection] | None = getattr(self, "_all_conns", None)
        if conns is None:
            conns = []
            self._all_conns = conns
        return conns

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn):
            # One statement at a time: executescript() would commit the transaction first.
            for statement in (_SCHEMA + stored.SCHEMA + UNIQUES_SCHEMA).split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and row[0] in ("1", "2"):
                # Schemas 1 and 2 kept one row per page view.
                stored.from_schema_2(conn)
            if row is not None and row[0] in ("1", "2", "3"):
                # Schema 1 counted distinct visitors from daily_visitors, 2 and 3 from
                # chains and links: the sets are made from the stored page views.
                for table in ("daily_visitors", "uniq_links", "uniq_entities"):
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
                self._uniques.rebuild_all(conn)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        self._schema_ready = True

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One write transaction, ``BEGIN IMMEDIATE`` to ``COMMIT``. On any error the
        dimension ids it made leave the cache, before the ``ROLLBACK`` lets another
        writer in (which would otherwise be given the same ids), and it rolls back."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            self._uniques.rolled_back()
            _rollback(conn)
            raise

    def close(self) -> None:
        self._mine()
        if self._held_failed and self.held():
            # The last try failed: this one waits a second at most (the pipeline's close
            # may have just waited busy_timeout for it).
            with contextlib.suppress(StoreError, sqlite3.Error):  # sync says why
                self._conn().execute(f"PRAGMA busy_timeout = {int(_LAST_TRY * 1000)}")
        self._sync_at_close()
        for conn in self._connections():
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._all_conns = []
        self._local = threading.local()

    def after_fork(self) -> None:
        # The parent's connections must not be used (or closed) in the child.
        self._all_conns = []
        self._local = threading.local()
        self._pid = os.getpid()
        self._held = Held()  # the parent's to write
        self._held_lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------

    def send(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        """Hold the batch, to be written with the batches sent after it in one
        transaction of up to ``group_events``; ``sync`` writes what is held.

        The pipeline's writer sends every batch it finds waiting, then syncs: one batch
        at a time when it keeps up, several in one transaction when it is behind.
        """
        self._mine()
        with self._held_lock:
            if self._held.overflows(pageviews, consents, self.group_events):
                self._write_held()  # if that fails, this batch is not taken
            self._held.add(pageviews, consents)

    def held(self) -> int:
        return len(self._held)

    def sync(self) -> None:
        self._mine()
        with self._held_lock:
            if self.held():
                self._write_held()

    def _write_held(self) -> None:
        """Write the held batches as one, and let them go (kept if that fails)."""
        self._held_failed = True
        self._write(self._held.pageviews, self._held.consents)
        self._held, self._held_failed = Held(), False

    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        """Write one batch now, in a transaction of its own, after any batch ``send``
        holds (in the order they came)."""
        self.sync()
        self._write(pageviews, consents)

    def _write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        if not pageviews and not consents:
            return
        counts = daily_counts(pageviews)
        groups = stored.group(pageviews)
        conn = self._conn()
        try:
            with self._transaction(conn):
                # Asked inside the transaction: an erasure (BEGIN IMMEDIATE as well)
                # comes wholly before or after this batch, never in between.
                ((latest,),) = conn.execute("SELECT max(at) FROM erasures").fetchall()
                kept = unerased(pageviews, consents, partial(_erasures, conn), latest)
                if kept is not None:
                    pageviews, consents = kept
                    counts = daily_counts(pageviews)
                    groups = stored.group(pageviews)
                stored.add(conn, groups)
                insert_rows(
                    conn,
                    "INSERT INTO daily_counts",
                    sorted((*key, n) for key, n in counts.items()),  # in key order
                    "ON CONFLICT (day, kind, name) "
                    "DO UPDATE SET pageviews = pageviews + excluded.pageviews",
                )
                self._uniques.add(conn, groups)
                conn.executemany("INSERT INTO consents VALUES (?,?,?,?,?,?,?,?)", consents)
        except sqlite3.Error as exc:
            raise StoreError(f"writing to {self.path} failed: {exc}") from exc

    # -- reading -----------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path} failed: {exc}") from exc

    def report(self, since: date, until: date) -> Report:
        conn = self._conn()
        try:
            conn.execute("BEGIN")  # one snapshot for every query of the report
            try:
                return self._report(conn, since, until)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path} failed: {exc}") from exc

    def _report(self, conn: sqlite3.Connection, since: date, until: date) -> Report:
        lo, hi = since.isoformat(), until.isoformat()
        report = Report(since=since, until=until)
        counts: dict[str, dict[str, int]] = {}
        for kind, name, n in conn.execute(
            "SELECT kind, name, sum(pageviews) FROM daily_counts WHERE day BETWEEN ? AND ? "
            "AND kind IN ('total', 'anonymous', 'bot', 'referrer', 'campaign') "
            "GROUP BY kind, name",
            (lo, hi),
        ):
            counts.setdefault(kind, {})[name] = n
        report.pageviews = counts.get("total", {}).get("", 0)
        report.anonymous_pageviews = counts.get("anonymous", {}).get("", 0)
        report.bot_hits = counts.get("bot", {}).get("", 0)
        report.referrers = ranked(counts.get("referrer", {}), "pageviews")
        report.campaigns = ranked(counts.get("campaign", {}), "pageviews")
        day_pv = dict(
            conn.execute(
                "SELECT day, pageviews FROM daily_counts WHERE day BETWEEN ? AND ? "
                "AND kind = 'total' AND name = ''",
                (lo, hi),
            ).fetchall()
        )
        pages = conn.execute(
            "SELECT name, sum(pageviews) AS n FROM daily_counts WHERE day BETWEEN ? AND ? "
            "AND kind = 'page' GROUP BY name ORDER BY n DESC, name LIMIT ?",
            (lo, hi, TOP_N),
        ).fetchall()
        uniques = self._uniques
        dims = uniques.dims(conn, ("visitors", "users", "browser", "os", "device"))
        page_dims = uniques.page_dims(conn, [path for path, _ in pages])
        distinct = uniques.count(conn, [*dims, *page_dims], since, until)
        by_kind: dict[str, dict[str, int]] = {}
        for dim, (kind, name) in dims.items():
            if dim in distinct:
                by_kind.setdefault(kind, {})[name] = distinct[dim]
        report.visitors = by_kind.get(ALL_VISITORS[0], {}).get("", 0)
        report.registered_visitors = by_kind.get(ALL_USERS[0], {}).get("", 0)
        report.browsers = ranked(by_kind.get("browser", {}), "visitors")
        report.os = ranked(by_kind.get("os", {}), "visitors")
        report.devices = ranked(by_kind.get("device", {}), "visitors")
        page_visitors = {path: distinct.get(dim, 0) for dim, path in page_dims.items()}
        report.pages = [
            {"path": path, "pageviews": n, "visitors": page_visitors.get(path, 0)}
            for path, n in pages
        ]
        all_dim = next((d for d, key in dims.items() if key == ALL_VISITORS), None)
        day_vis = uniques.per_day(conn, all_dim, since, until) if all_dim is not None else {}
        report.days = [
            {"day": d, "pageviews": day_pv.get(d, 0), "visitors": day_vis.get(d, 0)}
            for d in (x.isoformat() for x in day_range(since, until))
        ]
        ((accepted, rejected),) = conn.execute(
            "SELECT coalesce(sum(analytics), 0), coalesce(sum(1 - analytics), 0) "
            "FROM consents WHERE day BETWEEN ? AND ?",
            (lo, hi),
        ).fetchall()
        report.consent = {"accepted": accepted, "rejected": rejected}
        return report

    # -- visitors' rights and retention ---------------------------------------------------

    def visitor_data(self, visitor_id: str) -> dict[str, Any]:
        try:
            _, pageviews = stored.of(self._conn(), "visitor_id", visitor_id)
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path} failed: {exc}") from exc
        choices = self._read("SELECT * FROM consents WHERE visitor_id = ?", (visitor_id,))
        return visitor_document(
            pageviews,
            [
                ConsentChoice._make((*r[:3], *map(bool, r[3:5]), r[5], *map(bool, r[6:8])))
                for r in choices
            ],
        )

    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        conn = self._conn()
        try:
            with self._transaction(conn):
                conn.executemany(
                    "INSERT INTO erasures VALUES (?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET at = max(at, excluded.at)",
                    [(key, time.time()) for key in tombstone_keys(visitor_id, user_id)],
                )
                # Page views leave the rollups too, so the report is as if they never were.
                groups, victims = stored.of(conn, "visitor_id", visitor_id)
                if user_id:
                    # The visitor's own groups with this user are found twice: once.
                    more_groups, more = stored.of(conn, "user_id", user_id)
                    victims += [v for v in more if v.visitor_id != visitor_id]
                    groups = sorted(set(groups) | set(more_groups))
                counts = daily_counts(victims)
                conn.executemany(
                    "UPDATE daily_counts SET pageviews = pageviews - ? "
                    "WHERE day = ? AND kind = ? AND name = ?",
                    [(c, d, k, n) for (d, k, n), c in counts.items()],
                )
                conn.execute("DELETE FROM daily_counts WHERE pageviews <= 0")
                conn.executemany(
                    "DELETE FROM pageview_groups WHERE rowid = ?", [(g,) for g in groups]
                )
                removed = len(victims)
                self._uniques.remove(conn, victims)
                removed += conn.execute(
                    "DELETE FROM consents WHERE visitor_id = ?", (visitor_id,)
                ).rowcount
            _truncate_wal(conn, self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"erasing from {self.path} failed: {exc}") from exc
        return removed

    def erasures(self, keys: Collection[str]) -> dict[str, float]:
        try:
            return _erasures(self._conn(), keys)
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path} failed: {exc}") from exc

    def purge(self, before: date) -> int:
        cut = before.isoformat()
        conn = self._conn()
        try:
            with self._transaction(conn):
                removed = stored.purge(conn, cut)
                removed += conn.execute("DELETE FROM consents WHERE day < ?", (cut,)).rowcount
                conn.execute("DELETE FROM daily_counts WHERE day < ?", (cut,))
                conn.execute("DELETE FROM erasures WHERE at < ?", (purge_horizon(before),))
                self._uniques.purge(conn, before)
            _truncate_wal(conn, self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"purging {self.path} failed: {exc}") from exc
        return removed


def _erasures(conn: sqlite3.Connection, keys: Collection[str]) -> dict[str, float]:
    return dict(select_in(conn, "SELECT key, at FROM erasures WHERE key IN ({})", list(keys)))


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back, unless SQLite already has (``SQLITE_FULL``, ``SQLITE_IOERR``, ...).

    A second ``ROLLBACK`` fails with "no transaction is active", and that error would
    replace the real cause ("database or disk is full") in the log.
    """
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _truncate_wal(conn: sqlite3.Connection, path: str) -> None:
    """After an erasure or a purge has committed: no copy of what it deleted is left in
    the WAL either.

    The connection overwrites deleted rows with zeros (``secure_delete``, set on every
    connection), on their pages and on pages freed whole, but the WAL still holds the
    pages as they were before. It is copied into the file and truncated. That needs no
    read transaction open on the file, in any process, and blocks writers while it
    waits: it waits ``TRUNCATE_WAIT`` at most, not the busy timeout. If it cannot
    finish, a warning says so and the erasure or purge stands; the old pages stay in
    the WAL until the next erasure or purge truncates it, or the last connection to the
    file closes (SQLite then checkpoints and deletes it).
    """
    try:
        (timeout_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
        conn.execute(f"PRAGMA busy_timeout={int(TRUNCATE_WAIT * 1000)}")
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
        why = "other connections were reading or writing" if busy else None
    except sqlite3.Error as exc:  # the deletion stands: it has committed
        why = str(exc)
    if why:
        log.warning("trackmw: the WAL of %s could not be truncated after an erasure or a "
                    "purge (%s): the deleted rows stay in it until the next erasure or "
                    "purge, or until the last connection closes", path, why)


#: Every connection's settings, once in WAL mode (``_wal``).
PRAGMAS = (
    # Under WAL, NORMAL syncs at checkpoints only: a commit survives the process
    # crashing; a power loss or OS crash may undo the last commits but leaves the file
    # consistent.
    "synchronous=NORMAL",
    # Deleted rows (an erasure's, a purge's) are overwritten with zeros, not only marked
    # free: Debian's SQLite does so by default, other builds not.
    "secure_delete=ON",
    # Rollup and index pages stay cached between batches (the default is 2 MB).
    "cache_size=-32768",
    # A checkpoint copies the WAL's pages into the file and syncs it. Batches dirty
    # mostly the same rollup and set pages again: checkpointing every 16 MB instead of
    # 4 MB copies each of them once for several batches.
    "wal_autocheckpoint=4000",
)


def _wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode (it stays so), waiting up to ``timeout`` for the lock.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database
    is locked" at once, without its busy handler, when another process holds one: two
    workers opening a new file together (gunicorn's at shutdown) would lose a batch.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
