"""trackmw: first-party, consent-respecting visitor tracking for WSGI and ASGI apps.

>>> from trackmw import Tracker
>>> tracker = Tracker(secret_keys=["change-me-to-a-long-secret"], store="memory://")
"""

from __future__ import annotations

from .consent import Consent
from .errors import ConfigurationError, StoreError, TrackmwError
from .report import Report
from .tracker import Tracker, get_visitor
from .visitor import Visitor

__all__ = [
    "ConfigurationError",
    "Consent",
    "Report",
    "StoreError",
    "Tracker",
    "TrackmwError",
    "Visitor",
    "get_visitor",
]

__version__ = "0.1.0"
