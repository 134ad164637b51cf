"""From a raw hit to the page view a store writes (in the writer thread, off the request path).

Query strings are stripped except ``utm_*`` parameters (``utm_campaign`` is the campaign
when the pixel named none), the referrer is reduced to its host (none for links within
the site), the User-Agent is classified (cached), the local day is computed in the
tracker's time zone, and bots and visitors without analytics consent carry no id, user
or device data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

from ._ext import leftovers, speedup
from .events import MAX_CAMPAIGN, MAX_LEN, UNKNOWN_PAGE, ConsentChoice, Hit, PageView
from .useragent import classify

__all__ = ["local_day", "normalize", "normalize_batch"]

_day_cache: dict[tuple[int, str], str] = {}


def local_day(ts: float, tz: ZoneInfo) -> str:
    """The day ``ts`` falls on in ``tz``, cached per minute (tz offsets change on minutes)."""
    key = (int(ts // 60), tz.key)
    day = _day_cache.get(key)
    if day is None:
        if len(_day_cache) > 4096:
            _day_cache.clear()
        day = _day_cache[key] = datetime.fromtimestamp(ts, tz).date().isoformat()
    return day


def normalize(hit: Hit, tz: ZoneInfo) -> PageView:
    """Turn a raw hit into the page view a store writes (an error is raised)."""
    pageviews: list[PageView] = []
    normalize_batch((hit,), tz, pageviews, [])
    if not pageviews:
        raise TypeError(f"not a Hit: {type(hit).__name__}")
    return pageviews[0]


def normalize_batch(
    items: Iterable[Hit | ConsentChoice],
    tz: ZoneInfo,
    pageviews: list[PageView],
    others: list[ConsentChoice],
    failed: Callable[[Hit, Exception], None] | None = None,
) -> None:
    """Append each hit of ``items``, normalized, to ``pageviews``, and each other item
    (a consent choice) to ``others``. A hit that cannot be normalized goes to
    ``failed``, and is left out; without ``failed``, its error is raised.

    What a page view keeps of its page, referrer, campaign, User-Agent and host depends
    on those five values alone, and they repeat from hit to hit: that part is cached
    by them together (bounded), so a repeated hit costs one lookup and the tuple. The
    loop is the writer's per-event work, so it calls nothing for a cached hit: its
    local day is looked up again only when its minute differs from the hit before.
    With the C speedups built, their ``normalize_run`` takes the cached hits of that
    minute, and leaves every other item to this loop.
    """
    c_run = speedup("normalize_run")
    hits = items if type(items) is list or type(items) is tuple else list(items)
    fixed_of = _fixed.get
    add = pageviews.append
    minute = day = None
    lo = hi = 0.0  # the bounds of the minute whose day is known, for the C loop
    # (Until a day is known, the C loop takes nothing.)
    run = c_run and (lambda i: c_run(hits, i, _fixed, lo, hi, day, Hit, PageView, pageviews))
    for item in leftovers(hits, run):
        if type(item) is not Hit and not isinstance(item, Hit):
            others.append(item)
            continue
        try:
            ts, visitor_id, user_id, page, referrer, campaign, user_agent, host = item
            fixed = fixed_of((page, referrer, campaign, user_agent, host))
            if fixed is None:
                fixed = _fixed_for(page, referrer, campaign, user_agent, host)
            if visitor_id is None or fixed[6]:  # anonymous views and bots: no visitor data
                fixed = _anonymous(fixed)
                visitor_id = user_id = None
            this_minute = ts // 60
            if this_minute != minute:
                day = local_day(ts, tz)
                minute = this_minute  # once the day is known: a hit whose day fails sets none
                lo = float(minute * 60)
                hi = lo + 60.0
            # PageView(ts, day, visitor_id, user_id, path, referrer, campaign, browser, os,
            # device, bot), built as the tuple it is (no keyword parsing).
            add(_new_tuple(PageView, (ts, day, visitor_id, user_id, *fixed)))
        except Exception as exc:
            if failed is None:
                raise
            failed(item, exc)


def _fixed_for(
    page: str, referrer: str | None, campaign: str | None, user_agent: str, host: str
) -> tuple[str, str | None, str | None, str | None, str | None, str | None, bool]:
    """``_fix``, kept in the cache when the texts are short: long ones rarely repeat,
    and a client sending distinct 2 KB pages must not make the cache hold megabytes."""
    fixed = _fix(page, referrer, campaign, user_agent, host)
    if len(page) + len(referrer or "") + len(campaign or "") <= _FIXED_TEXT:
        if len(_fixed) >= 2 * _CACHED:
            _fixed.clear()
        _fixed[(page, referrer, campaign, user_agent, host)] = fixed
    return fixed


def _fix(
    page: str, referrer: str | None, campaign: str | None, user_agent: str, host: str
) -> tuple[str, str | None, str | None, str | None, str | None, str | None, bool]:
    """``(path, referrer, campaign, browser, os, device, bot)`` of a page view.

    Pages and referrers repeat more than whole hits do: their normal forms are cached
    on their own too, so a hit new in only its User-Agent costs no parsing.
    """
    found = _pages.get(page)
    if found is None:
        found = _page(page)
        if len(_pages) >= _CACHED:
            _pages.clear()
        _pages[page] = found
    path, utm_campaign = found
    campaign = campaign or utm_campaign
    source = None
    if referrer:
        if (referrer, host) in _referrers:
            source = _referrers[(referrer, host)]
        else:
            source = _referrer_host(referrer, host)
            if len(_referrers) >= _CACHED:
                _referrers.clear()
            _referrers[(referrer, host)] = source
    ua = classify(user_agent)
    return (
        path,
        source,
        (campaign or None) and campaign[:MAX_CAMPAIGN],
        ua.browser,
        ua.os,
        ua.device,
        ua.bot,
    )


def _anonymous(
    fixed: tuple[str, str | None, str | None, str | None, str | None, str | None, bool],
) -> tuple[str, str | None, str | None, None, None, None, bool]:
    return (fixed[0], fixed[1], fixed[2], None, None, None, fixed[6])


_new_tuple = tuple.__new__
#: Entries in each cache below (each dropped all at once when full).
_CACHED = 4096
_pages: dict[str, tuple[str, str | None]] = {}
_referrers: dict[tuple[str, str], str | None] = {}
#: The longest page, referrer and campaign (together) whose whole hit is cached.
_FIXED_TEXT = 256
_fixed: dict[
    tuple[str, str | None, str | None, str, str],
    tuple[str, str | None, str | None, str | None, str | None, str | None, bool],
] = {}


def _page(page: str) -> tuple[str, str | None]:
    """``(path, utm_campaign)``: the path with only its ``utm_*`` parameters kept."""
    path, _, query = page.partition("?")
    path = path.split("#", 1)[0]
    if "://" in path[:16]:  # a full URL given as the page
        path = urlsplit(path).path
    if not path.startswith("/") and path != UNKNOWN_PAGE:
        path = "/" + path
    campaign = None
    if query:
        utm = [
            (k, v)
            for k, v in parse_qsl(query, keep_blank_values=True, max_num_fields=200)
            if k.startswith("utm_")
        ]
        if utm:
            path = path + "?" + urlencode(utm)
            campaign = dict(utm).get("utm_campaign")
    return path[:MAX_LEN], campaign


def _referrer_host(referrer: str | None, own_host: str) -> str | None:
    if not referrer:
        return None
    try:
        host = urlsplit(referrer).hostname
    except ValueError:
        return None
    if not host or host == own_host.split(":", 1)[0].lower():
        return None  # no host, or an internal link
    return host[:253]
