"""The SQL of ``PostgresStore``: its schema, the statements that write a batch, and the
report's queries.

A batch's page views are copied into ``pageviews``, and the rollups its client counted
are added (see ``ADD_COUNTS``); a report reads the rollups, and the raw page views only
for the visitors of its top pages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from ..report import TOP_N, Report, day_range, ranked

__all__ = [
    "ADD_CONSENTS",
    "ADD_COUNTS",
    "ADD_VISITORS",
    "CC_COLS",
    "DROPPED",
    "FILLFACTOR",
    "PV_COLS",
    "PV_TYPES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SET_FILLFACTOR",
    "SUMMARIZE",
    "report",
]

#: 2: a visitor's and a user's page views found by hash indexes (cheaper to insert into
#: than the B-trees of 1, which are dropped), and no index of daily_visitors by visitor
#: (erasure deletes its rows by their key).
#: 3: page views found by day through a BRIN index (a few bytes per range of table pages;
#: rows arrive in time order), where a B-tree by (day, path) took an entry per page view:
#: writes about 1.15 times as fast.
#: 4: daily_counts' pages filled to 70% (``FILLFACTOR``), so that most of a batch's updates
#: of a counter stay on its page, where its index needs no new entry: writes about 1.035
#: times as fast (eleven interleaved pairs of 200,000 events, ten of them faster).
SCHEMA_VERSION = 4
#: How full an insert leaves daily_counts' pages: the rest is room for updated rows.
FILLFACTOR = 70
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS erasures (key text PRIMARY KEY, at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS erasures_at ON erasures (at);
CREATE TABLE IF NOT EXISTS batches (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS pageviews (
    ts double precision NOT NULL, day date NOT NULL, visitor_id text, user_id text,
    path text NOT NULL, referrer text, campaign text, browser text, os text, device text,
    bot boolean NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS pageviews_day ON pageviews USING brin (day)
    WITH (autosummarize = on);
CREATE INDEX IF NOT EXISTS pageviews_visitor_hash ON pageviews USING hash (visitor_id)
    WHERE visitor_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS pageviews_user_hash ON pageviews USING hash (user_id)
    WHERE user_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS daily_counts (
    day date NOT NULL, kind text NOT NULL, name text NOT NULL, pageviews bigint NOT NULL,
    PRIMARY KEY (day, kind, name)) WITH (fillfactor = {FILLFACTOR});
CREATE TABLE IF NOT EXISTS daily_visitors (
    day date NOT NULL, visitor_id text NOT NULL, user_id text NOT NULL,
    browser text, os text, device text, pageviews bigint NOT NULL,
    PRIMARY KEY (day, visitor_id, user_id));
CREATE TABLE IF NOT EXISTS consents (
    ts double precision NOT NULL, day date NOT NULL, visitor_id text,
    analytics boolean NOT NULL, preferences boolean NOT NULL, policy_version text NOT NULL,
    minor boolean NOT NULL DEFAULT false, guardian boolean NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS consents_day ON consents (day);
CREATE INDEX IF NOT EXISTS consents_visitor ON consents (visitor_id)
    WHERE visitor_id IS NOT NULL;
"""
#: What schemas 2 and 3 no longer have, each dropped in a transaction of its own: one
#: table locked at a time, so that the upgrade cannot deadlock with a report or a batch
#: in flight (they take the two tables in opposite orders). Run at every start: a no-op
#: once gone.
DROPPED = (
    "DROP INDEX IF EXISTS pageviews_visitor, pageviews_user, pageviews_day_path",
    "DROP INDEX IF EXISTS daily_visitors_visitor",
)
#: Schema 4's change in place, run at every start in a transaction of its own: a table of
#: an older schema gets the fill factor (its new pages, from then on), one that has a
#: fill factor set explicitly keeps it. It waits at most a second for the table's lock
#: (a VACUUM or an index build holds it): it is only speed, so the store leaves it to a
#: later start rather than hold this one up (``PostgresStore._migrate``).
SET_FILLFACTOR = (
    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_class WHERE oid = 'daily_counts'::regclass "
    "AND reloptions::text LIKE '%fillfactor=%') THEN "
    "PERFORM set_config('lock_timeout', '1s', true); "
    f"ALTER TABLE daily_counts SET (fillfactor = {FILLFACTOR}); END IF; END $$"
)
#: Summarizes the ranges of table pages that the page views' BRIN index by day has not yet
#: summarized (``PostgresStore`` runs it as it writes).
SUMMARIZE = "SELECT brin_summarize_new_values('pageviews_day')"
PV_COLS = "ts, day, visitor_id, user_id, path, referrer, campaign, browser, os, device, bot"
CC_COLS = "ts, day, visitor_id, analytics, preferences, policy_version, minor, guardian"
#: The page views' column types, for ``COPY … (FORMAT BINARY)``: the server parses no
#: text, and the client formats a row in C (text rows took 0.5 µs more a page view).
PV_TYPES = ("float8", "date", *["text"] * 8, "bool")
# A batch's rollups, counted by the client (``daily_counts``, ``visitor_days``) and sent
# as one binary array per column: a few hundred rows a batch of 1,000 page views. Rows go
# in key order, so that concurrent writers lock rollup rows in the same order. (The
# server computing them from a staging table, one GROUP BY per kind of count, cost it
# 1.2 µs more a page view than the client's counting costs the client.)
ADD_COUNTS = """
INSERT INTO daily_counts
SELECT * FROM unnest(%b::date[], %b::text[], %b::text[], %b::bigint[]) ORDER BY 1, 2, 3
ON CONFLICT (day, kind, name) DO UPDATE SET pageviews = daily_counts.pageviews + excluded.pageviews
"""
ADD_VISITORS = """
INSERT INTO daily_visitors
SELECT * FROM unnest(%b::date[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
    %b::bigint[]) ORDER BY 1, 2, 3
ON CONFLICT (day, visitor_id, user_id)
DO UPDATE SET pageviews = daily_visitors.pageviews + excluded.pageviews
"""

# A batch's consent choices, one array per column (a few a batch): a statement, where a
# ``COPY`` cannot join the statements sent together after the page views' (pipeline mode).
ADD_CONSENTS = f"""
INSERT INTO consents ({CC_COLS})
SELECT * FROM unnest(%s::float8[], %s::text[]::date[], %s::text[], %s::bool[], %s::bool[],
    %s::text[], %s::bool[], %s::bool[])
"""


def report(conn: Any, since: date, until: date) -> Report:
    """The report of ``since``..``until``, read through ``conn`` (a psycopg connection)."""
    span = (since, until)
    report = Report(since=since, until=until)

    def q(sql: str, params: Sequence[Any] | Mapping[str, Any] = span) -> list[Any]:
        return list(conn.execute(sql, params).fetchall())

    totals = dict(
        q(
            "SELECT kind, sum(pageviews)::bigint FROM daily_counts WHERE day BETWEEN %s "
            "AND %s AND kind IN ('total', 'anonymous', 'bot') GROUP BY kind"
        )
    )
    report.pageviews = totals.get("total") or 0
    report.anonymous_pageviews = totals.get("anonymous") or 0
    report.bot_hits = totals.get("bot") or 0
    # Distinct counts as DISTINCT subqueries: PostgreSQL hashes those, where
    # count(DISTINCT ...) always sorts (2 to 2.5 times slower over a month of a million
    # events). The per-day count stays as it is: its rows come sorted by day.
    ((report.visitors, report.registered_visitors),) = q(
        "SELECT (SELECT count(*) FROM (SELECT DISTINCT visitor_id FROM daily_visitors "
        "WHERE day BETWEEN %(lo)s AND %(hi)s) v), (SELECT count(*) FROM (SELECT DISTINCT "
        "user_id FROM daily_visitors WHERE day BETWEEN %(lo)s AND %(hi)s AND user_id <> '') u)",
        {"lo": since, "hi": until},
    )
    day_pv = dict(
        q(
            "SELECT day, pageviews FROM daily_counts WHERE day BETWEEN %s AND %s "
            "AND kind = 'total'"
        )
    )
    day_vis = dict(
        q(
            "SELECT day, count(DISTINCT visitor_id) FROM daily_visitors "
            "WHERE day BETWEEN %s AND %s GROUP BY day"
        )
    )
    report.days = [
        {"day": d.isoformat(), "pageviews": day_pv.get(d, 0), "visitors": day_vis.get(d, 0)}
        for d in day_range(since, until)
    ]
    pages = q(
        "SELECT name, sum(pageviews)::bigint AS n FROM daily_counts WHERE day BETWEEN "
        "%s AND %s AND kind = 'page' GROUP BY name ORDER BY n DESC, name COLLATE \"C\" "
        "LIMIT %s",
        (since, until, TOP_N),
    )
    page_vis = dict(
        q(
            "SELECT path, count(*) FROM (SELECT DISTINCT path, visitor_id FROM pageviews "
            "WHERE day BETWEEN %s AND %s AND NOT bot AND visitor_id IS NOT NULL "
            "AND path = ANY(%s)) d GROUP BY path",
            (since, until, [p for p, _ in pages]),
        )
    )
    report.pages = [
        {"path": p, "pageviews": n, "visitors": page_vis.get(p, 0)} for p, n in pages
    ]
    for attr, column in (("browsers", "browser"), ("os", "os"), ("devices", "device")):
        rows = q(
            f"SELECT {column}, count(*) FROM (SELECT DISTINCT {column}, visitor_id "  # noqa: S608
            f"FROM daily_visitors WHERE day BETWEEN %s AND %s AND {column} IS NOT NULL) d "
            f"GROUP BY {column}"
        )
        setattr(report, attr, ranked(dict(rows), "visitors"))
    for attr, kind in (("referrers", "referrer"), ("campaigns", "campaign")):
        rows = q(
            "SELECT name, sum(pageviews)::bigint FROM daily_counts WHERE day BETWEEN %s "
            "AND %s AND kind = %s GROUP BY name",
            (since, until, kind),
        )
        setattr(report, attr, ranked(dict(rows), "pageviews"))
    ((accepted, rejected),) = q(
        "SELECT count(*) FILTER (WHERE analytics), count(*) FILTER (WHERE NOT analytics) "
        "FROM consents WHERE day BETWEEN %s AND %s"
    )
    report.consent = {"accepted": accepted, "rejected": rejected}
    return report
