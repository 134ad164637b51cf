"""Exact distinct counts (visitors, users, visitors per page / browser / OS / device) over
any range of days, from small SQLite tables, for ``SQLiteStore``.

Page views per day add up; distinct visitors do not (a visitor seen on Monday and on
Tuesday is one visitor of the two days), and scanning one row per visitor and day for a
30-day report over a million events is far too slow. Instead, for every *dimension*
(all visitors, all users, one page, one browser, …) each visitor's visit days form a
chain ``d1 < d2 < …``, and the store keeps its *links* ``(day=d_i, prev=d_{i-1})``, with
``prev = -1`` for the first. A visitor seen in ``[lo, hi]`` has exactly one day there
whose previous visit lies before ``lo``, so::

    distinct(dimension, lo, hi) = count of links with lo <= day <= hi and prev < lo

``uniq_links`` holds those links counted per ``(dim, day, prev)``: a report is one
indexed range sum per dimension, whatever the number of events. ``uniq_entities``
keeps each visitor's (``v:<id>``) and user's (``u:<id>``) chains, one row each, so that
writes (also of days out of order), erasure and retention add and remove links exactly;
one row per visitor keeps the pages a batch dirties few (visitor ids are random keys).
Days are ``date.toordinal()`` numbers.

How a row holds its chains, and how a batch extends them, is ``sqlite_chains``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import date

from ..events import PageView
from . import sqlite_chains as codec
from . import sqlite_pageviews as stored
from .sqlite_chains import Class, Delta

__all__ = ["SCHEMA", "Uniques"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS uniq_dims (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,      -- 'visitors', 'users', 'page', 'browser', 'os', 'device'
    name TEXT NOT NULL,
    UNIQUE (kind, name)
);
CREATE TABLE IF NOT EXISTS uniq_links (
    dim INTEGER NOT NULL,
    day INTEGER NOT NULL,
    prev INTEGER NOT NULL,   -- the previous visit day of the same dimension, -1 for none
    n INTEGER NOT NULL,
    PRIMARY KEY (dim, day, prev)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uniq_entities (
    key TEXT PRIMARY KEY,    -- 'v:<visitor id>' or 'u:<user id>'
    chains TEXT NOT NULL     -- per dimension 'dim:day,day,...' (ascending), semicolon-joined
) WITHOUT ROWID;
"""

#: The dimensions a visitor's page view belongs to, besides its page.
ALL_VISITORS = ("visitors", "")
ALL_USERS = ("users", "")

Visits = dict[str, dict[int, set[int]]]  # entity key -> dimension id -> days (ordinals)
Classes = dict[str, dict[Class, set[int]]]  # visitor key -> its classes -> days


class Uniques:
    """The link tables of one store. Methods run inside the caller's transaction."""

    def __init__(self) -> None:
        # kind -> name -> dimension id; ids are never deleted, so they stay valid across
        # processes. Ids created by the open transaction are also listed in _pending.
        self._ids: dict[str, dict[str, int]] = {}
        self._pending: list[tuple[str, str]] = []
        self._days: dict[str, int] = {}

    def committed(self, ok: bool) -> None:
        """Call after the transaction ended: new dimension ids are cached only if kept."""
        if not ok:
            for kind, name in self._pending:
                self._ids[kind].pop(name, None)
        self._pending = []

    # -- writing ----------------------------------------------------------------------

    def add(self, conn: sqlite3.Connection, groups: stored.Groups) -> None:
        """Add the visits of these page views (``sqlite_pageviews.group``) to the chains
        and their links."""
        self._link(conn, *self._visits(conn, groups))

    def remove(self, conn: sqlite3.Connection, entities: Sequence[str]) -> None:
        """Forget these visitors' and users' chains, and their links."""
        delta: Delta = {}
        visitors = self._id(conn, *ALL_VISITORS)
        for chains in self._load(conn, entities).values():
            for dim, text in codec.split(chains, visitors).items():
                prev = -1
                for day in codec.parse_days(text):
                    codec.bump(delta, (dim, day, prev), -1)
                    prev = day
        conn.executemany("DELETE FROM uniq_entities WHERE key = ?", [(e,) for e in entities])
        _apply(conn, delta)

    def rebuild(
        self, conn: sqlite3.Connection, visitors: Iterable[str], users: Iterable[str]
    ) -> None:
        """Recompute these visitors' and users' chains from the stored page views."""
        visitors, users = list(visitors), list(users)
        entities = ["v:" + v for v in visitors] + ["u:" + u for u in users]
        if not entities:
            return
        self.remove(conn, entities)
        rows: list[PageView] = []
        for visitor in visitors:
            rows += stored.of(conn, "visitor_id", visitor)[1]
        for user in users:
            rows += stored.of(conn, "user_id", user)[1]
        visits, classes = self._visits(conn, stored.group(rows))
        # A visitor's page views name its users too (and a user's, its other visitors):
        # only the chains asked for are rebuilt, the others are already right.
        wanted = set(entities) & visits.keys()
        self._link(
            conn,
            {key: visits[key] for key in wanted},
            {key: classes[key] for key in wanted & classes.keys()},
        )

    def rebuild_all(self, conn: sqlite3.Connection) -> None:
        """Recompute every chain from the stored page views (migration from schema 1)."""
        conn.execute("DELETE FROM uniq_links")
        conn.execute("DELETE FROM uniq_entities")
        for rows in stored.all_pageviews(conn):
            self.add(conn, stored.group(rows))

    def purge(self, conn: sqlite3.Connection, before: date) -> None:
        """Forget visits of days before ``before``; later days lose their older links."""
        cut = before.toordinal()
        conn.execute("DELETE FROM uniq_links WHERE day < ?", (cut,))
        conn.execute(
            "INSERT INTO uniq_links (dim, day, prev, n) "
            "SELECT dim, day, -1, n FROM uniq_links WHERE prev >= 0 AND prev < ? "
            "ON CONFLICT (dim, day, prev) DO UPDATE SET n = n + excluded.n",
            (cut,),
        )
        conn.execute("DELETE FROM uniq_links WHERE prev >= 0 AND prev < ?", (cut,))
        updates: list[tuple[str, str]] = []
        gone: list[tuple[str]] = []
        for key, text in conn.execute("SELECT key, chains FROM uniq_entities").fetchall():
            new = codec.since(text, cut)
            if new is None:
                gone.append((key,))
            elif new != text:
                updates.append((new, key))
        conn.executemany("DELETE FROM uniq_entities WHERE key = ?", gone)
        conn.executemany("UPDATE uniq_entities SET chains = ? WHERE key = ?", updates)

    def _visits(self, conn: sqlite3.Connection, groups: stored.Groups) -> tuple[Visits, Classes]:
        """Which days each visitor and user was seen in each dimension, and each visitor
        with each browser class.

        Bots and anonymous views count in no chain. A group is mostly a session: its
        visitor, day and class are looked at once, then its pages.
        """
        out: Visits = {}
        classes: Classes = {}
        pages = self._ids.setdefault("page", {})
        all_visitors = self._id(conn, *ALL_VISITORS)
        all_users = self._id(conn, *ALL_USERS)
        class_of: dict[tuple[str | None, ...], Class] = {}
        ordinals = self._days
        for (iso_day, visitor, user, browser, os, device, bot), views in groups.items():
            if visitor is None or bot:
                continue
            day = ordinals.get(iso_day) or self._ordinal(iso_day)
            key = "v:" + visitor
            chains = out.get(key)
            if chains is None:
                chains = out[key] = {all_visitors: {day}}
                seen: dict[Class, set[int]] = {}
                classes[key] = seen
            else:
                chains[all_visitors].add(day)
                seen = classes[key]
            names = (browser, os, device)
            cls = class_of.get(names)
            if cls is None:
                cls = class_of[names] = self._class(conn, names)
            days = seen.get(cls)
            if days is None:
                seen[cls] = {day}
            else:
                days.add(day)
            paths: Iterable[str] = views[1::4]
            if len(views) > 32:  # each page once: a group's views share their day
                paths = dict.fromkeys(paths)  # (a reloaded page, a single-page app's beacon)
            for path in paths:
                dim = pages.get(path) or self._id(conn, "page", path)
                days = chains.get(dim)
                if days is None:
                    chains[dim] = {day}
                else:
                    days.add(day)
            if user:
                users = out.get("u:" + user)
                if users is None:
                    out["u:" + user] = {all_users: {day}}
                else:  # a user's entity only ever holds the all-users chain
                    users[all_users].add(day)
        return out, classes

    def _class(self, conn: sqlite3.Connection, names: tuple[str | None, ...]) -> Class:
        browser, os, device = (
            self._id(conn, kind, name) if name else 0
            for kind, name in zip(("browser", "os", "device"), names, strict=True)
        )
        return browser, os, device

    def _link(self, conn: sqlite3.Connection, visits: Visits, classes: Classes) -> None:
        """Merge these visits into the entities' chains; add the links that change."""
        if not visits:
            return
        keys = sorted(visits)
        texts = self._load(conn, keys)
        delta: Delta = {}
        visitors = self._id(conn, *ALL_VISITORS)
        rows = []
        for key in keys:
            text = texts.get(key) or ""
            dims = visits[key]
            seen = classes.get(key)
            mirrored: tuple[int, ...] = ()
            if seen:
                text, mirrored = codec.with_classes(text, dims, seen, visitors)
            new = codec.merge(text, dims, delta, visitors, mirrored)
            if new != texts.get(key):
                rows.append((key, new))
        conn.executemany("INSERT OR REPLACE INTO uniq_entities VALUES (?, ?)", rows)
        _apply(conn, delta)

    # -- reading ----------------------------------------------------------------------

    def dims(self, conn: sqlite3.Connection, kinds: Sequence[str]) -> dict[int, tuple[str, str]]:
        """The dimensions of these kinds, by id."""
        marks = ",".join("?" * len(kinds))
        rows = conn.execute(
            f"SELECT id, kind, name FROM uniq_dims WHERE kind IN ({marks})",  # noqa: S608
            tuple(kinds),
        ).fetchall()
        return {i: (k, n) for i, k, n in rows}

    def page_dims(self, conn: sqlite3.Connection, paths: Sequence[str]) -> dict[int, str]:
        """The page dimensions of these paths, by id."""
        out: dict[int, str] = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT id, name FROM uniq_dims WHERE kind = 'page' AND name IN ({marks})",  # noqa: S608
                tuple(chunk),
            ).fetchall()
            out.update(rows)
        return out

    def count(
        self, conn: sqlite3.Connection, dims: Iterable[int], since: date, until: date
    ) -> dict[int, int]:
        """Distinct visitors (or users) of each dimension over ``since``..``until``."""
        ids = sorted(dims)
        lo, hi = since.toordinal(), until.toordinal()
        out: dict[int, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT dim, sum(n) FROM uniq_links "  # noqa: S608
                f"WHERE dim IN ({marks}) AND day BETWEEN ? AND ? AND prev < ? GROUP BY dim",
                (*chunk, lo, hi, lo),
            ).fetchall()
            out.update((d, n) for d, n in rows if n > 0)
        return out

    def per_day(
        self, conn: sqlite3.Connection, dim: int, since: date, until: date
    ) -> dict[str, int]:
        """Distinct visitors of one dimension on each day (ISO day -> count)."""
        rows = conn.execute(
            "SELECT day, sum(n) FROM uniq_links WHERE dim = ? AND day BETWEEN ? AND ? GROUP BY day",
            (dim, since.toordinal(), until.toordinal()),
        ).fetchall()
        return {date.fromordinal(d).isoformat(): n for d, n in rows}

    # -- helpers ----------------------------------------------------------------------

    def _ordinal(self, day: str) -> int:
        n = self._days.get(day)
        if n is None:
            if len(self._days) > 10_000:
                self._days.clear()
            n = self._days[day] = date.fromisoformat(day).toordinal()
        return n

    def _id(self, conn: sqlite3.Connection, kind: str, name: str) -> int:
        """The id of dimension ``(kind, name)``, created if new."""
        names = self._ids.setdefault(kind, {})
        dim = names.get(name)
        if dim is None:
            row = conn.execute(
                "SELECT id FROM uniq_dims WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            if row is None:
                cursor = conn.execute(
                    "INSERT INTO uniq_dims (kind, name) VALUES (?, ?)", (kind, name)
                )
                row = (cursor.lastrowid,)
                self._pending.append((kind, name))
            dim = names[name] = row[0]
        return dim

    @staticmethod
    def _load(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
        """Entities' chains text, by key."""
        out: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out.update(
                conn.execute(
                    f"SELECT key, chains FROM uniq_entities WHERE key IN ({marks})",  # noqa: S608
                    chunk,
                )
            )
        return out


def _apply(conn: sqlite3.Connection, delta: Delta) -> None:
    # In key order, each upsert finds its page next to the previous one's.
    changes = sorted((d, day, p, n) for (d, day, p), n in delta.items() if n)
    conn.executemany(
        "INSERT INTO uniq_links VALUES (?, ?, ?, ?) "
        "ON CONFLICT (dim, day, prev) DO UPDATE SET n = n + excluded.n",
        changes,
    )
    conn.executemany(
        "DELETE FROM uniq_links WHERE dim = ? AND day = ? AND prev = ? AND n <= 0",
        [(d, day, p) for d, day, p, n in changes if n < 0],
    )
