"""The demo site's pages and settings, shared by the Flask and the Starlette example.

This file is identical in ``examples/flask_app`` and ``examples/starlette_app`` (a test
checks it), so each example directory runs on its own. It holds no framework code: it
turns the request's ``Visitor`` into plain, accessible HTML with no external resources.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from html import escape
from urllib.parse import urlsplit

from trackmw import Tracker, Visitor

__all__ = [
    "CONTENT",
    "PREFERENCES",
    "USERS",
    "build_tracker",
    "check_login",
    "clean_preferences",
    "content_body",
    "login_body",
    "page",
    "privacy_body",
    "same_origin_post",
    "settings_body",
]

log = logging.getLogger("trackmw.demo")

#: Used only when TRACKMW_SECRET_KEYS is unset. Never deploy with it.
DEMO_SECRET = "trackmw-demo-secret-key-change-me"
DEMO_STORE = "sqlite:///trackmw-demo.db"

#: Demo users and passwords (user id -> (display name, password)).
USERS: dict[str, tuple[str, str]] = {
    "alice": ("Alice", "wonderland"),
    "bob": ("Bob", "builder"),
}

#: Preferences the settings page edits: name -> (label, allowed values).
PREFERENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "theme": ("Colour theme", ("light", "dark")),
    "text_size": ("Text size", ("normal", "large")),
}

#: The three content pages: path -> (title, paragraphs).
CONTENT: dict[str, tuple[str, tuple[str, ...]]] = {
    "/": (
        "Home",
        (
            "This small site shows trackmw at work: every page carries a 1x1 beacon "
            "that counts the visit, and a cookie recognises you when you come back.",
            "Sign in as a demo user to link your visits to an account, or open the "
            "privacy settings to change your choice, see your data or erase it.",
        ),
    ),
    "/about": (
        "About",
        (
            "trackmw is first-party, consent-respecting visitor tracking for WSGI and "
            "ASGI apps. Nothing here loads from another site.",
        ),
    ),
    "/blog": (
        "Blog",
        (
            "Why a pixel? A 1x1 image is the oldest and lightest way to count a page "
            "view, and it works without JavaScript.",
            "Why a signed cookie? So a visitor id cannot be forged or replayed as "
            "another kind of cookie.",
        ),
    ),
}

_NAV = (("/", "Home"), ("/about", "About"), ("/blog", "Blog"), ("/settings", "Privacy settings"))


def build_tracker(environ: Mapping[str, str] | None = None) -> Tracker:
    """The demo's tracker: ``TRACKMW_*`` variables, with demo defaults for the unset ones.

    >>> build_tracker({"TRACKMW_STORE": "memory://"}).settings.store
    'memory://'
    """
    env = os.environ if environ is None else environ
    defaults: dict[str, object] = {}
    if not env.get("TRACKMW_SECRET_KEYS"):
        log.warning("trackmw demo: TRACKMW_SECRET_KEYS is unset, using the demo secret key")
        defaults["secret_keys"] = [DEMO_SECRET]
    if not env.get("TRACKMW_STORE"):
        defaults["store"] = DEMO_STORE
    return Tracker.from_env(env, **defaults)


def check_login(username: str, password: str) -> str | None:
    """The user id for a demo user's name and password, else ``None``."""
    user = USERS.get(username.strip().lower())
    if user is None:
        hmac.compare_digest(password, password)  # spend the same time either way
        return None
    return username.strip().lower() if hmac.compare_digest(password, user[1]) else None


def same_origin_post(origin: str | None, referer: str | None, host: str, scheme: str) -> bool:
    """Does a form POST come from this site? (``Origin``, else ``Referer``, else allowed.)

    >>> same_origin_post("http://evil.test", None, "127.0.0.1:8000", "http")
    False
    """
    source = origin or referer
    if not source:
        return True
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    return parts.scheme == scheme and parts.netloc.lower() == host.lower()


def clean_preferences(form: Mapping[str, str]) -> dict[str, str]:
    """The known preferences with an allowed value from a submitted form."""
    return {
        name: form[name]
        for name, (_, allowed) in PREFERENCES.items()
        if form.get(name) in allowed
    }


def _user_name(visitor: Visitor) -> str | None:
    user = USERS.get(visitor.user_id or "")
    return user[0] if user else None


def _header(visitor: Visitor, path: str) -> str:
    current = ' aria-current="page"'
    links = " ".join(
        f'<a href="{href}"{current if href == path else ""}>{label}</a>' for href, label in _NAV
    )
    name = _user_name(visitor)
    if name:
        account = (
            f'<div class="account">Welcome back, {escape(name)}! '
            '<form class="inline" method="post" action="/logout">'
            '<button type="submit">Sign out</button></form></div>'
        )
    else:
        account = '<div class="account"><a href="/login">Sign in</a></div>'
    return f'<header><nav aria-label="Main">{links}</nav>{account}</header>'


def _owner_link(tracker: Tracker) -> str:
    if not tracker.settings.dashboard_token:  # no token: no dashboard (it answers 404)
        return ""
    href = escape(tracker.settings.prefix + "/dashboard", quote=True)
    return f' · <a href="{href}">Site owner: dashboard</a>'


def page(
    tracker: Tracker,
    visitor: Visitor,
    path: str,
    title: str,
    body: str,
    *,
    next_path: str | None = None,
) -> str:
    """A whole HTML page: header, consent banner, ``body``, beacon tag.

    ``body`` is HTML the caller has escaped; ``next_path`` is where the banner's
    buttons lead back to (default: ``path``).
    """
    theme = visitor.preferences.get("theme", "light")
    size = visitor.preferences.get("text_size", "normal")
    banner = tracker.consent_banner(visitor, next=next_path or path)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - trackmw demo</title>"
        '<link rel="stylesheet" href="/static/style.css"></head>'
        f'<body class="theme-{escape(str(theme))} text-{escape(str(size))}">'
        f"{_header(visitor, path)}{banner}"
        f"<main><h1>{escape(title)}</h1>{body}</main>"
        '<footer><a href="/privacy">Privacy statement</a> · '
        f'<a href="/settings">Privacy settings</a>{_owner_link(tracker)}</footer>'
        f"{visitor.beacon_tag()}</body></html>\n"
    )


def content_body(path: str) -> tuple[str, str]:
    """Title and body HTML of one of the ``CONTENT`` pages."""
    title, paragraphs = CONTENT[path]
    return title, "".join(f"<p>{escape(p)}</p>" for p in paragraphs)


def login_body(error: str | None = None) -> str:
    """The sign-in form (posts to this site's ``/login``)."""
    users = ", ".join(f"{uid} / {pw}" for uid, (_, pw) in USERS.items())
    problem = f'<p role="alert">{escape(error)}</p>' if error else ""
    return (
        f"{problem}<p>Demo users (name / password): {escape(users)}.</p>"
        "<p>Signing in links your visitor cookie to the account, so the site greets you "
        "when you come back; with cookies rejected it cannot remember you.</p>"
        '<form method="post" action="/login">'
        '<p><label for="username">User name</label> '
        '<input id="username" name="username" autocomplete="username" required></p>'
        '<p><label for="password">Password</label> '
        '<input id="password" name="password" type="password" '
        'autocomplete="current-password" required></p>'
        '<p><button type="submit">Sign in</button></p></form>'
    )


def settings_body(tracker: Tracker, visitor: Visitor, message: str | None = None) -> str:
    """The privacy settings: the choice, preferences, the visitor's data and erasure."""
    consent = visitor.consent
    prefix = escape(tracker.settings.prefix, quote=True)
    if not consent.decided:
        state = "You have not made a choice yet."
    else:
        state = (
            f"Visit counting: {'allowed' if consent.analytics else 'refused'}. "
            f"Remembering preferences: {'allowed' if consent.preferences else 'refused'}."
        )
    if consent.reason in ("dnt", "gpc"):
        state += " Your browser asks sites not to track you, so this site does not."
    notice = f'<p role="status">{escape(message)}</p>' if message else ""
    choice = (
        f"<h2>Your choice</h2><p>{escape(state)}</p>"
        f'<form method="post" action="{prefix}/consent">'
        '<input type="hidden" name="next" value="/settings">'
        '<button type="submit" name="choice" value="accept">Accept cookies</button> '
        '<button type="submit" name="choice" value="reject">Reject cookies</button></form>'
    )
    rows = []
    for name, (label, allowed) in PREFERENCES.items():
        current = visitor.preferences.get(name, allowed[0])
        options = "".join(
            f'<option value="{v}"{" selected" if v == current else ""}>{v}</option>'
            for v in allowed
        )
        rows.append(
            f'<p><label for="pref-{name}">{label}</label> '
            f'<select id="pref-{name}" name="{name}">{options}</select></p>'
        )
    saved = (
        "Your preferences are kept in a cookie because you allow it."
        if consent.preferences
        else "Preferences are only kept while you allow preference cookies; "
        "right now a change lasts for this page only."
    )
    prefs = (
        f"<h2>Preferences</h2><p>{saved}</p>"
        f'<form method="post" action="/settings">{"".join(rows)}'
        '<p><button type="submit">Save preferences</button></p></form>'
    )
    data = (
        "<h2>Your data</h2>"
        f'<p><a href="{prefix}/me">See everything this site holds about you</a> (JSON).</p>'
        f'<form method="post" action="{prefix}/me/delete">'
        '<input type="hidden" name="next" value="/settings?erased=1">'
        '<button type="submit">Erase my data</button></form>'
    )
    return notice + choice + prefs + data


def privacy_body(tracker: Tracker) -> str:
    """The privacy statement."""
    days = tracker.settings.cookie_max_age // 86400
    return (
        "<p>This site counts visits with a 1x1 image (a web beacon) and recognises a "
        "returning browser with a random id kept in a signed cookie, "
        f"<code>trackmw_id</code>, sent only to this site, for at most {days} days.</p>"
        "<p>We keep the pages you view, when, your browser, operating system and device "
        "class, never your IP address. If you sign in, your visits are linked to your "
        "account.</p>"
        "<p>You can accept or reject the cookie at any time, and see or erase what we "
        'hold about you, on the <a href="/settings">privacy settings</a> page. '
        "Do-Not-Track and Global Privacy Control are honoured as a rejection.</p>"
        f"<p>Policy version {escape(tracker.settings.policy_version)}.</p>"
    )
