"""Site owners read their counts: the stats API and the HTML dashboard.

``install(core)`` adds the endpoints to a tracker's router (``Core.endpoints``):

>>> from trackmw import Tracker
>>> tracker = Tracker(secret_keys=["a-long-secret-key-1"], store="memory://",
...                   dashboard_token="a-long-dashboard-token")
>>> install(tracker.core)
>>> sorted(p for p in tracker.core.endpoints.routes if "dash" in p or "api" in p)
['/api/stats', '/dashboard', '/dashboard.css', '/dashboard/login', '/dashboard/logout']

The endpoints answer 404 while neither ``dashboard_token`` nor ``authorize`` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .handlers import DashboardEndpoints

if TYPE_CHECKING:
    from ..core import Core

__all__ = ["DashboardEndpoints", "install"]


def install(core: Core) -> None:
    """Route the stats API and the dashboard under ``core``'s prefix. Safe to call twice."""
    routes = core.endpoints.routes
    if "/api/stats" in routes:
        return
    endpoints = DashboardEndpoints(core)
    route = core.endpoints.route
    route("/api/stats", endpoints.stats)
    route("/dashboard", endpoints.dashboard)
    route("/dashboard/login", endpoints.login)
    route("/dashboard/logout", endpoints.logout)
    route("/dashboard.css", endpoints.css)
