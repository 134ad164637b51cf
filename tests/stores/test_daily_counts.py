"""The bulk rollup count (``daily_counts``) adds up what ``daily_count_keys`` says per view."""

from __future__ import annotations

from collections import Counter
from itertools import chain

from trackmw.stores.base import daily_count_keys, daily_counts

from .data import events


def test_daily_counts_is_the_sum_of_each_views_keys() -> None:
    pageviews, _ = events(seed=7, n=2_000, days=5)
    assert any(pv.bot for pv in pageviews) and any(pv.visitor_id is None for pv in pageviews)
    assert any(pv.referrer for pv in pageviews) and any(pv.campaign for pv in pageviews)
    expected = Counter(chain.from_iterable(map(daily_count_keys, pageviews)))
    assert daily_counts(pageviews) == expected
    assert daily_counts([]) == Counter()
