"""The exceptions trackmw raises.

``TrackmwError`` is the root; ``ConfigurationError`` is also a ``ValueError`` so that
``Tracker(...)`` with a bad setting fails the way Python code expects.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "StoreError", "TrackmwError"]


class TrackmwError(Exception):
    """Base class of every error trackmw raises on purpose."""


class ConfigurationError(TrackmwError, ValueError):
    """A setting is missing or invalid. The message names the setting."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")


class StoreError(TrackmwError):
    """The store could not do what was asked (down, full, refused).

    Store implementations wrap their driver's exceptions in this one, so the pipeline
    can retry without knowing which driver is underneath.
    """
