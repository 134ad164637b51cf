"""The bulk rollup counts: ``daily_counts`` adds up what ``daily_count_keys`` says per
view; ``visitor_days`` groups a visitor's day as the PostgreSQL store's rollup keeps it."""

from __future__ import annotations

from collections import Counter
from itertools import chain

from trackmw.stores.base import daily_count_keys, daily_counts
from trackmw.stores.postgres import visitor_days

from .data import START, events, pageview


def test_daily_counts_is_the_sum_of_each_views_keys() -> None:
    pageviews, _ = events(seed=7, n=2_000, days=5)
    assert any(pv.bot for pv in pageviews) and any(pv.visitor_id is None for pv in pageviews)
    assert any(pv.referrer for pv in pageviews) and any(pv.campaign for pv in pageviews)
    expected = Counter(chain.from_iterable(map(daily_count_keys, pageviews)))
    assert daily_counts(pageviews) == expected
    assert daily_counts([]) == Counter()


def test_visitor_days_groups_a_visitors_day_as_sql_would() -> None:
    day = START.isoformat()
    chrome, firefox = ("Chrome", "Windows", "desktop"), ("Firefox", "Linux", "desktop")
    views = [
        pageview(START, 1, "v1", cls=firefox),
        pageview(START, 2, "v1", cls=chrome),
        pageview(START, 3, "v1", cls=chrome, user="ann"),
        pageview(START, 4, None),
        pageview(START, 5, None, bot=True),
        pageview(START, 6, "v2")._replace(browser=None, os=None, device=None),
        pageview(START, 7, "v2")._replace(os=None),
    ]
    assert visitor_days(views) == {
        # min per class, in code-point order (SQL's min under the C collation)
        (day, "v1", ""): ["Chrome", "Linux", "desktop", 2],
        (day, "v1", "ann"): [*chrome, 1],
        # NULLs are left out of a min, as in SQL
        (day, "v2", ""): ["Chrome", None, "desktop", 2],
    }
    assert visitor_days([]) == {}
