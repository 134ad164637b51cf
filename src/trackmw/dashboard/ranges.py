"""Report ranges: the days a stats request, the dashboard or ``trackmw stats`` asks for.

Days are local days in the tracker's ``timezone``: a page view belongs to the day it
happened on there (the pipeline computes ``PageView.day`` with the same zone), and
"today" for the default range is today there too. The default range is the last 30
days, today included.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from zoneinfo import ZoneInfo

from ..report import DEFAULT_DAYS, days_before

__all__ = ["DEFAULT_DAYS", "RangeError", "parse_day", "report_range", "today"]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class RangeError(ValueError):
    """A malformed date or range; the message says which and why."""


def today(tz: ZoneInfo, now: float | None = None) -> date:
    """Today in ``tz`` (at ``now``, a Unix time, when given)."""
    moment = datetime.now(tz) if now is None else datetime.fromtimestamp(now, tz)
    return moment.date()


def parse_day(name: str, value: str) -> date:
    """``value`` as a ``YYYY-MM-DD`` date; ``RangeError`` naming ``name`` otherwise.

    >>> parse_day("since", "2026-11-01")
    datetime.date(2026, 11, 1)
    """
    text = value.strip()
    if not _DAY.match(text):
        raise RangeError(f"{name}: {value[:40]!r} is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise RangeError(f"{name}: {value[:40]!r} is not a valid date") from None


def report_range(
    since: str | None,
    until: str | None,
    *,
    tz: ZoneInfo,
    max_days: int | None = None,
    now: float | None = None,
) -> tuple[date, date]:
    """The ``(since, until)`` days asked for, with the defaults filled in.

    Without ``until``: today in ``tz``. Without ``since``: 30 days ending ``until``.
    ``RangeError`` for a malformed date, ``since`` after ``until``, or more than
    ``max_days`` days.

    >>> report_range("2026-11-01", "2026-11-25", tz=ZoneInfo("UTC"))
    (datetime.date(2026, 11, 1), datetime.date(2026, 11, 25))
    """
    end = parse_day("until", until) if until else today(tz, now)
    if since:
        start = parse_day("since", since)
    else:
        try:
            start = days_before(end, DEFAULT_DAYS - 1)
        except ValueError:  # the calendar's first month
            raise RangeError(
                f"until: {end} leaves no {DEFAULT_DAYS} days before it; give since"
            ) from None
    if start > end:
        raise RangeError(f"since ({start}) is after until ({end})")
    days = (end - start).days + 1
    if max_days is not None and days > max_days:
        raise RangeError(f"the range has {days} days; at most {max_days} are allowed")
    return start, end
