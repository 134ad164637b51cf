"""``sqlite:///path``: the embedded default, one file shared by every worker process.

The file is opened in WAL mode (readers never block the writer), each batch is one
``BEGIN IMMEDIATE`` transaction (one writer at a time across processes, the others wait
up to ``busy_timeout``), so several gunicorn workers can write one file. A batch that
still cannot get the lock raises ``StoreError`` and the pipeline retries it whole.

Reports read from two small tables kept up to date in the same transaction as the
events (daily rollups): ``daily_visitors`` (one row per visitor and day, with its
browser, OS and device) and ``daily_counts`` (page views per day and dimension).
The raw ``pageviews`` table is kept for what rollups cannot answer: a visitor's own
data, erasure and distinct counts per page.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from datetime import date
from typing import Any

from ..errors import ConfigurationError, StoreError
from ..events import ConsentChoice, PageView
from ..report import TOP_N, Report, day_range, ranked
from .base import Store
from .memory import visitor_document

__all__ = ["SQLiteStore"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pageviews (
    ts REAL NOT NULL,
    day TEXT NOT NULL,
    visitor_id TEXT,
    user_id TEXT,
    path TEXT NOT NULL,
    referrer TEXT,
    campaign TEXT,
    browser TEXT,
    os TEXT,
    device TEXT,
    bot INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pageviews_day_path ON pageviews (day, path);
CREATE INDEX IF NOT EXISTS pageviews_visitor ON pageviews (visitor_id) WHERE visitor_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS daily_counts (
    day TEXT NOT NULL,
    kind TEXT NOT NULL,      -- 'total', 'anonymous', 'bot', 'referrer', 'campaign', 'page'
    name TEXT NOT NULL,
    pageviews INTEGER NOT NULL,
    PRIMARY KEY (day, kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS daily_visitors (
    day TEXT NOT NULL,
    visitor_id TEXT NOT NULL,
    user_id TEXT NOT NULL,   -- '' when no user is linked
    browser TEXT,
    os TEXT,
    device TEXT,
    pageviews INTEGER NOT NULL,
    PRIMARY KEY (day, visitor_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS daily_visitors_visitor ON daily_visitors (visitor_id);
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
CREATE INDEX IF NOT EXISTS consents_day ON consents (day);
CREATE INDEX IF NOT EXISTS consents_visitor ON consents (visitor_id) WHERE visitor_id IS NOT NULL;
"""


class SQLiteStore(Store):
    """One SQLite file in WAL mode; a connection per thread."""

    schemes = ("sqlite",)
    busy_timeout = 30.0

    def __init__(self, url: str, settings: Any = None) -> None:
        super().__init__(url, settings)
        self.path = self.path_of(url)
        self._local = threading.local()
        self._schema_ready = False
        self._pid = os.getpid()

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

    # -- connections -------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self.after_fork()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
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
            conns = self._all_conns = []
        return conns

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executescript("SAVEPOINT schema;" + _SCHEMA + "RELEASE schema;")
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._schema_ready = True

    def close(self) -> None:
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

    # -- writing -----------------------------------------------------------------------

    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        if not pageviews and not consents:
            return
        counts: dict[tuple[str, str, str], int] = {}
        visitors: dict[tuple[str, str, str], list[Any]] = {}
        for pv in pageviews:
            day = pv.day
            if pv.bot:
                key = (day, "bot", "")
                counts[key] = counts.get(key, 0) + 1
                continue
            for key in _count_keys(pv):
                counts[key] = counts.get(key, 0) + 1
            if pv.visitor_id is not None:
                vkey = (day, pv.visitor_id, pv.user_id or "")
                row = visitors.get(vkey)
                if row is None:
                    visitors[vkey] = [*vkey, pv.browser, pv.os, pv.device, 1]
                else:
                    row[6] += 1
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO pageviews VALUES (?,?,?,?,?,?,?,?,?,?,?)", pageviews
                )
                conn.executemany(
                    "INSERT INTO daily_counts VALUES (?,?,?,?) ON CONFLICT (day, kind, name) "
                    "DO UPDATE SET pageviews = pageviews + excluded.pageviews",
                    [(d, k, n, c) for (d, k, n), c in counts.items()],
                )
                conn.executemany(
                    "INSERT INTO daily_visitors VALUES (?,?,?,?,?,?,?) "
                    "ON CONFLICT (day, visitor_id, user_id) DO UPDATE SET "
                    "pageviews = pageviews + excluded.pageviews",
                    list(visitors.values()),
                )
                conn.executemany(
                    "INSERT INTO consents VALUES (?,?,?,?,?,?,?,?)", consents
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"writing to {self.path} failed: {exc}") from exc

    # -- reading -----------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path} failed: {exc}") from exc

    def report(self, since: date, until: date) -> Report:
        lo, hi = since.isoformat(), until.isoformat()
        span = (lo, hi)
        report = Report(since=since, until=until)
        totals = dict(
            self._read(
                "SELECT kind, sum(pageviews) FROM daily_counts WHERE day BETWEEN ? AND ? "
                "AND kind IN ('total', 'anonymous', 'bot') GROUP BY kind",
                span,
            )
        )
        report.pageviews = totals.get("total") or 0
        report.anonymous_pageviews = totals.get("anonymous") or 0
        report.bot_hits = totals.get("bot") or 0
        (report.visitors, report.registered_visitors), = self._read(
            "SELECT count(DISTINCT visitor_id), count(DISTINCT nullif(user_id, '')) "
            "FROM daily_visitors "
            "WHERE day BETWEEN ? AND ?",
            span,
        )
        day_pv = dict(
            self._read(
                "SELECT day, pageviews FROM daily_counts WHERE day BETWEEN ? AND ? "
                "AND kind = 'total'",
                span,
            )
        )
        day_vis = dict(
            self._read(
                "SELECT day, count(DISTINCT visitor_id) FROM daily_visitors "
                "WHERE day BETWEEN ? AND ? GROUP BY day",
                span,
            )
        )
        report.days = [
            {"day": d, "pageviews": day_pv.get(d, 0), "visitors": day_vis.get(d, 0)}
            for d in (x.isoformat() for x in day_range(since, until))
        ]
        pages = self._read(
            "SELECT name, sum(pageviews) AS n FROM daily_counts WHERE day BETWEEN ? AND ? "
            "AND kind = 'page' GROUP BY name ORDER BY n DESC, name LIMIT ?",
            (lo, hi, TOP_N),
        )
        page_visitors = self._page_visitors(lo, hi, [p for p, _ in pages])
        report.pages = [
            {"path": path, "pageviews": n, "visitors": page_visitors.get(path, 0)}
            for path, n in pages
        ]
        for attr, column in (("browsers", "browser"), ("os", "os"), ("devices", "device")):
            rows = self._read(
                f"SELECT {column}, count(DISTINCT visitor_id) FROM daily_visitors "  # noqa: S608
                f"WHERE day BETWEEN ? AND ? AND {column} IS NOT NULL GROUP BY {column}",
                span,
            )
            setattr(report, attr, ranked(dict(rows), "visitors"))
        for attr, kind in (("referrers", "referrer"), ("campaigns", "campaign")):
            rows = self._read(
                "SELECT name, sum(pageviews) FROM daily_counts WHERE day BETWEEN ? AND ? "
                "AND kind = ? GROUP BY name",
                (lo, hi, kind),
            )
            setattr(report, attr, ranked(dict(rows), "pageviews"))
        (accepted, rejected), = self._read(
            "SELECT coalesce(sum(analytics), 0), coalesce(sum(1 - analytics), 0) "
            "FROM consents WHERE day BETWEEN ? AND ?",
            span,
        )
        report.consent = {"accepted": accepted, "rejected": rejected}
        return report

    def _page_visitors(self, lo: str, hi: str, paths: list[str]) -> dict[str, int]:
        if not paths:
            return {}
        marks = ",".join("?" * len(paths))
        rows = self._read(
            "SELECT path, count(DISTINCT visitor_id) FROM pageviews "  # noqa: S608
            f"WHERE day BETWEEN ? AND ? AND bot = 0 AND path IN ({marks}) GROUP BY path",
            (lo, hi, *paths),
        )
        return dict(rows)

    # -- visitors' rights and retention ---------------------------------------------------

    def visitor_data(self, visitor_id: str) -> dict[str, Any]:
        rows = self._read("SELECT * FROM pageviews WHERE visitor_id = ?", (visitor_id,))
        choices = self._read("SELECT * FROM consents WHERE visitor_id = ?", (visitor_id,))
        return visitor_document(
            [PageView(*r[:10], bool(r[10])) for r in rows],
            [ConsentChoice(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5], bool(r[6]), bool(r[7])) for r in choices],
        )

    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = 0
                who = "visitor_id = ?" + (" OR user_id = ?" if user_id else "")
                args: tuple[str, ...] = (visitor_id, user_id) if user_id else (visitor_id,)
                # Page views leave the rollups too, so the report is as if they never were.
                victims = conn.execute(
                    f"SELECT day, path, referrer, campaign, visitor_id, bot FROM pageviews WHERE {who}",  # noqa: S608
                    args,
                ).fetchall()
                counts: dict[tuple[str, str, str], int] = {}
                for day, path, referrer, campaign, vid, bot in victims:
                    keys = [(day, "bot", "")] if bot else _count_keys(
                        PageView(0, day, vid, None, path, referrer, campaign, None, None, None, False)
                    )
                    for key in keys:
                        counts[key] = counts.get(key, 0) + 1
                conn.executemany(
                    "UPDATE daily_counts SET pageviews = pageviews - ? "
                    "WHERE day = ? AND kind = ? AND name = ?",
                    [(c, d, k, n) for (d, k, n), c in counts.items()],
                )
                conn.execute("DELETE FROM daily_counts WHERE pageviews <= 0")
                removed += conn.execute(f"DELETE FROM pageviews WHERE {who}", args).rowcount  # noqa: S608
                conn.execute(f"DELETE FROM daily_visitors WHERE {who}", args)  # noqa: S608
                removed += conn.execute(
                    "DELETE FROM consents WHERE visitor_id = ?", (visitor_id,)
                ).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"erasing from {self.path} failed: {exc}") from exc
        return removed

    def purge(self, before: date) -> int:
        cut = before.isoformat()
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = conn.execute("DELETE FROM pageviews WHERE day < ?", (cut,)).rowcount
                removed += conn.execute("DELETE FROM consents WHERE day < ?", (cut,)).rowcount
                conn.execute("DELETE FROM daily_counts WHERE day < ?", (cut,))
                conn.execute("DELETE FROM daily_visitors WHERE day < ?", (cut,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"purging {self.path} failed: {exc}") from exc
        return removed


def _count_keys(pv: PageView) -> list[tuple[str, str, str]]:
    """The ``daily_counts`` rows one non-bot page view adds one to."""
    keys = [(pv.day, "total", ""), (pv.day, "page", pv.path)]
    if pv.visitor_id is None:
        keys.append((pv.day, "anonymous", ""))
    if pv.referrer:
        keys.append((pv.day, "referrer", pv.referrer))
    if pv.campaign:
        keys.append((pv.day, "campaign", pv.campaign))
    return keys
