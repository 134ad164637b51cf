"""Flask extension, on top of the WSGI middleware.

>>> tracking = Tracking(app, tracker)                    # doctest: +SKIP
>>> # or, with an app factory:
>>> tracking = Tracking(); tracking.init_app(app, tracker)  # doctest: +SKIP

In views, ``current_visitor`` is the request's ``Visitor``; templates get
``trackmw_visitor`` and ``trackmw_beacon()`` (the pixel's ``<img>`` tag). Without a
``tracker``, ``init_app`` builds one from the app's ``TRACKMW_*`` config keys, then
the environment (``CONFIG_KEYS`` lists the keys).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Flask, request
from markupsafe import Markup
from werkzeug.local import LocalProxy

from .settings import Settings
from .tracker import Tracker, get_visitor
from .visitor import Visitor
from .wsgi import TrackingMiddleware

__all__ = ["CONFIG_KEYS", "Tracking", "current_visitor"]

#: The Flask config keys ``init_app`` reads when no tracker is given.
CONFIG_KEYS = tuple(
    "TRACKMW_" + f.name.upper() for f in dataclasses.fields(Settings) if f.name != "authorize"
)


def _current_visitor() -> Visitor:
    return get_visitor(request.environ)


#: The ``Visitor`` of the current request.
current_visitor: Visitor = LocalProxy(_current_visitor)  # type: ignore[assignment]


def _visitor_or_none() -> Visitor | None:
    try:
        return get_visitor(request.environ)
    except LookupError:
        return None


_template_visitor = LocalProxy(_visitor_or_none)


class Tracking:
    """The Flask extension. Registers the tracker in ``app.extensions["trackmw"]``."""

    def __init__(self, app: Flask | None = None, tracker: Tracker | None = None) -> None:
        self.tracker = tracker
        if app is not None:
            self.init_app(app, tracker)

    def init_app(self, app: Flask, tracker: Tracker | None = None) -> Tracker:
        tracker = tracker or self.tracker or self._from_config(app)
        self.tracker = tracker
        app.extensions["trackmw"] = tracker
        app.wsgi_app = TrackingMiddleware(app.wsgi_app, tracker)  # type: ignore[method-assign]

        @app.context_processor
        def trackmw_context() -> dict[str, Any]:
            def beacon(path: str | None = None, **params: str) -> Markup:
                try:
                    return Markup(get_visitor(request.environ).beacon_tag(path, **params))
                except LookupError:
                    return Markup("")

            # The visitor, built only if the template uses it; None on excluded paths.
            tracked = request.environ.get("trackmw.visitor") is not None
            return {
                "trackmw_visitor": _template_visitor if tracked else None,
                "trackmw_beacon": beacon,
            }

        return tracker

    @staticmethod
    def _from_config(app: Flask) -> Tracker:
        overrides = {
            key[len("TRACKMW_") :].lower(): app.config[key]
            for key in CONFIG_KEYS
            if key in app.config
        }
        return Tracker.from_env(**overrides)
