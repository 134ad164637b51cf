"""Exact distinct counts (visitors, users, visitors per page / browser / OS / device) over
any range of days, from small SQLite tables, for ``SQLiteStore``.

Page views per day add up; distinct visitors do not (a visitor seen on Monday and on
Tuesday is one visitor of the two days), and scanning one row per visitor and day for a
30-day report over a million events is far too slow. Instead every visitor (``v:<id>``)
and user (``u:<id>``) gets a small number of its own, its *ordinal* (``uniq_ids``: given
in the order they are first seen, never given again), and for every day and
*dimension* (all visitors, all users, one page, one browser, …) the store keeps the set
of ordinals seen, as a Roaring bitmap (``pyroaring``)::

    distinct(dimension, lo, hi) = |union of the dimension's sets of days lo..hi|

A set is split by the ordinals' upper bits, a row ``uniq_sets (day, dim, hi)`` holding
the lower 16 bits of each (a bitmap of at most 8 KiB), so that a batch rewrites the
parts it adds to. The table is keyed by day first: a batch's rows, the few days it
writes, lie together. Schema 3 kept each visitor's visit days per dimension in a row of
its own instead (chains, and links between them): a batch then rewrote a row per
visitor, spread over the whole table, and most of its commit was writing those pages.

A report unions a few thousand small bitmaps in C. Erasure takes the erased page views'
ordinals out of their days' sets and adds back what the entities' other page views on
those days still show; retention drops the days before the cut, and the ordinals (and
ids) of entities left in no set. Days are ``date.toordinal()`` numbers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import date

from pyroaring import BitMap

from ..events import PageView
from . import sqlite_pageviews as stored
from .sqlite_rows import insert_rows, select_in

__all__ = ["SCHEMA", "Uniques"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS uniq_dims (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,      -- 'visitors', 'users', 'page', 'browser', 'os', 'device'
    name TEXT NOT NULL,
    UNIQUE (kind, name)
);
CREATE TABLE IF NOT EXISTS uniq_ids (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE -- 'v:<visitor id>' or 'u:<user id>'
);
CREATE TABLE IF NOT EXISTS uniq_sets (
    day INTEGER NOT NULL,    -- date.toordinal()
    dim INTEGER NOT NULL,
    hi INTEGER NOT NULL,     -- the ordinals' upper bits (ordinal >> 16)
    n INTEGER NOT NULL,      -- how many ordinals the set holds
    bits BLOB NOT NULL,      -- their lower 16 bits, a serialized Roaring bitmap
    PRIMARY KEY (day, dim, hi)
) WITHOUT ROWID;
"""

#: The dimensions a visitor's page view belongs to, besides its page.
ALL_VISITORS = ("visitors", "")
ALL_USERS = ("users", "")

#: An ordinal's lower bits, kept in the bitmaps (the upper ones key the row).
_LOW_BITS = 16
_LOW_MASK = (1 << _LOW_BITS) - 1

Visits = dict[tuple[str, int], set[int]]  # (entity key, day) -> dimension ids
Sets = dict[tuple[int, int, int], list[int]]  # (day, dim, hi) -> ordinals' lower bits

#: At most this many upper bits are listed in a statement that reads a day's sets (beside
#: ``IN_VALUES`` dimensions and the day, under SQLite's default limit of 999 values).
_MAX_UPPER = 300


class Uniques:
    """The distinct counts' tables of one store. Methods run inside the caller's
    transaction."""

    def __init__(self) -> None:
        # kind -> name -> dimension id; ids are never deleted, so they stay valid across
        # processes (but one created by a transaction that rolls back is not kept).
        self._ids: dict[str, dict[str, int]] = {}
        self._days: dict[str, int] = {}

    def rolled_back(self) -> None:
        """Call as a transaction that ran these methods fails, before its ``ROLLBACK``
        (``SQLiteStore._transaction``): the dimension ids it created are about to be
        gone, and another writer could be given them again, so the cache goes (it is
        read again as needed)."""
        self._ids.clear()

    # -- writing ----------------------------------------------------------------------

    def add(self, conn: sqlite3.Connection, groups: stored.Groups) -> None:
        """Add the visits of these page views (``sqlite_pageviews.group``) to the sets."""
        visits = self._visits(conn, groups)
        if visits:
            ordinals = self._ordinals(conn, sorted({key for key, _ in visits}), create=True)
            _change(conn, _split(visits, ordinals), BitMap.update)

    def remove(self, conn: sqlite3.Connection, gone: Sequence[PageView]) -> None:
        """Take these page views (deleted, being erased) out of the sets.

        Each of their visitors and users leaves the sets those views named, on the days
        they were on; what its remaining page views of those days show is added back (a
        user's other visitors', say). An entity with no counted page view left (one not a
        bot's, with a visitor) loses its ordinal and id.
        """
        days: dict[str, set[int]] = {}
        for view in gone:  # bots' and anonymous views too: their entities may go
            day = self._day(view.day)
            if view.visitor_id is not None:
                days.setdefault("v:" + view.visitor_id, set()).add(day)
            if view.user_id:
                days.setdefault("u:" + view.user_id, set()).add(day)
        if not days:
            return
        removed = self._visits(conn, stored.group(gone))  # the sets they are in
        if removed:
            ordinals = self._ordinals(conn, sorted({key for key, _ in removed}), create=False)
            removed = {visit: dims for visit, dims in removed.items() if visit[0] in ordinals}
            _change(conn, _split(removed, ordinals), BitMap.difference_update)
        rest: list[PageView] = []
        forgotten: list[tuple[str]] = []
        for key, wanted in days.items():
            column = "visitor_id" if key.startswith("v:") else "user_id"
            _, views = stored.of(conn, column, key[2:])
            counted = [view for view in views if view.visitor_id is not None and not view.bot]
            if not counted:
                forgotten.append((key,))
            rest += [view for view in counted if self._day(view.day) in wanted]
        if rest:
            self.add(conn, stored.group(rest))
        conn.executemany("DELETE FROM uniq_ids WHERE key = ?", forgotten)

    def rebuild_all(self, conn: sqlite3.Connection) -> None:
        """Recompute every set from the stored page views (migration from schema 1-3)."""
        conn.execute("DELETE FROM uniq_sets")
        conn.execute("DELETE FROM uniq_ids")
        for rows in stored.all_pageviews(conn):
            self.add(conn, stored.group(rows))

    def purge(self, conn: sqlite3.Connection, before: date) -> None:
        """Forget the days before ``before``, and the entities seen on none after.

        Every visitor is in the all-visitors set of each day it was seen, every user in
        the all-users set: the union of those two holds every entity still seen."""
        conn.execute("DELETE FROM uniq_sets WHERE day < ?", (before.toordinal(),))
        live: dict[int, BitMap] = {}
        for hi, bits in conn.execute(
            "SELECT hi, bits FROM uniq_sets WHERE dim IN (SELECT id FROM uniq_dims "
            "WHERE (kind, name) IN (VALUES (?, ?), (?, ?)))",
            (*ALL_VISITORS, *ALL_USERS),
        ):
            found = live.get(hi)
            if found is None:
                live[hi] = BitMap.deserialize(bits)
            else:
                found |= BitMap.deserialize(bits)
        none = BitMap()
        gone = [
            (n,)
            for (n,) in conn.execute("SELECT n FROM uniq_ids")
            if n & _LOW_MASK not in live.get(n >> _LOW_BITS, none)
        ]
        conn.executemany("DELETE FROM uniq_ids WHERE n = ?", gone)

    def _visits(self, conn: sqlite3.Connection, groups: stored.Groups) -> Visits:
        """The dimensions each visitor and user was seen in, on each day.

        Bots and anonymous views count in no set. A group is mostly a session: its
        visitor, day and class are looked at once, then its pages.
        """
        out: Visits = {}
        pages = self._ids.setdefault("page", {})
        all_visitors = self._id(conn, *ALL_VISITORS)
        all_users = self._id(conn, *ALL_USERS)
        class_of: dict[tuple[str | None, ...], tuple[int, ...]] = {}
        numbers = self._days
        for (iso_day, visitor, user, browser, os, device, bot), views in groups.items():
            if visitor is None or bot:
                continue
            day = numbers.get(iso_day) or self._day(iso_day)
            names = (browser, os, device)
            cls = class_of.get(names)
            if cls is None:
                cls = class_of[names] = self._class(conn, names)
            dims = out.get(("v:" + visitor, day))
            if dims is None:
                dims = out["v:" + visitor, day] = {all_visitors, *cls}
            else:
                dims.update(cls)
            for path in views[1::4]:
                dims.add(pages.get(path) or self._id(conn, "page", path))
            if user:
                out["u:" + user, day] = {all_users}  # a user's only dimension
        return out

    def _class(self, conn: sqlite3.Connection, names: tuple[str | None, ...]) -> tuple[int, ...]:
        """The browser, OS and device dimensions of a class (those it names)."""
        return tuple(
            self._id(conn, kind, name)
            for kind, name in zip(("browser", "os", "device"), names, strict=True)
            if name
        )

    @staticmethod
    def _ordinals(conn: sqlite3.Connection, keys: Sequence[str], create: bool) -> dict[str, int]:
        """The ordinals of these entities (sorted keys); with ``create``, new ones for
        those without, numbered on from the highest ever given."""
        out: dict[str, int] = dict(
            select_in(conn, "SELECT key, n FROM uniq_ids WHERE key IN ({})", keys)
        )
        new = [key for key in keys if key not in out] if create else []
        if new:
            # AUTOINCREMENT's own count: an ordinal once given, even if since deleted
            # (and the table's, should a copy of the file have lost that count).
            ((last,),) = conn.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM sqlite_sequence "
                "WHERE name = 'uniq_ids'), 0), coalesce((SELECT max(n) FROM uniq_ids), 0))"
            ).fetchall()
            first = last + 1
            rows = [(first + i, key) for i, key in enumerate(new)]
            insert_rows(conn, "INSERT INTO uniq_ids (n, key)", rows)
            out.update((key, n) for n, key in rows)
        return out

    # -- reading ----------------------------------------------------------------------

    def dims(self, conn: sqlite3.Connection, kinds: Sequence[str]) -> dict[int, tuple[str, str]]:
        """The dimensions of these kinds, by id."""
        return {i: (k, n) for i, k, n in select_in(
            conn, "SELECT id, kind, name FROM uniq_dims WHERE kind IN ({})", kinds
        )}

    def page_dims(self, conn: sqlite3.Connection, paths: Sequence[str]) -> dict[int, str]:
        """The page dimensions of these paths, by id."""
        return dict(select_in(
            conn, "SELECT id, name FROM uniq_dims WHERE kind = 'page' AND name IN ({})", paths
        ))

    def count(
        self, conn: sqlite3.Connection, dims: Iterable[int], since: date, until: date
    ) -> dict[int, int]:
        """Distinct visitors (or users) of each dimension over ``since``..``until``."""
        ids = sorted(dims)
        lo, hi = since.toordinal(), until.toordinal()
        parts: dict[tuple[int, int], list[tuple[int, bytes]]] = {}  # (dim, hi) -> sets
        for dim, upper, n, bits in select_in(
            conn,
            "SELECT dim, hi, n, bits FROM uniq_sets WHERE day BETWEEN ? AND ? AND dim IN ({})",
            ids,
            before=(lo, hi),
        ):
            parts.setdefault((dim, upper), []).append((n, bits))
        out: dict[int, int] = {}
        for (dim, _), sets in parts.items():
            if len(sets) == 1:
                n = sets[0][0]
            else:
                n = len(BitMap.union(*(BitMap.deserialize(bits) for _, bits in sets)))
            out[dim] = out.get(dim, 0) + n
        return out

    def per_day(
        self, conn: sqlite3.Connection, dim: int, since: date, until: date
    ) -> dict[str, int]:
        """Distinct visitors of one dimension on each day (ISO day -> count)."""
        rows = conn.execute(
            "SELECT day, sum(n) FROM uniq_sets WHERE day BETWEEN ? AND ? AND dim = ? "
            "GROUP BY day",
            (since.toordinal(), until.toordinal(), dim),
        ).fetchall()
        return {date.fromordinal(d).isoformat(): n for d, n in rows}

    # -- helpers ----------------------------------------------------------------------

    def _day(self, day: str) -> int:
        """An ISO day's ``toordinal()`` number, cached."""
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
            dim = names[name] = row[0]
        return dim


def _split(visits: Visits, ordinals: dict[str, int]) -> Sets:
    """The lower bits of the ordinals to add to each row of ``uniq_sets``."""
    sets: Sets = {}
    for (key, day), dims in visits.items():
        n = ordinals[key]
        hi, low = n >> _LOW_BITS, n & _LOW_MASK
        for dim in dims:
            found = sets.get((day, dim, hi))
            if found is None:
                sets[day, dim, hi] = [low]
            else:
                found.append(low)
    return sets


def _change(conn: sqlite3.Connection, sets: Sets, how: Callable[[BitMap, BitMap], None]) -> None:
    """Apply ``how`` (``BitMap.update`` or ``BitMap.difference_update``) with each
    row's values to its stored set; write the rows that changed (in key order, each
    next to the one before), delete those left empty."""
    keys = sorted(sets)
    # Looked up by day: its dimensions and upper bits (rows of other pairings of the
    # two are read too, and left alone).
    days: dict[int, tuple[dict[int, None], dict[int, None]]] = {}
    for day, dim, hi in keys:
        pair = days.get(day)
        if pair is None:
            pair = days[day] = ({}, {})
        pair[0][dim] = pair[1][hi] = None
    found: dict[tuple[int, int, int], bytes] = {}
    for day, (dims, his) in days.items():
        # The upper bits too, unless there are very many (some 20 million visitors).
        upper = list(his) if len(his) <= _MAX_UPPER else []
        his_sql = f" AND hi IN ({','.join('?' * len(upper))})" if upper else ""
        for dim, hi, bits in select_in(
            conn,
            "SELECT dim, hi, bits FROM uniq_sets WHERE day = ? AND dim IN ({})" + his_sql,
            list(dims),
            before=(day,),
            after=upper,
        ):
            found[day, dim, hi] = bits
    changed: list[tuple[int, int, int, int, bytes]] = []
    empty: list[tuple[int, int, int]] = []
    for key in keys:
        old = found.get(key)
        bits = BitMap() if old is None else BitMap.deserialize(old)
        before = len(bits)
        how(bits, BitMap(sets[key]))
        after = len(bits)
        if after == before:
            continue
        if after:
            changed.append((*key, after, bits.serialize()))
        else:
            empty.append(key)
    conn.executemany("INSERT OR REPLACE INTO uniq_sets VALUES (?, ?, ?, ?, ?)", changed)
    conn.executemany("DELETE FROM uniq_sets WHERE day = ? AND dim = ? AND hi = ?", empty)
