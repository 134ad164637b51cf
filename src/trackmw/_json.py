"""``json.dumps`` without the encoder it builds anew at every call.

``json.dumps(obj)`` and ``JSONEncoder.encode`` make a C encoder for each call, which
costs more than encoding a short list or a small dict: the signer (a new visitor's
cookie) and the SQLite store (a batch's page-view groups) encode many of those. Here
the encoder is made once. Where the json module has no C encoder, or it takes other
arguments than CPython's, or its output differs from ``json.dumps`` on a sample, the
result is ``json.dumps`` with the same arguments.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

__all__ = ["QUOTED", "dumps_function", "quoted_texts"]

#: The most texts ``quoted_texts`` keeps before it starts again.
QUOTED = 4096
_quoted: dict[str, str] = {}


def _default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps_function(
    *, ensure_ascii: bool = True, separators: tuple[str, str] = (", ", ": ")
) -> Callable[[Any], str]:
    """A function giving what ``json.dumps(obj, ensure_ascii=…, separators=…)`` gives,
    for values without cycles (the circular-reference check is left out)."""
    plain = functools.partial(json.dumps, ensure_ascii=ensure_ascii, separators=separators)
    make = getattr(json.encoder, "c_make_encoder", None)
    quote = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    if make is None:
        return plain
    item_separator, key_separator = separators
    try:
        encode = make(
            None, _default, quote, None, key_separator, item_separator, False, False, True
        )
    except TypeError:
        return plain

    def dumps(obj: Any) -> str:
        return "".join(encode(obj, 0))

    sample = [1.5, '/ü"\n\x01', None, True, 3, {"k": ["v", 2]}]
    return dumps if dumps(sample) == plain(sample) else plain


def quoted_texts() -> dict[str, str]:
    """Texts as ``json.encoder.encode_basestring_ascii`` writes them, kept for the C
    speedups that write JSON (``views_json``, ``plan_run``): pages, referrers and
    campaigns repeat from one batch to the next. Emptied first when it holds more than
    ``QUOTED``."""
    if len(_quoted) > QUOTED:
        _quoted.clear()
    return _quoted
