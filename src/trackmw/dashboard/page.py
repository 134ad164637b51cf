"""The dashboard's HTML: the report page and the login page, rendered on the server.

Self-contained and CSP-friendly: no script, no inline ``<style>`` and no ``style=``
attribute; the stylesheet is served by trackmw itself (``<prefix>/dashboard.css``),
the chart is inline SVG, bars are ``<meter>`` elements. Every value is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from html import escape
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

from ..report import Report
from .chart import line_chart

__all__ = ["CSS", "dashboard_page", "login_page", "message_page"]

CSS: bytes = files("trackmw.dashboard").joinpath("dashboard.css").read_bytes()

_TOTALS = (
    ("pageviews", "Page views"),
    ("visitors", "Visitors"),
    ("registered_visitors", "Registered visitors"),
    ("anonymous_pageviews", "Anonymous page views"),
    ("bot_hits", "Bot hits"),
)
_BREAKDOWNS = (  # (report field, heading, name column, name key, count key, count label)
    ("pages", "Top pages", "Page", "path", "pageviews", "Page views"),
    ("referrers", "Referrers", "Referrer", "name", "pageviews", "Page views"),
    ("campaigns", "Campaigns", "Campaign", "name", "pageviews", "Page views"),
    ("browsers", "Browsers", "Browser", "name", "visitors", "Visitors"),
    ("os", "Operating systems", "OS", "name", "visitors", "Visitors"),
    ("devices", "Devices", "Device", "name", "visitors", "Visitors"),
)


def _head(title: str, prefix: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="same-origin">'
        f"<title>{escape(title)}</title>"
        f'<link rel="stylesheet" href="{escape(prefix)}/dashboard.css">'
        "</head>"
    )


def _table(
    rows: Sequence[dict[str, Any]],
    name_col: str,
    name_key: str,
    count_key: str,
    count_label: str,
    extra_visitors: bool,
) -> str:
    if not rows:
        return '<p class="empty">Nothing in this period.</p>'
    top = max(int(r[count_key]) for r in rows) or 1
    head = f'<tr><th scope="col">{escape(name_col)}</th>'
    head += f'<th scope="col" class="n">{escape(count_label)}</th>'
    if extra_visitors:
        head += '<th scope="col" class="n">Visitors</th>'
    head += '<th scope="col" class="bar"><span class="visually-hidden">Share</span></th></tr>'
    body = []
    for r in rows:
        n = int(r[count_key])
        cells = f'<td class="name">{escape(str(r[name_key]))}</td><td class="n">{n:,}</td>'
        if extra_visitors:
            cells += f'<td class="n">{int(r["visitors"]):,}</td>'
        cells += f'<td class="bar"><meter min="0" max="{top}" value="{n}"></meter></td>'
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _range_form(prefix: str, since: date, until: date, today: date) -> str:
    action = escape(prefix + "/dashboard")
    quick = []
    for label, days in (
        ("Today", 1),
        ("7 days", 7),
        ("30 days", 30),
        ("90 days", 90),
        ("12 months", 365),
    ):
        query = urlencode(
            {"since": (today - timedelta(days=days - 1)).isoformat(), "until": today.isoformat()}
        )
        quick.append(f'<a href="{action}?{escape(query)}">{label}</a>')
    return (
        f'<form class="range" method="get" action="{action}">'
        f'<label>From <input type="date" name="since" value="{since.isoformat()}" required></label>'
        f'<label>To <input type="date" name="until" value="{until.isoformat()}" required></label>'
        '<button type="submit">Show</button></form>'
        f'<nav class="quick" aria-label="Quick ranges">{"".join(quick)}</nav>'
    )


def _logout(prefix: str, show: bool) -> str:
    if not show:
        return ""
    return (
        f'<form method="post" action="{escape(prefix)}/dashboard/logout">'
        '<button type="submit" class="plain">Log out</button></form>'
    )


def dashboard_page(report: Report, *, prefix: str, timezone: str, today: date, logout: bool) -> str:
    """The whole dashboard for one report."""
    doc = report.to_dict()
    totals = "".join(
        f"<div><dt>{label}</dt><dd>{int(doc[key]):,}</dd></div>" for key, label in _TOTALS
    )
    consent = doc["consent"]
    totals += f"<div><dt>Consent accepted</dt><dd>{int(consent['accepted']):,}</dd></div>"
    totals += f"<div><dt>Consent rejected</dt><dd>{int(consent['rejected']):,}</dd></div>"
    days_rows = "".join(
        f'<tr><td>{escape(d["day"])}</td><td class="n">{int(d["pageviews"]):,}</td>'
        f'<td class="n">{int(d["visitors"]):,}</td></tr>'
        for d in doc["days"]
    )
    sections = []
    for field, heading, name_col, name_key, count_key, count_label in _BREAKDOWNS:
        table = _table(
            doc[field], name_col, name_key, count_key, count_label, extra_visitors=field == "pages"
        )
        sections.append(f'<section class="card" id="{field}"><h2>{heading}</h2>{table}</section>')
    period = f"{report.since.isoformat()} – {report.until.isoformat()}"
    return (
        _head(f"Visitors {period}", prefix)
        + "<body><header><h1>Visitors</h1>"
        + _logout(prefix, logout)
        + "</header><main>"
        + _range_form(prefix, report.since, report.until, today)
        + f'<dl class="totals" aria-label="Totals for {escape(period)}">{totals}</dl>'
        + '<section class="card" id="chart"><h2>Per day</h2>'
        + line_chart(doc["days"])
        + '<p class="legend"><span class="pv">Page views</span>'
        + '<span class="vis">Visitors</span></p>'
        + "<details><summary>Numbers per day</summary><table><thead><tr>"
        + '<th scope="col">Day</th><th scope="col" class="n">Page views</th>'
        + '<th scope="col" class="n">Visitors</th></tr></thead>'
        + f"<tbody>{days_rows}</tbody></table></details></section>"
        + sections[0]
        + f'<div class="grid2">{"".join(sections[1:])}</div>'
        + f"</main><footer>Days are counted in {escape(timezone)}. "
        + "Unique visitors are distinct visitor ids with analytics consent; anonymous "
        + "page views carry no id.</footer></body></html>"
    )


def login_page(prefix: str, error: str | None = None) -> str:
    """The login form (token in a password field, posted to ``<prefix>/dashboard/login``)."""
    err = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return (
        _head("Log in — visitor dashboard", prefix)
        + '<body><main class="login"><h1>Visitor dashboard</h1>'
        + err
        + f'<form method="post" action="{escape(prefix)}/dashboard/login">'
        + '<label for="token">Dashboard token</label>'
        + '<input id="token" name="token" type="password" autocomplete="current-password" '
        + "required autofocus>"
        + '<button type="submit">Log in</button></form></main></body></html>'
    )


def message_page(prefix: str, title: str, message: str) -> str:
    """A short page with one message (errors, refusals)."""
    return (
        _head(title, prefix)
        + f'<body><main class="login"><h1>{escape(title)}</h1>'
        + f'<p>{escape(message)}</p><p><a href="{escape(prefix)}/dashboard">Back</a></p>'
        + "</main></body></html>"
    )
