"""From a raw hit to the page view a store writes (in the writer thread, off the request path).

Query strings are stripped except ``utm_*`` parameters (``utm_campaign`` is the campaign
when the pixel named none), the referrer is reduced to its host (none for links within
the site), the User-Agent is classified (cached), the local day is computed in the
tracker's time zone, and bots and visitors without analytics consent carry no id, user
or device data.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

from .events import MAX_CAMPAIGN, MAX_LEN, UNKNOWN_PAGE, Hit, PageView
from .useragent import classify

__all__ = ["local_day", "normalize"]

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
    """Turn a raw hit into the page view a store writes."""
    page = _pages.get(hit.page)
    if page is None:
        page = _page(hit.page)
        if len(_pages) >= _CACHED:
            _pages.clear()
        _pages[hit.page] = page
    path, utm_campaign = page
    campaign = hit.campaign or utm_campaign
    referrer = None
    if hit.referrer:
        key = (hit.referrer, hit.host)
        if key in _referrers:
            referrer = _referrers[key]
        else:
            referrer = _referrer_host(hit.referrer, hit.host)
            if len(_referrers) >= _CACHED:
                _referrers.clear()
            _referrers[key] = referrer
    ua = classify(hit.user_agent)
    visitor_id, user_id = hit.visitor_id, hit.user_id
    browser: str | None = ua.browser
    os_name: str | None = ua.os
    device: str | None = ua.device
    if ua.bot or visitor_id is None:  # bots are never visitors; anonymous views carry nothing
        visitor_id = user_id = None
        browser = os_name = device = None
    return PageView(
        ts=hit.ts,
        day=local_day(hit.ts, tz),
        visitor_id=visitor_id,
        user_id=user_id,
        path=path,
        referrer=referrer,
        campaign=(campaign or None) and campaign[:MAX_CAMPAIGN],
        browser=browser,
        os=os_name,
        device=device,
        bot=ua.bot,
    )


#: Pages and referrers repeat: their normal forms are cached (bounded, dropped when full).
_CACHED = 4096
_pages: dict[str, tuple[str, str | None]] = {}
_referrers: dict[tuple[str, str], str | None] = {}


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
