"""``Tracker``: the settings, the store, the pipeline and the core, in one object."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from html import escape
from typing import Any

from .core import Core
from .pipeline import Pipeline
from .report import DEFAULT_DAYS, Report, days_before
from .settings import Settings
from .stores import Store, open_store
from .visitor import Visitor
from .writer import ProcessSink

__all__ = ["Tracker", "get_visitor"]


class Tracker:
    """Everything trackmw needs to track one site.

    >>> tracker = Tracker(secret_keys=["a-long-secret-key-1"], store="memory://")
    >>> tracker.settings.consent
    'opt-out'

    Wrap the app with ``trackmw.asgi.TrackingMiddleware`` or
    ``trackmw.wsgi.TrackingMiddleware``; read counts with ``stats()``. Every keyword is
    a setting of ``trackmw.settings.Settings``; a bad one raises ``ValueError``.
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(**settings)
        s = self.settings
        self.pipeline = Pipeline(
            lambda: open_store(s.store, s),
            buffer_size=s.buffer_size,
            batch_size=s.batch_size,
            flush_interval=s.flush_interval,
            timezone=s.timezone,
            sink_factory=(lambda: ProcessSink(s)) if s.writer == "process" else None,
        )
        self.core = Core(s, self.pipeline)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Tracker:
        """A tracker configured from ``TRACKMW_*`` variables (``overrides`` win).

        ``TRACKMW_SECRET_KEYS`` is comma-separated, newest first.
        """
        settings = Settings.from_env(environ, **overrides)
        return cls(**{name: getattr(settings, name) for name in settings.__dataclass_fields__})

    def __repr__(self) -> str:
        from .stores.base import redact

        # The URL, not the store: a repr must not open connections.
        return f"<Tracker store={redact(self.settings.store)!r} consent={self.settings.consent!r}>"

    @property
    def store(self) -> Store:
        """The store (opened on first use)."""
        return self.pipeline.store

    # -- reading counts ---------------------------------------------------------------------

    def today(self) -> date:
        """Today in the tracker's time zone."""
        return datetime.now(self.settings.tzinfo).date()

    def stats(self, since: date | None = None, until: date | None = None) -> Report:
        """The report for ``since``..``until`` (default: the last 30 days, today included).

        Events buffered in this process are written first.
        """
        until = until or self.today()
        since = since or days_before(until, DEFAULT_DAYS - 1)  # ValueError in year 1's first month
        if since > until:
            raise ValueError("since must not be after until")
        self.pipeline.flush()
        return self.store.report(since, until)

    # -- lifecycle ----------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write buffered events now. ``False`` if the store refused (they are kept)."""
        return self.pipeline.flush()

    def close(self) -> bool:
        """Flush and release the store. The tracker reopens it if used again."""
        return self.pipeline.close()

    # -- visitors' rights -------------------------------------------------------------------

    def visitor_data(self, visitor_id: str) -> dict[str, Any]:
        """Everything the store holds about one visitor (for access requests)."""
        self.pipeline.flush()
        return self.store.visitor_data(visitor_id)

    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        """Erase a visitor (and rows of its linked user) from the buffer and the store."""
        return self.pipeline.erase(visitor_id, user_id)

    def purge(self, older_than_days: int) -> int:
        """Delete events and consent records older than ``older_than_days`` days."""
        if older_than_days < 0:
            raise ValueError("older_than_days must be >= 0")
        before = days_before(self.today(), older_than_days)  # ValueError past the year 1
        self.pipeline.flush()
        return self.store.purge(before)

    # -- the banner ------------------------------------------------------------------------

    def consent_banner(self, visitor: Visitor, next: str = "/") -> str:
        """An accessible consent form, or ``""`` when the choice is made and current.

        Accept and Reject are buttons of the same kind and size, posting to the consent
        endpoint; it works without JavaScript and links the privacy statement
        (``privacy_url`` setting).
        """
        consent = visitor.consent
        if consent.decided and not consent.stale:
            return ""
        from .endpoints import safe_next

        target = safe_next(next) or "/"
        action = escape(self.settings.prefix + "/consent", quote=True)
        privacy = escape(self.settings.privacy_url, quote=True)
        intro = (
            "Our privacy statement has changed. Please review your choice."
            if consent.stale
            else "We use a cookie to count visits and recognise returning visitors."
        )
        return (
            '<section class="trackmw-banner" role="region" aria-labelledby="trackmw-banner-title">'
            '<h2 id="trackmw-banner-title">Cookies</h2>'
            f"<p>{escape(intro)} You can accept or reject it; you can change your mind at any "
            f'time. <a href="{privacy}">Privacy statement</a>.</p>'
            f'<form method="post" action="{action}">'
            f'<input type="hidden" name="next" value="{escape(target, quote=True)}">'
            '<button type="submit" name="choice" value="accept" class="trackmw-choice">'
            "Accept</button> "
            '<button type="submit" name="choice" value="reject" class="trackmw-choice">'
            "Reject</button>"
            "</form></section>"
        )


def get_visitor(x: Any) -> Visitor:
    """The ``Visitor`` of a request.

    ``x`` may be a Starlette ``Request``, an ASGI scope, a werkzeug/Flask request or a
    WSGI environ. Raises ``LookupError`` when trackmw's middleware is not in front of
    the app (or the path is excluded).
    """
    visitor = None
    if isinstance(x, dict):
        visitor = x.get("trackmw") or x.get("trackmw.visitor")
    else:
        scope = getattr(x, "scope", None)
        environ = getattr(x, "environ", None)
        if isinstance(scope, dict):
            visitor = scope.get("trackmw")
        elif isinstance(environ, dict):
            visitor = environ.get("trackmw.visitor")
    if callable(visitor) and not isinstance(visitor, Visitor):
        visitor = visitor()
    if not isinstance(visitor, Visitor):
        raise LookupError(
            "no trackmw visitor on this request: wrap the app with "
            "trackmw.asgi.TrackingMiddleware or trackmw.wsgi.TrackingMiddleware "
            "(excluded paths have no visitor)"
        )
    return visitor
