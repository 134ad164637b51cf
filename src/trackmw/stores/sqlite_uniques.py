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
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from ..events import PageView

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

Membership = tuple[str, tuple[str, str], str]  # (entity key, (kind, name), ISO day)
Delta = dict[tuple[int, int, int], int]


def memberships(pageviews: Iterable[PageView]) -> set[Membership]:
    """What the page views say about visitors' chains (bots and anonymous views: nothing)."""
    out: set[Membership] = set()
    add = out.add
    for pv in pageviews:
        vid = pv.visitor_id
        if pv.bot or vid is None:
            continue
        day = pv.day
        entity = "v:" + vid
        add((entity, ALL_VISITORS, day))
        add((entity, ("page", pv.path), day))
        for kind, value in (("browser", pv.browser), ("os", pv.os), ("device", pv.device)):
            if value:
                add((entity, (kind, value), day))
        if pv.user_id:
            add(("u:" + pv.user_id, ALL_USERS, day))
    return out


class Uniques:
    """The link tables of one store. Methods run inside the caller's transaction."""

    def __init__(self) -> None:
        self._dims: dict[tuple[str, str], int] = {}  # committed dimension ids (never deleted)
        self._pending: dict[tuple[str, str], int] = {}
        self._days: dict[str, int] = {}

    def committed(self, ok: bool) -> None:
        """Call after the transaction ended: new dimension ids are cached only if kept."""
        if ok:
            self._dims.update(self._pending)
        self._pending = {}

    # -- writing ----------------------------------------------------------------------

    def add(self, conn: sqlite3.Connection, items: set[Membership]) -> None:
        """Add visits to the chains and their links."""
        if not items:
            return
        wanted: dict[tuple[str, int], set[int]] = {}
        dim_of = self._dim_ids(conn, {m[1] for m in items})
        day_of = self._days
        for entity, key, iso_day in items:
            day = day_of.get(iso_day)
            if day is None:
                day = self._ordinal(iso_day)
            pair = (entity, dim_of[key])
            seen = wanted.get(pair)
            if seen is None:
                wanted[pair] = {day}
            else:
                seen.add(day)
        entities = self._load(conn, sorted({entity for entity, _ in wanted}))
        delta: Delta = {}
        dirty: set[str] = set()
        for (entity, dim), new_days in wanted.items():
            chains = entities.setdefault(entity, {})
            text = chains.get(dim)
            days: list[int] = _days(text) if isinstance(text, str) else (text or [])
            changed = False
            for day in sorted(new_days):
                i = bisect_left(days, day)
                if i < len(days) and days[i] == day:
                    continue
                prev = days[i - 1] if i else -1
                if i < len(days):  # an earlier day arrived late: relink its successor
                    succ = days[i]
                    _bump(delta, (dim, succ, prev), -1)
                    _bump(delta, (dim, succ, day), 1)
                _bump(delta, (dim, day, prev), 1)
                days.insert(i, day)
                changed = True
            if changed:
                chains[dim] = days
                dirty.add(entity)
        conn.executemany(
            "INSERT OR REPLACE INTO uniq_entities VALUES (?, ?)",
            [(entity, _encode(entities[entity])) for entity in sorted(dirty)],
        )
        _apply(conn, delta)

    def remove(self, conn: sqlite3.Connection, entities: Sequence[str]) -> None:
        """Forget these visitors' and users' chains, and their links."""
        delta: Delta = {}
        for chains in self._load(conn, entities).values():
            for dim, text in chains.items():
                prev = -1
                for day in _days(text) if isinstance(text, str) else text:
                    _bump(delta, (dim, day, prev), -1)
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
        wanted = set(entities)
        items: set[Membership] = set()
        for visitor in visitors:
            items |= memberships(_rows(conn, "visitor_id = ?", visitor))
        for user in users:
            items |= memberships(_rows(conn, "user_id = ?", user))
        self.add(conn, {m for m in items if m[0] in wanted})

    def rebuild_all(self, conn: sqlite3.Connection) -> None:
        """Recompute every chain from the stored page views (migration from schema 1)."""
        conn.execute("DELETE FROM uniq_links")
        conn.execute("DELETE FROM uniq_entities")
        cursor = conn.execute("SELECT * FROM pageviews WHERE visitor_id IS NOT NULL AND bot = 0")
        while rows := cursor.fetchmany(50_000):
            self.add(conn, memberships(PageView._make((*r[:10], bool(r[10]))) for r in rows))

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
            chains: dict[int, str | list[int]] = {}
            for dim, days_text in _split(text).items():
                days = _days(days_text)
                kept = [d for d in days if d >= cut]
                if kept:
                    chains[dim] = kept if len(kept) != len(days) else days_text
            if not chains:
                gone.append((key,))
            elif _encode(chains) != text:
                updates.append((_encode(chains), key))
        conn.executemany("DELETE FROM uniq_entities WHERE key = ?", gone)
        conn.executemany("UPDATE uniq_entities SET chains = ? WHERE key = ?", updates)

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

    def _dim_ids(
        self, conn: sqlite3.Connection, keys: set[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        known = self._dims
        pending = self._pending
        out: dict[tuple[str, str], int] = {}
        missing = []
        for key in keys:
            dim = known.get(key) or pending.get(key)
            if dim is None:
                missing.append(key)
            else:
                out[key] = dim
        if missing:
            conn.executemany("INSERT OR IGNORE INTO uniq_dims (kind, name) VALUES (?, ?)", missing)
            for key in missing:
                (dim,) = conn.execute(
                    "SELECT id FROM uniq_dims WHERE kind = ? AND name = ?", key
                ).fetchone()
                out[key] = pending[key] = dim
        return out

    @staticmethod
    def _load(
        conn: sqlite3.Connection, keys: Sequence[str]
    ) -> dict[str, dict[int, str | list[int]]]:
        """Entities' chains by dimension, each still text until it is needed."""
        out: dict[str, dict[int, str | list[int]]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, text in conn.execute(
                f"SELECT key, chains FROM uniq_entities WHERE key IN ({marks})",  # noqa: S608
                chunk,
            ):
                out[key] = dict(_split(text))
        return out


def _split(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in text.split(";"):
        dim, _, days = part.partition(":")
        out[int(dim)] = days
    return out


def _days(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _encode(chains: dict[int, str | list[int]]) -> str:
    return ";".join(
        f"{dim}:{days if isinstance(days, str) else ','.join(map(str, days))}"
        for dim, days in chains.items()
    )


def _bump(delta: Delta, key: tuple[int, int, int], by: int) -> None:
    delta[key] = delta.get(key, 0) + by


def _apply(conn: sqlite3.Connection, delta: Delta) -> None:
    changes = [(d, day, p, n) for (d, day, p), n in delta.items() if n]
    conn.executemany(
        "INSERT INTO uniq_links VALUES (?, ?, ?, ?) "
        "ON CONFLICT (dim, day, prev) DO UPDATE SET n = n + excluded.n",
        changes,
    )
    conn.executemany(
        "DELETE FROM uniq_links WHERE dim = ? AND day = ? AND prev = ? AND n <= 0",
        [(d, day, p) for d, day, p, n in changes if n < 0],
    )


def _rows(conn: sqlite3.Connection, where: str, value: Any) -> list[PageView]:
    rows = conn.execute(
        f"SELECT * FROM pageviews WHERE {where} AND bot = 0",  # noqa: S608
        (value,),
    ).fetchall()
    return [PageView._make((*r[:10], bool(r[10]))) for r in rows]
