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


def test_visitor_days_has_a_row_per_visitor_user_and_class_of_a_day() -> None:
    day = START.isoformat()
    chrome, firefox = ("Chrome", "Windows", "desktop"), ("Firefox", "Linux", "desktop")
    views = [
        pageview(START, 1, "v1", cls=firefox),
        pageview(START, 2, "v1", cls=chrome),
        pageview(START, 3, "v1", cls=chrome, user="ann"),
        pageview(START, 4, "v1", cls=chrome),
        pageview(START, 5, None),
        pageview(START, 6, None, bot=True),
        pageview(START, 7, "v2")._replace(browser=None, os=None, device=None),
        pageview(START, 8, "v2")._replace(os=None),
    ]
    # Page views by (day, visitor, user or "", browser, OS, device); no anonymous or bot.
    assert visitor_days(views) == {
        (day, "v1", "", *firefox): 1,
        (day, "v1", "", *chrome): 2,
        (day, "v1", "ann", *chrome): 1,
        (day, "v2", "", None, None, None): 1,
        (day, "v2", "", "Chrome", None, "desktop"): 1,
    }
    assert visitor_days([]) == {}
