"""The store contract, and the registry that picks a store by URL.

A store keeps normalized page views and consent choices and answers reports. The
pipeline calls ``send`` from its one background thread, with a whole batch that must be
written atomically (all or nothing): if ``send`` raises ``StoreError``, the pipeline
keeps the batch and sends it again later, so a store must not have written part of it.
When the pipeline has sent what it had, it calls ``sync``. A store's ``send`` is its
``write`` unless it can do better: the Redis store returns as soon as the batch is on
its way, and reads the reply while the next batch is planned (see ``Store.send``).
Reading methods may be called from any thread.

Each store class names its URL ``schemes``; ``store_class(url)`` finds it, and an
unknown scheme is a ``ConfigurationError``. Drivers for server stores are imported
when the URL is checked (``check_url``, as a tracker is made), not before: a missing one
is a ``ConfigurationError`` naming the extra to install.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, date
from itertools import compress, repeat
from operator import is_, itemgetter
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from .._ext import leftovers, speedup
from ..errors import ConfigurationError, StoreError
from ..events import ConsentChoice, PageView
from ..report import Report

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Held", "Store", "register", "store_class"]

log = logging.getLogger("trackmw")

_REGISTRY: dict[str, str] = {
    # scheme -> "module:Class", imported only when used
    "memory": "trackmw.stores.memory:MemoryStore",
    "sqlite": "trackmw.stores.sqlite:SQLiteStore",
    "redis": "trackmw.stores.redis:RedisStore",
    "rediss": "trackmw.stores.redis:RedisStore",
    "redis+cluster": "trackmw.stores.redis:RedisStore",
    "postgresql": "trackmw.stores.postgres:PostgresStore",
    "postgres": "trackmw.stores.postgres:PostgresStore",
}


def register(scheme: str, target: str) -> None:
    """Make ``scheme://`` URLs open the store class at ``"module:Class"``."""
    _REGISTRY[scheme] = target


def registered(scheme: str) -> str | None:
    """The ``"module:Class"`` that ``scheme://`` URLs open (``None``: no such scheme)."""
    return _REGISTRY.get(scheme)


def store_class(url: str) -> type[Store]:
    """The store class for ``url``; ``ConfigurationError`` for an unknown scheme."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            "store", f"{url!r} is not a store URL such as 'sqlite:///trackmw.db'"
        )
    scheme = url.split("://", 1)[0].lower()
    target = _REGISTRY.get(scheme)
    if target is None:
        known = ", ".join(sorted(f"{s}://" for s in _REGISTRY))
        raise ConfigurationError("store", f"unknown scheme {scheme!r}; use one of {known}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError("store", f"cannot load the {scheme} store: {exc}") from exc
    cls: type[Store] = getattr(module, cls_name)
    cls.check_url(url)
    return cls


class Store(ABC):
    """Where page views and consent choices are kept.

    Subclasses set ``schemes`` and implement the abstract methods; the conformance
    suite in ``tests/stores`` states the expected behaviour of each.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    #: Does ``write`` itself leave out the events of erased visitors (``without_erased``),
    #: atomically? Otherwise ``send`` asks ``erasures`` first.
    drops_erased: ClassVar[bool] = False

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        self.url = url
        self.settings = settings

    @classmethod
    def in_process(cls, url: str) -> bool:
        """Does the store at ``url`` keep its data in this process's memory, where a
        writer in another process (``writer="process"``) could not write it?"""
        return False

    @classmethod
    def check_url(cls, url: str) -> None:
        """Raise ``ConfigurationError`` if ``url`` cannot name a store of this class."""
        return None

    @abstractmethod
    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        """Write one batch atomically, or raise ``StoreError`` having written nothing.

        A store that ``drops_erased`` leaves out the events of visitors (and users)
        erased after them here, in the same transaction.
        """

    def send(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        """Write one batch as ``write`` does, less the events of visitors (or users)
        erased after them, possibly finishing after the call returns.

        The pipeline writes through ``send``. The erased visitors' events are those
        another process still held when the erasure came (this one removes them from
        its own buffer): ``erasures`` is asked first, unless ``write`` itself leaves
        them out (``drops_erased``).

        Once ``send`` returns, the store owns the batch: it writes it, exactly once, before
        the next batch, and keeps it until it is written. ``sync`` waits for that. If
        ``send`` raises ``StoreError``, the batch was not taken (an earlier one may be
        what failed: the store still keeps that one). By default, ``write`` at once.
        """
        if not self.drops_erased:
            kept = unerased(pageviews, consents, self.erasures)
            if kept is not None:
                pageviews, consents = kept
        self.write(pageviews, consents)

    def held(self) -> int:
        """How many events ``send`` took that are not yet known to be written."""
        return 0

    def sync(self) -> None:
        """Return once every batch ``send`` took is written; raise ``StoreError`` if one
        could not be (the store keeps it, and tries again on the next ``send`` or
        ``sync``)."""
        return None

    def _sync_at_close(self) -> None:
        """What ``send`` took and no ``sync`` wrote, tried once more as the store closes:
        what still cannot be written is logged, not raised, and the closing goes on."""
        if self.held():
            try:
                self.sync()
            except StoreError as exc:
                log.error("trackmw: %r: %d events sent are not written: %s",
                          self, self.held(), exc)

    @abstractmethod
    def report(self, since: date, until: date) -> Report:
        """Counts for the days ``since``..``until`` (inclusive, local days)."""

    @abstractmethod
    def visitor_data(self, visitor_id: str) -> dict[str, Any]:
        """Everything held about one visitor.

        ``{"pageviews": [{"time": iso, "page": path}, …], "consents": [{…}, …],
        "user_ids": [str, …]}``, oldest first.
        """

    @abstractmethod
    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        """Delete everything held about the visitor (and rows of its linked user).

        Returns the number of records removed.
        """

    def erasures(self, keys: Collection[str]) -> dict[str, float]:
        """When each of ``keys`` was erased (Unix time), for those that were.

        ``erase`` leaves a tombstone for ``tombstone_keys(visitor_id, user_id)``; ``send``
        asks before each batch (unless the store ``drops_erased`` itself) and drops the
        events of an erased visitor or user dated before its erasure. So a page view
        still buffered in another process when the visitor was erased cannot bring it
        back.
        """
        return {}

    @abstractmethod
    def purge(self, before: date) -> int:
        """Delete page views and consent records of days before ``before``."""

    def close(self) -> None:
        """Release connections. The store may be used again after (it reconnects)."""
        return None

    def after_fork(self) -> None:
        """Forget connections inherited from a parent process (never use them)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.url)}>"


def drivers(extra: str, *modules: str) -> list[ModuleType]:
    """A server store's driver ``modules``, imported; ``ConfigurationError`` naming the
    ``trackmw[extra]`` to install if one is missing.

    Stores call it from ``check_url`` (which runs as a tracker is made), not only on
    first use: a store first opened at process exit (the pipeline's atexit flush of a
    process that never wrote before) could no longer import a driver that imports
    ``concurrent.futures``, which refuses once the interpreter is shutting down.
    """
    try:
        return [importlib.import_module(name) for name in modules]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            "store", f"{exc}: install the store's drivers: pip install 'trackmw[{extra}]'"
        ) from exc


class Held:
    """The batches a store's ``send`` took to write together in one transaction, in the
    order they came (SQLite's and PostgreSQL's ``group_events``)."""

    __slots__ = ("consents", "pageviews")

    def __init__(self) -> None:
        self.pageviews: list[PageView] = []
        self.consents: list[ConsentChoice] = []

    def __len__(self) -> int:
        return len(self.pageviews) + len(self.consents)

    def overflows(
        self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice], limit: int
    ) -> bool:
        """Would this batch take what is held past ``limit`` events? Never when nothing
        is: a batch larger than ``limit`` is written alone."""
        held = len(self)
        return held > 0 and held + len(pageviews) + len(consents) > limit

    def add(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        self.pageviews.extend(pageviews)
        self.consents.extend(consents)


def daily_count_keys(pv: PageView) -> list[tuple[str, str, str]]:
    """The ``(day, kind, name)`` page-view counters one page view adds one to.

    The SQL stores keep them in their ``daily_counts`` rollup: ``total``, ``page``,
    ``anonymous``, ``referrer``, ``campaign``, and ``bot`` for a bot (only that one).
    """
    return _count_keys(pv.day, pv.bot, pv.path, pv.visitor_id is None, pv.referrer, pv.campaign)


def daily_counts(pageviews: Iterable[PageView]) -> Counter[tuple[str, str, str]]:
    """What ``daily_count_keys`` adds up to over many page views, counted in bulk.

    With the C speedups built, their ``tally_run`` counts the common case per day, in
    dicts keyed by the page, referrer and campaign texts themselves (whose hashes the
    texts keep), and each day's counts become the counters once; it leaves any other
    view to ``_counted_in_python``, whose counts are added. (The tuples that
    ``Counter`` makes, hashes and compares there were the writer's largest cost on a
    page view once its JSON was cheap.)
    """
    c_run = speedup("tally_run")
    if c_run is None:
        return _counted_in_python(pageviews)
    views = pageviews if type(pageviews) is list or type(pageviews) is tuple else list(pageviews)
    tallies: dict[str, list[Any]] = {}
    rest = list(leftovers(views, lambda i: c_run(views, i, tallies, PageView)))
    counts = _counted_in_python(rest) if rest else Counter()
    for day, (bots, total, anonymous, pages, referrers, campaigns) in tallies.items():
        for kind, n in (("bot", bots), ("total", total), ("anonymous", anonymous)):
            if n:
                counts[(day, kind, "")] += n
        for kind, named in (("page", pages), ("referrer", referrers), ("campaign", campaigns)):
            for name, n in named.items():
                counts[(day, kind, name)] += n
    return counts


def _counted_in_python(pageviews: Iterable[PageView]) -> Counter[tuple[str, str, str]]:
    """``daily_counts`` without the C speedups, and for the page views their loop
    leaves.

    Page views that differ only in visitor, user, time or browser add to the same
    counters, so they are first counted by what matters, in C (``Counter`` over
    ``itemgetter``), then expanded once per distinct kind (``_count_keys``): a batch of
    1,000 page views has a few hundred. Whether a view is anonymous is not a field, so
    anonymous views are counted apart, also in C, and added to their day's
    ``anonymous`` counter.
    """
    views = pageviews if isinstance(pageviews, Sequence) else list(pageviews)
    counts: dict[tuple[str, str, str], int] = {}  # a Counter's += calls __missing__
    get = counts.get
    for (day, bot, path, referrer, campaign), n in Counter(map(_COUNTED, views)).items():
        for key in _count_keys(day, bot, path, False, referrer, campaign):
            counts[key] = get(key, 0) + n
    anonymous = compress(views, map(is_, map(_VISITOR, views), repeat(None)))
    for (day, bot), n in Counter(map(_DAY_BOT, anonymous)).items():
        if not bot:
            key = (day, "anonymous", "")
            counts[key] = get(key, 0) + n
    return Counter(counts)


#: The fields of a ``PageView`` that ``daily_counts`` reads: day, bot, path, referrer,
#: campaign; its visitor; its day and bot.
_COUNTED = itemgetter(1, 10, 4, 5, 6)
_VISITOR = itemgetter(2)
_DAY_BOT = itemgetter(1, 10)


def _count_keys(
    day: str, bot: bool, path: str, anonymous: bool, referrer: str | None, campaign: str | None
) -> list[tuple[str, str, str]]:
    if bot:
        return [(day, "bot", "")]
    keys = [(day, "total", ""), (day, "page", path)]
    if anonymous:
        keys.append((day, "anonymous", ""))
    if referrer:
        keys.append((day, "referrer", referrer))
    if campaign:
        keys.append((day, "campaign", campaign))
    return keys


def tombstone_key(kind: str, value: str) -> str:
    """The tombstone key of an erased visitor (``kind="v"``) or user (``"u"``).

    A hash, so the store keeps no erased user id (often an e-mail address) in clear.
    """
    return kind + ":" + hashlib.blake2b(value.encode(), digest_size=16).hexdigest()


def tombstone_keys(visitor_id: str | None, user_id: str | None = None) -> list[str]:
    """The tombstone keys of an erased visitor and its linked user."""
    keys = [] if visitor_id is None else [tombstone_key("v", visitor_id)]
    if user_id:
        keys.append(tombstone_key("u", user_id))
    return keys


def erasure_checks(
    pageviews: Iterable[PageView], consents: Iterable[ConsentChoice]
) -> dict[str, float]:
    """The tombstone key of every visitor and user with events in a batch, and the time
    of its earliest one there: it was erased too late for the batch if its tombstone is
    older (``without_erased``)."""
    firsts: dict[tuple[str, str], float] = {}
    for c in consents:
        if c.visitor_id:
            _earliest(firsts, ("v", c.visitor_id), c.ts)
    for pv in pageviews:
        if pv.visitor_id:
            _earliest(firsts, ("v", pv.visitor_id), pv.ts)
            if pv.user_id:
                _earliest(firsts, ("u", pv.user_id), pv.ts)
    return {tombstone_key(kind, value): ts for (kind, value), ts in firsts.items()}


def earliest(pageviews: Iterable[PageView], consents: Iterable[ConsentChoice]) -> float:
    """The time of a batch's earliest event of a visitor (infinity for none): an erasure
    before it leaves the whole batch alone, so a store that knows its latest erasure can
    skip ``erasure_checks`` for nearly every batch (``unerased``). Events without a
    visitor id (anonymous, bots) are never erased, and do not count."""
    return min(
        min((pv.ts for pv in pageviews if pv.visitor_id), default=math.inf),
        min((c.ts for c in consents if c.visitor_id), default=math.inf),
    )


def unerased(
    pageviews: Sequence[PageView],
    consents: Sequence[ConsentChoice],
    erasures: Callable[[Collection[str]], dict[str, float]],
    latest: float | None = math.inf,
) -> tuple[list[PageView], list[ConsentChoice]] | None:
    """The batch less the events of visitors (and users) erased after them
    (``without_erased``), or ``None`` when it loses none, as nearly every batch.

    ``erasures`` looks the batch's tombstones up (``Store.erasures``, or the same query
    inside a store's write). It is asked only when the latest erasure, at ``latest``
    (``None``: there was none; by default not known), is not older than the batch's
    first event of a visitor.
    """
    if latest is None or latest < earliest(pageviews, consents):
        return None
    checks = erasure_checks(pageviews, consents)
    erased = erasures(checks) if checks else None
    return without_erased(pageviews, consents, erased) if erased else None


def _earliest(firsts: dict[tuple[str, str], float], key: tuple[str, str], ts: float) -> None:
    if firsts.get(key, ts) >= ts:
        firsts[key] = ts


def without_erased(
    pageviews: Sequence[PageView],
    consents: Sequence[ConsentChoice],
    erased: dict[str, float],
) -> tuple[list[PageView], list[ConsentChoice]]:
    """The batch less the events dated at or before their visitor's (or user's) erasure.

    ``erased``: tombstone key -> when it was erased (``Store.erasures``). An erased
    visitor's later events are new data, and kept.
    """
    keys: dict[tuple[str, str], str] = {}

    def dead(kind: str, value: str | None, ts: float) -> bool:
        if not value:
            return False
        key = keys.get((kind, value))
        if key is None:
            key = keys[(kind, value)] = tombstone_key(kind, value)
        at = erased.get(key)
        return at is not None and ts <= at

    return (
        [p for p in pageviews if not (dead("v", p.visitor_id, p.ts) or dead("u", p.user_id, p.ts))],
        [c for c in consents if not dead("v", c.visitor_id, c.ts)],
    )


def purge_horizon(before: date) -> float:
    """Tombstones older than this can go with a purge up to ``before`` (a day earlier,
    so that no time zone can hold an event of a purged day that is still buffered)."""
    from datetime import datetime, time, timedelta

    day = before - timedelta(days=1) if before > date.min else before  # no day before
    return datetime.combine(day, time(), UTC).timestamp()


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and reprs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
