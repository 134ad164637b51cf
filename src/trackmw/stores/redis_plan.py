"""A batch for the Redis store, aggregated in Python into the commands its script runs.

Redis runs Lua slowly next to CPython's C-level dicts and sets, and a server has one
thread for every client: so the client does the counting, and the ``WRITE`` script only
replays the result, one command per key. ``plan`` turns a batch into

- per day hash ``P:d:DAY``: its counters, summed (one ``HINCRBY`` per field);
- per unique-count key: its distinct members (one ``PFADD`` or ``SADD``);
- per visitor list ``P:e:VISITOR``: one element, the JSON array of the visitor's events
  of the batch (one ``RPUSH``; earlier versions pushed one element per event, and the
  readers take both); per user set ``P:usr:USER``: its visitors;
- the ``P:days`` and ``P:first`` index entries;

(a visitor named once, in the plan's list of the batch's visitors, and elsewhere by its
place in that list)

as one MessagePack document (see ``redis_scripts.WRITE`` for its shape; Redis' Lua
reads it with ``cmsgpack``, a fifth faster than ``cjson`` reads the same as JSON, and
``msgpack`` writes it in a third of the time ``json`` takes), the list elements, and
the batch's id.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import chain
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from .._ext import leftovers, speedup
from .._json import dumps_function, quoted_texts
from ..events import ConsentChoice, PageView

__all__ = ["plan"]

_json = dumps_function(separators=(",", ":"))


class _Day:
    """What one day's events add: counts, unique-count members, seen visitors."""

    __slots__ = ("bots", "day", "members", "num", "paths", "refs", "visits")

    def __init__(self, day: str) -> None:
        self.day = day
        self.num = int(day.replace("-", ""))
        self.bots = 0
        self.paths: list[str] = []  # of every human page view, to count
        self.refs: list[str] = []  # "r:HOST", "c:NAME" of every human page view that has one
        self.members: dict[str, set[str]] = {}  # path -> its visitors
        # (visitor, browser, os, device, user) -> [its entries (one per page view), the
        # JSON before and after the page in them]: the tuple repeats within a visitor's
        # day, so what it adds is worked out once.
        self.visits: dict[tuple[str, Any, Any, Any, Any], list[Any]] = {}

    def visit(self, key: tuple[str, Any, Any, Any, Any], lists: dict[str, list[Any]]) -> list[Any]:
        vid, b, o, dv, uid = key
        entries: list[str] = []
        lists.setdefault(vid, []).append(entries)
        self.visits[key] = rec = [
            entries,
            f",{_quote(self.day)},{_null(uid)},",
            f",{_null(b)},{_null(o)},{_null(dv)}]",
        ]
        return rec


def _null(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def plan(
    prefix: str,
    mode: str,
    pageviews: Sequence[PageView],
    consents: Sequence[ConsentChoice],
    expiry: dict[str, int],
) -> tuple[bytes, bytes, str]:
    """``(plan, elements, batch id)`` of a batch for ``WRITE`` (``mode``: ``h`` or ``x``).

    ``elements`` are the new list elements, one a line (JSON escapes every line break),
    in the order of the plan's list keys: sent apart from the plan, they need no second
    escaping. The id hashes both and every event's time, so two batches of the same
    counts (two lone bot hits) are told apart while a retry is recognised.
    """
    from msgpack import packb  # the redis extra's, as redis-py is (RedisStore.client)

    days: dict[str, _Day] = {}
    lists: dict[str, list[list[str]]] = {}  # visitor -> its groups of entries
    d = _Day("0000-00-00")  # (no view's: the first view's day is always a new one)
    current: str | None = None
    # With the C speedups built, their ``plan_run`` adds the common case of the day ``d``
    # (the loop below, page view for page view), and leaves each other view to it.
    c_run = speedup("plan_run")
    views = pageviews if type(pageviews) is list or type(pageviews) is tuple else list(pageviews)
    quoted = quoted_texts()
    run = c_run and (
        lambda i: i if current is None else c_run(views, i, d, lists, PageView, _quote, quoted)
    )
    for ts, day, vid, uid, path, ref, camp, b, o, dv, bot in leftovers(views, run):
        if day != current:
            current = day
            d = days.get(day) or days.setdefault(day, _Day(day))
            count, refs, visits, members = d.paths.append, d.refs.append, d.visits, d.members
        if bot:
            d.bots += 1
            continue
        count(path)
        if ref is None and camp is None:
            around = ",null,null"
        else:
            around = f",{_null(ref)},{_null(camp)}"
            if ref is not None:
                refs("r:" + ref)
            if camp is not None:
                refs("c:" + camp)
        if vid is None:
            continue
        key = (vid, b, o, dv, uid)
        rec = visits.get(key)
        if rec is None:
            rec = d.visit(key, lists)
        # Whole seconds: what visitor_data shows (cheaper to format than a float).
        rec[0].append(f'["p",{int(ts)}{rec[1]}{_quote(path)}{around}{rec[2]}')
        seen = members.get(path)
        if seen is None:
            members[path] = {vid}
        else:
            seen.add(vid)
    consented: dict[str, list[int]] = {}  # day -> [accepted, rejected]
    firsts: dict[str, int] = {}
    for c in consents:
        if c.day not in days:
            days[c.day] = _Day(c.day)
        consented.setdefault(c.day, [0, 0])[0 if c.analytics else 1] += 1
        if c.visitor_id is not None:
            lists.setdefault(c.visitor_id, []).append([_json(["c", c.ts, c.day, *c[3:]])])
            num = days[c.day].num
            if firsts.get(c.visitor_id, num) >= num:
                firsts[c.visitor_id] = num
    # Each visitor of the batch by its place in ``lists`` (from 1, as Lua counts): the
    # sets name their visitors by it, and the script looks each one up (a visitor is in
    # a few sets: the day's, its pages', its classes'). Written out, the ids were most of
    # the plan, and decoding the plan a fifth of the script's time.
    place = {vid: i for i, vid in enumerate(lists, 1)}.__getitem__
    U = prefix + ":" + mode
    hashes: list[list[Any]] = []
    sets: list[list[Any]] = []
    users: dict[str, set[str]] = {}
    for day, d in days.items():
        at = expiry.get(day, 0)
        num = d.num
        bods: dict[tuple[Any, Any, Any], list[Any]] = {}  # (browser, os, device) -> [n, vids]
        day_users: set[str] = set()
        identified = 0
        for (vid, b, o, dv, uid), rec in d.visits.items():
            n = len(rec[0])
            identified += n
            bod = bods.get((b, o, dv))
            if bod is None:
                bods[b, o, dv] = [n, {vid}]
            else:
                bod[0] += n
                bod[1].add(vid)
            if uid is not None:
                day_users.add(uid)
                users.setdefault(uid, set()).add(vid)
            if firsts.get(vid, num) >= num:
                firsts[vid] = num
        counts: dict[str, int] = {}
        named: dict[str, set[str]] = {}  # "B:NAME" (O, D) -> visitors
        for (b, o, dv), (n, vids) in bods.items():
            for name in (b and "B:" + b, o and "O:" + o, dv and "D:" + dv):
                if name:
                    counts[name] = counts.get(name, 0) + n
                    named.setdefault(name, set()).update(vids)
        accepted, rejected = consented.get(day, (0, 0))
        totals = {
            "t": len(d.paths),
            "a": len(d.paths) - identified,
            "b": d.bots,
            "ca": accepted,
            "cr": rejected,
        }
        counts.update((f, n) for f, n in totals.items() if n)
        counts.update(("p:" + p, n) for p, n in Counter(d.paths).items())
        counts.update(Counter(d.refs))
        # Numbers as strings: Lua would format each with snprintf to pass it on.
        hashes.append([f"{prefix}:d:{day}", at, list(counts), list(map(str, counts.values()))])
        if d.visits:
            sets.append([f"{U}:v:{day}", at, *map(place, {key[0] for key in d.visits})])
        if day_users:  # users, by their ids
            sets.append([f"{U}:u:{day}", at, *day_users])
        for name, vids in named.items():
            sets.append([f"{U}:{name[0]}:{day}:{name[2:]}", at, *map(place, vids)])
        sets.extend(
            [f"{U}:p:{day}:{path}", at, *map(place, vids)] for path, vids in d.members.items()
        )
    nums = {d.num: str(d.num) for d in days.values()}
    # Only lists, str and ints below 2**63 (places, times, counts): Redis' cmsgpack reads
    # no bytes, turns None into a hole in a list and a larger int into a negative one.
    document = packb(
        [
            hashes,
            sets,
            list(lists),
            [[f"{prefix}:usr:{uid}", *map(place, vids)] for uid, vids in users.items()],
            list(chain.from_iterable((str(d.num), day) for day, d in days.items())),
            list(chain.from_iterable((nums[num], place(vid)) for vid, num in firsts.items())),
            len(pageviews) + len(consents),
        ]
    )
    lines = "\n".join(
        "[" + ",".join(chain.from_iterable(groups)) + "]" for groups in lists.values()
    ).encode()
    digest = hashlib.sha256(document)
    digest.update(lines)
    digest.update(array("d", [pv.ts for pv in pageviews] + [c.ts for c in consents]).tobytes())
    return document, lines, digest.hexdigest()[:32]
