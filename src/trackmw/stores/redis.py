"""``redis://host:port/db``, ``rediss://…`` and ``redis+cluster://host:port``: Redis.

Layout. Every key starts with one hash tag, ``{trackmw}`` (``?prefix=name`` makes it
``{name}``), so all of a site's keys live in one cluster slot: a batch is one atomic
script on one node and a report can union any of its keys. The price on a cluster is
that one site's data sits on one node; run several sites (prefixes) to spread them.

- ``P:d:DAY`` hash: page views ``t``, anonymous ``a``, bots ``b``, consent ``ca``/``cr``,
  and per name ``p:PATH``, ``r:HOST``, ``c:CAMPAIGN``, ``B:BROWSER``, ``O:OS``, ``D:DEVICE``;
  and a ``note`` (``redis_scripts.DAY_NOTE``) that keeps it a hash table.
- ``P:M:v:DAY``, ``P:M:u:DAY``, ``P:M:p:DAY:PATH``, ``P:M:B:DAY:NAME`` (``O``, ``D``):
  unique visitors (users for ``u``), as HyperLogLog (``M`` = ``h``, ``redis_uniques="hll"``,
  12 KB at most per key, ±0.81 %) or exact sets (``M`` = ``x``, ``"exact"``).
- ``P:e:VISITOR`` list: the visitor's own events as JSON (for ``/me`` and erasure), an
  array of them per batch (earlier versions: one event per element; both are read),
  ``P:usr:USER`` the visitors linked to a user, ``P:first`` (zset) each visitor's oldest
  day and ``P:days`` (zset) the days held, both for ``purge``; ``P:meta`` records the
  unique-count mode of the first writer, which every later reader and writer follows
  (``?uniques=`` in the URL, else ``redis_uniques``, only chooses for a new store).
- ``P:erased`` hash: when each erased visitor and user (``tombstone_key``) was erased,
  and ``latest``, the time of the latest erasure.

Writes. ``redis_plan`` aggregates a batch in Python into one command per key (counter
sums, distinct members, list elements), and one Lua script (one ``EVALSHA``) replays
them: Redis runs it as a unit, like ``MULTI``/``EXEC``, so a batch lost with its
connection is written wholly or not at all. The script ends by setting ``P:batch:ID``
(the batch's content hash, kept a day) and starts by looking for it: a batch retried
after its reply was lost is recognised and not counted twice. On a cluster the same
holds, as every key is in one slot; a failover to a replica that had not yet received
the last writes loses them (Redis replication is asynchronous). Redis does not undo a
script that fails half-way, so the script decodes the whole plan before its first write
(nothing after can fail); under ``maxmemory`` a full Redis refuses that first write, so
nothing of the batch is written and it is retried. The script also makes sure no
visitor or user of the batch was erased after its events. Nearly always the latest
erasure (``P:erased``'s ``latest`` field) is older than the batch's first event, and
that is all it reads. Otherwise it asks for the batch's tombstone keys, looks them up,
and writes nothing if it finds one: the client leaves those events out and sends the
batch again.

``send`` plans a batch while Redis runs the one sent before, and reads that one's reply
only then; ``sync`` reads the last. On a cluster the batch goes to the node the client
believes serves the store's slot. A reply lost with its connection, a script Redis
forgot, or a slot that moved (``MOVED``) gets the batch sent again the usual way (its
marker keeps it once).

Retention. With ``retention_days`` set, day keys expire ``retention_days + 1`` days
after their day, and a visitor's list and user links that long after their last event;
``purge`` trims exactly. Erasure removes a visitor's events, counters and (exact mode) set members;
a HyperLogLog cannot un-count one member, so in ``hll`` mode an erased visitor still
weighs in the unique estimates of its days until those keys expire or are purged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, date, datetime
from itertools import chain
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError, StoreError
from ..events import ConsentChoice, PageView
from ..report import TOP_N, Report, day_range, ranked
from .base import (
    Store,
    drivers,
    earliest,
    erasure_checks,
    purge_horizon,
    redact,
    tombstone_keys,
    without_erased,
)
from .memory import visitor_document
from .redis_plan import plan
from .redis_scripts import DROP_TOMBSTONES, ERASE, PURGE, TOMBSTONE, WRITE

__all__ = ["RedisStore"]

log = logging.getLogger("trackmw")

#: Sends of one batch that may each find visitors erased meanwhile (or, first, ask for
#: the batch's tombstone keys) before one is written.
_ERASED_RETRIES = 8
_UNREAD = object()  # a batch's reply not read yet
#: ``WRITE``'s answer for a batch to send again with its tombstone keys (``_Batch.check``),
#: which follow the days key and ARGV[1..7] in its arguments.
_CHECK, _KEYS_AT = -2, 8

_PARAMS = ("prefix", "uniques")
_orphans: list[Any] = []  # clients inherited over fork: never used, never closed, never freed


class RedisStore(Store):
    """Counters, HyperLogLogs (or sets) and per-visitor lists in Redis or Redis Cluster."""

    schemes = ("redis", "rediss", "redis+cluster")
    drops_erased = True
    socket_timeout = 5.0

    def __init__(self, url: str, settings: Any = None) -> None:
        super().__init__(url, settings)
        self._driver_url, params, self.cluster = self._parse(url)
        self.prefix = "{" + params.get("prefix", "trackmw") + "}"
        self._uniques = params.get("uniques") or (settings.redis_uniques if settings else None)
        self._mode: str | None = None
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.RLock()  # one batch in flight, one writer at a time
        self._flight: _Batch | None = None  # sent, its reply not read yet (``send``)
        self._loaded = False  # has the WRITE script run on the current client?

    @staticmethod
    def _parse(url: str) -> tuple[str, dict[str, str], bool]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in _PARAMS}
        rest = urlencode([(k, v) for k, v in query if k not in _PARAMS])
        cluster = scheme == "redis+cluster"
        driver = urlunsplit(parts._replace(scheme="redis" if cluster else scheme, query=rest))
        if not parts.hostname and not parts.path.startswith("/") and "unix" not in scheme:
            raise ConfigurationError("store", f"{redact(url)!r}: use redis://host:port/db")
        if ours.get("uniques") not in (None, "hll", "exact"):
            raise ConfigurationError("store", "uniques= must be 'hll' or 'exact'")
        if not ours.get("prefix", "x") or any(c in ours.get("prefix", "") for c in "{}"):
            raise ConfigurationError("store", "prefix= must be a non-empty name without braces")
        return driver, ours, cluster

    @classmethod
    def check_url(cls, url: str) -> None:
        cls._parse(url)
        _drivers()  # now, while imports still work (see ``base.drivers``)

    # -- connections -------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The redis-py client (``Redis`` or ``RedisCluster``), connected on first use."""
        if self._pid != os.getpid():
            self.after_fork()
        if self._client is None:
            redis, RedisCluster = _drivers()
            opts = {
                "decode_responses": True,
                "socket_timeout": self.socket_timeout,
                "socket_connect_timeout": self.socket_timeout,
            }
            wrapped: tuple[type[Exception], ...] = (*_errors(), ValueError)
            try:
                cls = RedisCluster if self.cluster else redis.Redis
                client = cls.from_url(self._driver_url, **opts)
            except wrapped as exc:
                raise StoreError(f"cannot connect to {redact(self.url)}: {exc}") from exc
            self._scripts = {
                name: client.register_script(src)
                for name, src in (
                    ("write", WRITE),
                    ("erase", ERASE),
                    ("purge", PURGE),
                    ("tombstone", TOMBSTONE),
                    ("drop_tombstones", DROP_TOMBSTONES),
                )
            }
            self._client = client
        return self._client

    @property
    def mode(self) -> str:
        """``"h"`` (HyperLogLog) or ``"x"`` (exact sets): the unique-count keys in use.

        The mode the store's first writer recorded wins over the setting: a reader or
        writer configured otherwise would find no counts (it logs a warning once). To
        change modes, start afresh under another ``?prefix=``.
        """
        if self._mode is None:
            stored = self._call(lambda c: c.hget(self.prefix + ":meta", "uniques"))
            wanted = {"hll": "h", "exact": "x"}.get(self._uniques or "")
            if stored and wanted and stored != wanted:
                log.warning(
                    "trackmw: %r holds %s unique counts; redis_uniques=%r is ignored "
                    "(use another ?prefix= to start afresh in that mode)",
                    self,
                    "exact" if stored == "x" else "HyperLogLog",
                    self._uniques,
                )
            self._mode = stored or wanted or "h"
        return self._mode

    def _call(self, fn: Any) -> Any:
        try:
            return fn(self.client)
        except _errors() as exc:
            raise StoreError(f"redis {redact(self.url)}: {type(exc).__name__}: {exc}") from exc

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._call(lambda c: self._scripts[name](keys=keys, args=args, client=c))

    def close(self) -> None:
        with self._lock:
            self._sync_at_close()
        client, self._client = self._client, None
        self._loaded = False
        if client is not None:
            try:
                client.close()
            except Exception:  # closing is best effort
                pass

    def after_fork(self) -> None:
        # Keep the parent's client referenced so that nothing closes its sockets here.
        if self._client is not None:
            _orphans.append(self._client)
        self._client = None
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._flight = None  # the parent's to write
        self._loaded = False

    # -- writing -----------------------------------------------------------------------

    def write(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        """Write one batch, atomically and once (``send``, then ``sync``); or raise
        ``StoreError`` and keep nothing (the caller sends it again: its marker keeps it once)."""
        with self._lock:
            self.send(pageviews, consents)
            try:
                self._settle()
            except StoreError:
                self._flight = None  # the caller's again
                raise

    def send(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> None:
        """Send one batch to Redis, without waiting for its script to finish.

        The batch is planned (in Python) while Redis still runs the batch sent before,
        whose reply is read next: then this one's script call is sent and ``send``
        returns. A writer with many batches so keeps the client and the server busy at
        once; one at a time, each would wait for the other. Each batch is still written
        by one script, atomically, once (its marker), and leaves out the events of
        visitors erased after them (``drops_erased``: the script checks the tombstones,
        so no question to Redis waits for the batch in flight).
        """
        if not pageviews and not consents:
            return
        with self._lock:
            batch = self._batch(pageviews, consents)
            self._settle()  # the batch before: if it failed, this one is not taken
            client = self.client
            self._flight = batch
            # Until a write succeeded, Redis may not know the script (``EVALSHA`` would
            # fail): _settle then sends it the usual way, loading the script if need be.
            if not self._loaded:
                return
            try:
                pool = self._pool(client, batch.args[0])
                conn = pool.get_connection()  # connects if none is free
            except Exception as exc:  # _settle sends it, or says why it cannot
                _unexpected(exc)
                return
            try:
                conn.send_command("EVALSHA", self._scripts["write"].sha, 1, *batch.args)
            except Exception as exc:  # sent or not: _settle sends it again (its marker: once)
                _unexpected(exc)
                conn.disconnect()
                pool.release(conn)
            else:
                batch.conn, batch.pool = conn, pool

    def _pool(self, client: Any, key: str) -> Any:
        """The connection pool of the server holding ``key``. On a cluster, the node its
        client believes serves the key's slot, which holds every key of the store (one
        hash tag). If the slot has moved since, the node answers ``MOVED``: the batch
        is then sent again the usual way, which follows the cluster."""
        if self.cluster:
            node = client.get_node_from_key(key)
            return client.get_redis_connection(node).connection_pool  # made if new
        return client.connection_pool

    def sync(self) -> None:
        """Wait for the batch ``send`` sent last (``Store.sync``)."""
        with self._lock:
            self._settle()

    def held(self) -> int:
        batch = self._flight
        return len(batch.pageviews) + len(batch.consents) if batch is not None else 0

    def _batch(self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice]) -> _Batch:
        mode = self.mode
        retention = getattr(self.settings, "retention_days", None)
        expiry: dict[str, int] = {}
        if retention:
            for day in {pv.day for pv in pageviews} | {c.day for c in consents}:
                midnight = datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()
                expiry[day] = int(midnight) + (retention + 1) * 86400
        document, entries, batch_id = plan(self.prefix, mode, pageviews, consents, expiry)
        vttl = (retention + 1) * 86400 if retention else 0
        first = earliest(pageviews, consents)  # infinite: no visitor, nothing to check
        args = [self.prefix + ":days", document, batch_id, self.prefix, mode, vttl, entries,
                repr(first) if first != math.inf else ""]
        return _Batch(pageviews, consents, args)

    def _settle(self) -> None:
        """Finish the batch in flight: read its reply, or send it again until Redis
        answers; leave out erased visitors' events and send again if the script found
        some. Raises ``StoreError`` (the batch kept for the next try) if Redis fails."""
        if self._pid != os.getpid():  # first: a forked child forgets the parent's batch
            self.after_fork()
        batch = self._flight
        if batch is None:
            return
        reply: Any = _UNREAD
        conn, batch.conn = batch.conn, None
        if conn is not None:
            try:
                reply = conn.read_response()  # an error reply is raised (and sent again)
            except _errors():
                conn.disconnect()
                # Perhaps NOSCRIPT (Redis restarted or flushed it, or a cluster's slot
                # moved to a node that never ran it) or MOVED.
                self._loaded = False
            except BaseException:  # interrupted: its reply must not reach the next user
                conn.disconnect()
                raise
            finally:
                batch.pool.release(conn)
        for _ in range(_ERASED_RETRIES):
            if reply is _UNREAD:
                reply = self._script("write", batch.args[:1], batch.args[1:])
            if reply == _CHECK:  # someone erased since its first event: send its keys too
                if len(batch.args) > _KEYS_AT:  # they were sent: never answered so
                    raise StoreError(f"redis {redact(self.url)}: unexpected answer -2")
                batch.check()
                reply = _UNREAD
                continue
            if not isinstance(reply, list):  # written (or, for a retry, written before)
                self._flight = None
                self._loaded = True
                return
            # Tombstones newer than some events: without those, plan and send again.
            erased = {k: float(at) for k, at in zip(reply[::2], reply[1::2], strict=True)}
            pageviews, consents = without_erased(batch.pageviews, batch.consents, erased)
            if not pageviews and not consents:
                self._flight = None
                return
            batch = self._flight = self._batch(pageviews, consents)
            batch.check()
            reply = _UNREAD
        raise StoreError(f"redis {redact(self.url)}: visitors kept being erased during a write")

    # -- reading -----------------------------------------------------------------------

    def _union_sizes(self, groups: list[list[str]]) -> list[int]:
        """The size of the union of each group of unique-count keys.

        HyperLogLogs merge in ``PFCOUNT``; exact sets are unioned into a scratch key by
        ``SUNIONSTORE``, which answers the union's size. One pipelined round trip on a
        single Redis; one call per group on a cluster, where redis-py refuses multi-key
        commands in pipelines (each call still works: every key is in the same slot).
        """
        scratch = f"{self.prefix}:scratch:{uuid.uuid4().hex}"
        hll = self.mode == "h"
        asked = [g for g in groups if g]

        def fetch(c: Any) -> list[Any]:
            target = c if self.cluster else c.pipeline(transaction=False)
            answers = [
                target.pfcount(*keys) if hll else target.sunionstore(scratch, keys)
                for keys in asked
            ]
            if not hll:
                target.delete(scratch)
            return answers if self.cluster else list(target.execute())[: len(asked)]

        answers = iter(self._call(fetch) if asked else [])
        return [int(next(answers)) if g else 0 for g in groups]

    def report(self, since: date, until: date) -> Report:
        P, M = self.prefix, self.prefix + ":" + self.mode
        days = [d.isoformat() for d in day_range(since, until)]

        def fetch(c: Any) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for d in days:
                pipe.hgetall(f"{P}:d:{d}")
            return list(pipe.execute())

        hashes: list[dict[str, str]] = self._call(fetch)
        report = Report(since=since, until=until)
        totals: dict[str, int] = {}
        named: dict[str, dict[str, int]] = {}
        seen: dict[str, list[str]] = {}  # "kind:name" -> days it appears on
        for d, h in zip(days, hashes, strict=True):
            for field, raw in h.items():
                if field == "note":  # see DAY_NOTE
                    continue
                n = int(raw)
                kind, sep, name = field.partition(":")
                if not sep:
                    totals[field] = totals.get(field, 0) + n
                    continue
                bucket = named.setdefault(kind, {})
                bucket[name] = bucket.get(name, 0) + n
                seen.setdefault(field, []).append(d)
        report.pageviews = totals.get("t", 0)
        report.anonymous_pageviews = totals.get("a", 0)
        report.bot_hits = totals.get("b", 0)
        report.consent = {"accepted": totals.get("ca", 0), "rejected": totals.get("cr", 0)}
        pages = sorted(named.get("p", {}).items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
        classes = [(kind, name) for kind in "BOD" for name in named.get(kind, {})]
        counts = iter(
            self._union_sizes(
                [[f"{M}:v:{d}" for d in days], [f"{M}:u:{d}" for d in days]]
                + [[f"{M}:v:{d}"] if h.get("t") else [] for d, h in zip(days, hashes, strict=True)]
                + [[f"{M}:p:{d}:{path}" for d in seen["p:" + path]] for path, _ in pages]
                + [[f"{M}:{k}:{d}:{name}" for d in seen[f"{k}:{name}"]] for k, name in classes]
            )
        )
        report.visitors, report.registered_visitors = next(counts), next(counts)
        report.days = [
            {"day": d, "pageviews": int(h.get("t", 0)), "visitors": next(counts)}
            for d, h in zip(days, hashes, strict=True)
        ]
        report.pages = [
            {"path": path, "pageviews": n, "visitors": next(counts)} for path, n in pages
        ]
        by_kind: dict[str, dict[str, int]] = {"B": {}, "O": {}, "D": {}}
        for kind, name in classes:
            by_kind[kind][name] = next(counts)
        for attr, kind in (("browsers", "B"), ("os", "O"), ("devices", "D")):
            visible = {k: v for k, v in by_kind[kind].items() if v}
            setattr(report, attr, ranked(visible, "visitors"))
        report.referrers = ranked(named.get("r", {}), "pageviews")
        report.campaigns = ranked(named.get("c", {}), "pageviews")
        return report

    # -- visitors' rights and retention ---------------------------------------------------

    def visitor_data(self, visitor_id: str) -> dict[str, Any]:
        raw = self._call(lambda c: c.lrange(f"{self.prefix}:e:{visitor_id}", 0, -1))
        pageviews: list[PageView] = []
        consents: list[ConsentChoice] = []
        for doc in map(json.loads, raw):
            # One event per element, or (as WRITE stores them) an array of events.
            for entry in doc if isinstance(doc[0], list) else [doc]:
                if entry[0] == "p":
                    ts, day, uid, path, ref, camp, browser, os_, device = entry[1:]
                    pageviews.append(
                        PageView(
                            ts, day, visitor_id, uid, path, ref, camp, browser, os_, device, False
                        )
                    )
                else:
                    consents.append(ConsentChoice(entry[1], entry[2], visitor_id, *entry[3:]))
        return visitor_document(pageviews, consents)

    def erase(self, visitor_id: str, user_id: str | None = None) -> int:
        # The tombstone first: from here on no earlier event of this visitor is written.
        keys = tombstone_keys(visitor_id, user_id)
        self._script("tombstone", [f"{self.prefix}:erased"], [repr(time.time()), *keys])
        args = [self.prefix, self.mode, visitor_id, user_id or ""]
        return int(self._script("erase", [f"{self.prefix}:e:{visitor_id}"], args))

    def erasures(self, keys: Collection[str]) -> dict[str, float]:
        wanted = list(keys)
        if not wanted:
            return {}
        values = self._call(lambda c: c.hmget(f"{self.prefix}:erased", wanted))
        return {k: float(v) for k, v in zip(wanted, values, strict=True) if v is not None}

    def purge(self, before: date) -> int:
        horizon = purge_horizon(before)

        # "latest" stays: without it, every batch would be checked (as for tombstones of
        # earlier versions).
        self._script("drop_tombstones", [f"{self.prefix}:erased"], [repr(horizon)])
        cut = int(before.strftime("%Y%m%d"))
        removed = 0
        while True:  # in slices, so that Redis is never blocked for long
            n, more = self._script("purge", [self.prefix + ":days"], [self.prefix, cut, 200])
            removed += int(n)
            if not int(more):
                return removed


def _unexpected(exc: Exception) -> None:
    """An error sending a batch on our own connection: expected ones (Redis gone) are
    said again by ``_settle``, which sends the batch the usual way; others are logged."""
    if not isinstance(exc, _errors()):
        log.error("trackmw: redis: could not send a batch ahead (%r); sending it plainly", exc)


class _Batch:
    """A planned batch: its events, its ``WRITE`` call's keys and arguments, and the
    connection its reply is to be read from once sent (``RedisStore.send``)."""

    __slots__ = ("args", "conn", "consents", "pageviews", "pool")

    def __init__(
        self, pageviews: Sequence[PageView], consents: Sequence[ConsentChoice], args: list[Any]
    ) -> None:
        self.pageviews = pageviews
        self.consents = consents
        self.args = args
        self.conn: Any = None
        self.pool: Any = None  # the pool ``conn`` came from

    def check(self) -> None:
        """Add the tombstone key of each visitor and user, and the time of its first event
        here, to the arguments (``WRITE`` looks them up)."""
        checks = erasure_checks(self.pageviews, self.consents)
        del self.args[_KEYS_AT:]
        self.args.extend(chain.from_iterable((key, repr(ts)) for key, ts in checks.items()))


def _drivers() -> tuple[Any, Any]:
    """``(redis, RedisCluster)``, with msgpack (``redis_plan`` writes a batch's plan with
    it) imported too (``base.drivers``)."""
    redis, cluster, _ = drivers("redis", "redis", "redis.cluster", "msgpack")
    return redis, cluster.RedisCluster


def _errors() -> tuple[type[Exception], ...]:
    """redis-py's exceptions (cluster ones are not ``RedisError``), to wrap in ``StoreError``."""
    from redis.exceptions import RedisClusterException, RedisError

    return (RedisError, RedisClusterException, OSError)
