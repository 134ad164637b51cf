"""How ``sqlite_uniques`` keeps an entity's chains in one row of text, and extends them.

A row is the entity's dimensions' segments, ``;``-joined: ``dim:day,day,…`` (dimension
id, then its visit days as ``date.toordinal()`` numbers, ascending).

A batch touches a few dimensions of each of its visitors, mostly with a day later than
any in the chain (today): each touched segment is found in the row's text (by a search,
or for many segments by indexing the text once), such a day is appended to it, and the
text is rebuilt once around the edits. Only a day arriving out of order decodes its
chain.

Almost every visitor keeps one browser, OS and device: their three chains are then the
visitor's own chain (all visitors), and the row says so with a first segment
``c:browser,os,device`` (dimension ids, 0 for none) instead of three copies that each
batch would have to extend. The links of the three dimensions follow those of the
visitor's chain. A visitor seen with a second class gets the three chains written out
(``with_classes``) and from then on extended like any other.

Every change to a chain adds to a ``Delta`` of links: ``(dim, day, prev) -> +n/-n``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from functools import lru_cache

from .._ext import speedup

__all__ = [
    "Class",
    "Delta",
    "bump",
    "join_days",
    "merge",
    "parse_days",
    "since",
    "split",
    "with_classes",
]

Class = tuple[int, int, int]  # browser, OS and device dimension ids (0: none)
Delta = dict[tuple[int, int, int], int]


def merge(
    text: str | None,
    visits: dict[int, set[int]],
    delta: Delta,
    follow: int = 0,
    mirrored: Sequence[int] = (),
) -> str:
    """``text`` (an entity's chains) with these days added; their links go to ``delta``,
    and those of dimension ``follow`` also to the ``mirrored`` dimensions'.

    A batch touches a few of an entity's segments, out of as many as the pages it ever
    visited: each is found by a search of the text, edited in place, and the text
    rebuilt once, rather than split into every segment and joined back. Only when a
    batch touches many segments (a heavy visitor, whose text is long) is the text
    indexed once instead.

    With the C speedups built, their ``extend_chains`` does the common case: one day a
    dimension, each new to the entity or not earlier than its chain's last day. It was
    a quarter of the SQLite store's writing; anything else is left to this code.
    """
    if len(visits) <= _SEARCHED:
        c_merge = speedup("extend_chains")
        if c_merge is not None:
            merged: str | None = c_merge(text or "", visits, delta, follow, mirrored)
            if merged is not None:
                return merged
    own: Delta = {}  # the links of ``follow``, added to each of its mirrors at the end
    text = text or ""
    where = _segments(text) if len(visits) > _SEARCHED else None
    probe = ";" + text if where is None else ""  # a segment starts the text or follows ";"
    edits: list[tuple[int, int, str]] = []  # (start, end, new text) of segments' days
    added: list[str] = []  # new segments, appended in the order of ``visits``
    for dim, new in visits.items():
        target = own if dim == follow else delta
        name = str(dim)
        if where is None:
            at = probe.find(";" + name + ":")
            start = at + len(name) + 1 if at >= 0 else -1  # where its days start
        else:
            start = where.get(name, -1)
        if start < 0:  # the entity's first visit in this dimension
            if len(new) == 1:
                (day,) = new
                key = (dim, day, -1)
                target[key] = target.get(key, 0) + 1
                added.append(f"{name}:{day}")
            else:
                chain: list[int] = []
                _insert(chain, sorted(new), dim, target)
                added.append(f"{name}:{join_days(chain)}")
            continue
        end = text.find(";", start)
        edit = _extend(text, start, len(text) if end < 0 else end, new, dim, target)
        if edit is not None:
            edits.append(edit)
    if edits:
        edits.sort()
        pieces: list[str] = []
        done = 0
        for start, end, days in edits:
            pieces += text[done:start], days
            done = end
        pieces.append(text[done:])
        text = "".join(pieces)
    if added:
        text = ";".join([text, *added]) if text else ";".join(added)
    for (_, day, prev), n in own.items():
        for dim in (follow, *mirrored):
            key = (dim, day, prev)
            delta[key] = delta.get(key, 0) + n
    return text


#: Up to this many dimensions a batch, each segment is found by a search of the text.
_SEARCHED = 12


def _segments(text: str) -> dict[str, int]:
    """Where each segment's days start in ``text``, by the segment's name."""
    out: dict[str, int] = {}
    at = 0
    for part in text.split(";"):
        colon = part.find(":")
        out[part[:colon]] = at + colon + 1
        at += len(part) + 1
    return out


def _extend(
    text: str, start: int, end: int, new: set[int], dim: int, delta: Delta
) -> tuple[int, int, str] | None:
    """The edit adding ``new`` to the chain whose days are ``text[start:end]``: ``(a, b,
    piece)``, to put ``piece`` in place of ``text[a:b]``; None if no day is new. The links
    that change go to ``delta``. Days later than the chain's last (today's, as a rule)
    are appended at ``end``, without reading the chain."""
    last = int(text[text.rfind(",", start, end) + 1 or start : end])
    if len(new) == 1:
        (day,) = new
        if day > last:  # the usual case: a later day (today), appended
            key = (dim, day, last)
            delta[key] = delta.get(key, 0) + 1
            return end, end, f",{day}"
        if day == last:
            return None
    days = sorted(new)
    if days[0] > last:
        prev = last
        for day in days:
            key = (dim, day, prev)
            delta[key] = delta.get(key, 0) + 1
            prev = day
        return end, end, "," + join_days(days)
    old = parse_days(text[start:end])
    return (start, end, join_days(old)) if _insert(old, days, dim, delta) else None


def _insert(chain: list[int], days: list[int], dim: int, delta: Delta) -> bool:
    """Insert ``days`` into the sorted ``chain``, relinking successors; any new?"""
    changed = False
    for day in days:
        i = bisect_left(chain, day)
        if i < len(chain) and chain[i] == day:
            continue
        prev = chain[i - 1] if i else -1
        if i < len(chain):  # an earlier day arrived late: relink its successor
            succ = chain[i]
            bump(delta, (dim, succ, prev), -1)
            bump(delta, (dim, succ, day), 1)
        bump(delta, (dim, day, prev), 1)
        chain.insert(i, day)
        changed = True
    return changed


def with_classes(
    text: str, dims: dict[int, set[int]], seen: dict[Class, set[int]], visitors: int
) -> tuple[str, tuple[int, ...]]:
    """A visitor's chains ``text`` before adding this batch's ``seen`` classes, and the
    class dimensions whose links follow the visitor's chain (none: they were added to
    ``dims`` as dimensions of their own)."""
    segment = text.partition(";")[0][2:] if text.startswith("c:") else None
    if len(seen) == 1:
        (cls,) = seen
        written, mirrored = _class_text(cls)
        if segment == written:
            return text, mirrored
        if not text:
            return "c:" + written, mirrored
    if segment is not None:  # a second class: the first one's chains are written out
        rest = text[len(segment) + 3 :]
        chain = split(rest)[visitors]
        text = ";".join([rest, *(f"{d}:{chain}" for d in _class(segment) if d)])
    for cls, days in seen.items():
        for dim in cls:
            if dim:
                have = dims.get(dim)
                if have is None:
                    dims[dim] = set(days)
                else:
                    have |= days
    return text, ()


@lru_cache(maxsize=1024)
def _class_text(cls: Class) -> tuple[str, tuple[int, ...]]:
    """A class segment's text, and its dimensions."""
    return "{},{},{}".format(*cls), tuple(d for d in cls if d)


def _class(text: str) -> Class:
    browser, os, device = map(int, text.split(","))
    return browser, os, device


def split(text: str, visitors: int | None = None) -> dict[int, str]:
    """Each dimension's days (text) in an entity's chains; with the id of the
    ``visitors`` dimension, also those of a class segment's dimensions."""
    out: dict[int, str] = {}
    cls = ""
    for part in text.split(";"):
        dim, _, days = part.partition(":")
        if dim == "c":
            cls = days
        else:
            out[int(dim)] = days
    if cls and visitors is not None:
        for member in _class(cls):
            if member:
                out[member] = out[visitors]
    return out


def since(text: str, cut: int) -> str | None:
    """An entity's chains ``text`` without the days before ``cut`` (``None`` if none is
    left). A class segment stays as long as the visitor's own chain does.

    >>> since("c:3,4,0;1:5,7;12:5", 6)
    'c:3,4,0;1:7'
    """
    chains = []
    for dim, days_text in split(text).items():
        days = parse_days(days_text)
        kept = [d for d in days if d >= cut]
        if kept:
            chains.append(f"{dim}:{days_text if len(kept) == len(days) else join_days(kept)}")
    if not chains:
        return None
    if text.startswith("c:"):
        chains.insert(0, text.partition(";")[0])
    return ";".join(chains)


def parse_days(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def join_days(days: Iterable[int]) -> str:
    return ",".join(map(str, days))


def bump(delta: Delta, key: tuple[int, int, int], by: int) -> None:
    delta[key] = delta.get(key, 0) + by
