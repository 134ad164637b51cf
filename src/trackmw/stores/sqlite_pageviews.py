"""The raw page views of ``SQLiteStore``, kept for a visitor's own data, erasure,
retention and rebuilding the rollups.

A row of ``pageview_groups`` holds the page views of one batch that share a day, a
visitor, a user, a browser class and botness (a visitor's session, mostly; anonymous
views share one group per day), as one JSON array ``[ms, path, referrer, campaign, ms,
path, …]``, ``ms`` the view's time in whole milliseconds (an int: JSON writes one in a
tenth of the time a float takes; see ``_MS`` for how seconds, which older rows hold,
are told apart). A batch of 1,000 page views is a few hundred rows instead of a
thousand, each with one array instead of eleven bound values per page view: that was
most of what writing the raw events cost. The same groups feed the distinct counts
(``sqlite_uniques``), which look at a session's visitor, day and browser only once.

The groups are indexed by ``(day, visitor_id)`` and ``(day, user_id)``, not by the ids
alone: a batch's index entries then land at the end of each index, next to each other,
instead of one random page each. Looking a visitor up walks the distinct days of the
index (a loose index scan) and seeks the visitor in each.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from .._ext import leftovers, speedup
from .._json import dumps_function, quoted_texts
from ..events import PageView
from .sqlite_rows import insert_rows

__all__ = [
    "SCHEMA",
    "Groups",
    "add",
    "all_pageviews",
    "from_schema_2",
    "group",
    "of",
    "purge",
    "views_json",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS pageview_groups (
    day TEXT NOT NULL,
    visitor_id TEXT,
    user_id TEXT,
    browser TEXT,
    os TEXT,
    device TEXT,
    bot INTEGER NOT NULL,
    n INTEGER NOT NULL,      -- page views in the group
    views TEXT NOT NULL      -- JSON [ms, path, referrer, campaign, ms, path, ...]
);
CREATE INDEX IF NOT EXISTS pageview_groups_visitor ON pageview_groups (day, visitor_id)
    WHERE visitor_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS pageview_groups_user ON pageview_groups (day, user_id)
    WHERE user_id IS NOT NULL;
"""


#: Times from March 1973 to the year 5138 (in seconds) are kept as milliseconds, each
#: an int of at least ``_MS``; any other time as seconds, a float. Rows written before
#: held seconds: floats, or ints where a page view's time was one, all below ``_MS``.
_MS = 100_000_000_000
_MS_FROM, _MS_TO = _MS / 1000, float(_MS)  # floats: a float compares slowly with an int

# A batch encodes a few hundred small lists: the encoder is made once.
_dumps = dumps_function()

#: ``(day, visitor_id, user_id, browser, os, device, bot)`` -> ``[ms, path, referrer,
#: campaign, ms, path, …]``: the page views of a batch, grouped.
Groups = dict[tuple[Any, ...], list[Any]]


def group(pageviews: Iterable[PageView]) -> Groups:
    """The page views by day, visitor, user, browser class and botness.

    With the C speedups built, their ``group_run`` adds the common case (a float time
    in the milliseconds' range, str and None texts), and leaves each other view to
    this loop.
    """
    c_run = speedup("group_run")
    views = pageviews if type(pageviews) is list or type(pageviews) is tuple else list(pageviews)
    groups: Groups = {}
    get = groups.get
    run = c_run and (lambda i: c_run(views, i, groups, PageView, _MS_FROM, _MS_TO))
    for view in leftovers(views, run):
        ts, day, visitor, user, path, referrer, campaign, browser, os, device, bot = view
        key = (day, visitor, user, browser, os, device, bot)
        found = get(key)
        # JSON writes an int in a tenth of a float's time.
        ms = int(ts * 1000) if _MS_FROM <= ts < _MS_TO else float(ts)
        if found is None:
            groups[key] = [ms, path, referrer, campaign]
        else:
            found += ms, path, referrer, campaign
    return groups


def add(conn: sqlite3.Connection, groups: Groups) -> None:
    """Insert grouped page views."""
    insert_rows(
        conn,
        "INSERT INTO pageview_groups",
        [(*key, len(views) // 4, views_json(views)) for key, views in groups.items()],
    )


def views_json(views: list[Any]) -> str:
    """A group's page views as JSON: ``json.dumps(views)``.

    With the C speedups built, their ``views_json`` writes the common case (ints, texts
    and None), quoting each distinct text once (``quoted_texts``): the JSON encoder was a
    third of the writer's work on a page view, most of it quoting the same page and
    referrer again and again.
    """
    c_json = speedup("views_json")
    if c_json is not None:
        text: str | None = c_json(views, encode_basestring_ascii, quoted_texts())
        if text is not None:
            return text
    return _dumps(views)


def of(conn: sqlite3.Connection, column: str, value: str) -> tuple[list[int], list[PageView]]:
    """The groups (rowids) and page views whose ``column`` (visitor_id or user_id) is
    ``value``."""
    if column not in ("visitor_id", "user_id"):
        raise ValueError(column)
    rows = conn.execute(
        "WITH RECURSIVE days(day) AS ("  # noqa: S608
        f"SELECT min(day) FROM pageview_groups WHERE {column} IS NOT NULL UNION ALL "
        f"SELECT (SELECT min(day) FROM pageview_groups WHERE {column} IS NOT NULL "
        "AND day > days.day) FROM days WHERE days.day IS NOT NULL) "
        "SELECT rowid, day, visitor_id, user_id, browser, os, device, bot, views "
        "FROM pageview_groups "
        f"WHERE {column} = ? AND day IN (SELECT day FROM days WHERE day IS NOT NULL)",
        (value,),
    ).fetchall()
    return [r[0] for r in rows], _pageviews(r[1:] for r in rows)


def purge(conn: sqlite3.Connection, cut: str) -> int:
    """Delete the page views of days before ``cut``; how many there were."""
    ((removed,),) = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM pageview_groups WHERE day < ?", (cut,)
    ).fetchall()
    conn.execute("DELETE FROM pageview_groups WHERE day < ?", (cut,))
    return int(removed)


def from_schema_2(conn: sqlite3.Connection) -> None:
    """Move the page views of a schema 1 or 2 file (one row each) into groups."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pageviews'").fetchone():
        return
    cursor = conn.execute("SELECT * FROM pageviews ORDER BY rowid")
    while rows := cursor.fetchmany(50_000):
        add(conn, group(PageView._make((*r[:10], bool(r[10]))) for r in rows))
    conn.execute("DROP TABLE pageviews")


def all_pageviews(conn: sqlite3.Connection) -> Iterable[list[PageView]]:
    """Every stored page view, in lists of a few thousand."""
    cursor = conn.execute(
        "SELECT day, visitor_id, user_id, browser, os, device, bot, views FROM pageview_groups"
    )
    while rows := cursor.fetchmany(1_000):
        yield _pageviews(rows)


def _pageviews(rows: Iterable[Sequence[Any]]) -> list[PageView]:
    out = []
    for day, visitor, user, browser, os, device, bot, text in rows:
        views = json.loads(text)
        for i in range(0, len(views), 4):
            ts, path, referrer, campaign = views[i : i + 4]
            if type(ts) is int and ts >= _MS:  # milliseconds; anything else: seconds
                ts /= 1000
            out.append(
                PageView(
                    ts, day, visitor, user, path, referrer, campaign, browser, os, device, bool(bot)
                )
            )
    return out
