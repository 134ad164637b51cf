"""Stores, chosen by URL: ``memory://``, ``sqlite:///path``, ``redis://…``, ``postgresql://…``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Store, register, store_class

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Store", "open_store", "register", "store_class"]


def open_store(url: str, settings: Settings | None = None) -> Store:
    """Open the store named by ``url``.

    >>> open_store("memory://")
    <MemoryStore memory://>
    """
    return store_class(url)(url, settings)
