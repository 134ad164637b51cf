"""The optional C speedups (``trackmw._speedups``), and whether to use them."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["enabled", "leftovers", "module", "speedup"]

T = TypeVar("T")


def enabled() -> bool:
    """False when the ``TRACKMW_NO_EXTENSIONS`` environment variable turns them off."""
    return os.environ.get("TRACKMW_NO_EXTENSIONS", "") in ("", "0")


@functools.cache
def module() -> ModuleType | None:
    """``trackmw._speedups``, or None when it is not built or is turned off. A module
    that is built but cannot be loaded (a library it links is gone since it was built)
    is said once, as a warning: trackmw then runs as pure Python, the same but slower."""
    if not enabled():
        return None
    try:
        from . import _speedups
    except ModuleNotFoundError:  # not built (no compiler at install, another Python)
        return None
    except ImportError as exc:
        logging.getLogger("trackmw").warning(
            "trackmw: the C speedups are built but could not be loaded (%s); running the "
            "pure-Python path. Reinstall trackmw to rebuild them.", exc,
        )
        return None
    return _speedups


@functools.cache
def speedup(name: str) -> Callable[..., Any] | None:
    """The C function ``name`` of ``trackmw._speedups``, or None when the module is not
    built, is turned off or lacks it: the caller then does it all in Python.

    Read at the first call, not at import: importing the speedups imports the pipeline,
    which imports the modules that call this.
    """
    # None from a module built before ``name`` was added (an in-place build not redone)
    function: Callable[..., Any] | None = getattr(module(), name, None)
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
