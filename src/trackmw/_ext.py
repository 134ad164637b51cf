"""The optional C speedups (``trackmw._speedups``), and whether to use them."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["enabled", "leftovers", "speedup"]

T = TypeVar("T")


def enabled() -> bool:
    """False when the ``TRACKMW_NO_EXTENSIONS`` environment variable turns them off."""
    return os.environ.get("TRACKMW_NO_EXTENSIONS", "") in ("", "0")


@functools.cache
def speedup(name: str) -> Callable[..., Any] | None:
    """The C function ``name`` of ``trackmw._speedups``, or None when the module is not
    built, is turned off or lacks it: the caller then does it all in Python.

    Read at the first call, not at import: importing the speedups imports the pipeline,
    which imports the modules that call this.
    """
    if not enabled():
        return None
    try:
        from . import _speedups
    except ImportError:  # not built (no compiler at install, another Python)
        return None
    # None from a module built before ``name`` was added (an in-place build not redone)
    function: Callable[..., Any] | None = getattr(_speedups, name, None)
    return function


def leftovers(items: Sequence[T], run: Callable[[int], int] | None) -> Iterator[T]:
    """The items a C loop leaves to Python, in order: ``run(i)`` takes the items from
    index ``i`` on while they are its common case and returns the index of the first one
    it leaves (``len(items)`` if none); that one is yielded, and ``run`` goes on after
    it. Without ``run`` (no speedups), every item is yielded."""
    if run is None:
        yield from items
        return
    i = 0
    while i < len(items):
        i = run(i)
        if i < len(items):
            yield items[i]
            i += 1
