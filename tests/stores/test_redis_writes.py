"""What the Redis store's aggregated writes (``redis_plan`` and the ``WRITE`` script) keep."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import pytest

from tests.conftest import wait_for
from trackmw.errors import StoreError
from trackmw.events import ConsentChoice
from trackmw.stores import Store, open_store

from .data import START, consent, named_batch, pageview, ts_of

pytestmark = pytest.mark.services

REDIS = ("redis", "redis-hll", "redis-cluster")


@pytest.mark.parametrize("store_kind", REDIS)
def test_two_batches_of_equal_counts_are_both_written(store: Store) -> None:
    # A lone bot hit per flush: the same counters, told apart by the times of the hits.
    store.write([pageview(START, 1, None, bot=True)], [])
    store.write([pageview(START, 2, None, bot=True)], [])
    store.write([pageview(START, 3, None)], [])
    store.write([pageview(START, 4, None)], [])
    report = store.report(START, START)
    assert (report.bot_hits, report.pageviews, report.anonymous_pageviews) == (2, 2, 2)


@pytest.mark.parametrize("store_kind", REDIS)
def test_entries_with_line_breaks_quotes_and_non_ascii_text_round_trip(
    store: Store, store_kind: str
) -> None:
    # Entries travel to the script one a line: a line break of a page must stay escaped.
    odd = ["/a\nb", '/"quoted"\\', "/über/😀", "/tab\there\r"]
    pvs = [pageview(START, i, "v1", path, user="u\n1") for i, path in enumerate(odd)]
    pvs.append(pageview(START, 9, "v2", "/x\n"))
    choice = ConsentChoice(ts_of(START, 20), START.isoformat(), "v1", True, False, "v\n2")
    store.write(pvs, [choice])
    data = store.visitor_data("v1")
    assert [p["page"] for p in data["pageviews"]] == odd
    assert data["user_ids"] == ["u\n1"]
    assert data["consents"][0]["policy_version"] == "v\n2"
    assert [p["page"] for p in store.visitor_data("v2")["pageviews"]] == ["/x\n"]
    report = store.report(START, START)
    assert sorted(p["path"] for p in report.pages) == sorted([*odd, "/x\n"])
    assert report.visitors == 2
    assert store.erase("v1", "u\n1") == len(odd) + 1
    report = store.report(START, START)
    assert (report.pageviews, [p["path"] for p in report.pages]) == (1, ["/x\n"])
    if not store_kind.endswith("hll"):  # a HyperLogLog cannot forget a member
        assert report.visitors == 1


@pytest.mark.parametrize("store_kind", ["redis", "redis-cluster"])
def test_ids_that_read_as_numbers_stay_ids(store: Store) -> None:
    # The plan names a batch's visitors by their place in its list of them: an id that
    # reads as a number is still the id, in every set, list and index.
    views = [
        pageview(START, 1, "2", "/a", user="1", cls=("Chrome", "Windows", "desktop")),
        pageview(START, 2, "1", "/a", user="2", cls=("Firefox", "Linux", "desktop")),
        pageview(START, 3, "1", "/b"),
        pageview(START + timedelta(days=1), 4, "3", "/a", user="1"),
    ]
    store.write(views, [consent(START, 5, "4", True)])
    report = store.report(START, START + timedelta(days=1))
    assert (report.visitors, report.registered_visitors) == (3, 2)
    assert {p["path"]: p["visitors"] for p in report.pages} == {"/a": 3, "/b": 1}
    assert {b["name"]: b["visitors"] for b in report.browsers} == {"Chrome": 3, "Firefox": 1}
    assert store.visitor_data("2")["user_ids"] == ["1"]
    assert [p["page"] for p in store.visitor_data("1")["pageviews"]] == ["/a", "/b"]
    assert len(store.visitor_data("4")["consents"]) == 1
    client: Any = store.client  # type: ignore[attr-defined]
    prefix = store.prefix  # type: ignore[attr-defined]
    assert sorted(client.smembers(f"{prefix}:usr:1")) == ["2", "3"]
    first = dict(client.zrange(f"{prefix}:first", 0, -1, withscores=True))
    day = int(START.isoformat().replace("-", ""))
    assert first == {"1": day, "2": day, "3": day + 1, "4": day}


@pytest.mark.parametrize("store_kind", ["redis", "redis-cluster"])
def test_a_user_id_that_reads_as_a_number_is_no_place_in_the_plan(store: Store) -> None:
    # A set of visitors names them by place (1 for "a", 2 for "b"); the day's set of
    # users holds their ids, whatever they read as.
    store.write([pageview(START, 1, "a", user="2"), pageview(START, 2, "b")], [])
    client: Any = store.client  # type: ignore[attr-defined]
    prefix = store.prefix  # type: ignore[attr-defined]
    assert client.smembers(f"{prefix}:x:u:{START.isoformat()}") == {"2"}
    assert client.smembers(f"{prefix}:x:v:{START.isoformat()}") == {"a", "b"}


@pytest.mark.parametrize("store_kind", ["redis"])
def test_day_counters_are_kept_in_a_hash_table(store: Store) -> None:
    # As a listpack (Redis' compact form for small hashes) each HINCRBY scans every field.
    store.write([pageview(START, 1, "v1")], [])
    client = store.client  # type: ignore[attr-defined]
    key = f"{store.prefix}:d:{START.isoformat()}"  # type: ignore[attr-defined]
    assert client.object("encoding", key) == "hashtable"
    assert store.report(START, START).pageviews == 1


@pytest.mark.parametrize("store_kind", ["redis"])
def test_lists_of_one_event_per_element_are_still_read_purged_and_erased(
    store: Store,
) -> None:
    later = START + timedelta(days=1)
    pvs = [pageview(START, 1, "v1", "/a"), pageview(later, 2, "v1", "/b")]
    store.write([*pvs, pageview(START, 3, "v2", "/c")], [consent(START, 4, "v1", True)])
    client = store.client  # type: ignore[attr-defined]
    key = f"{store.prefix}:e:v1"  # type: ignore[attr-defined]
    before = store.visitor_data("v1")
    # As earlier versions wrote them: one event per element, not a batch's array.
    singles = [json.dumps(e) for raw in client.lrange(key, 0, -1) for e in json.loads(raw)]
    assert len(singles) == 3
    client.delete(key)
    client.rpush(key, *singles)
    assert store.visitor_data("v1") == before
    assert store.purge(later) == 3  # /a, /c and the consent
    assert [p["page"] for p in store.visitor_data("v1")["pageviews"]] == ["/b"]
    assert store.erase("v1") == 1
    assert store.report(START, later).pageviews == 0


@pytest.mark.parametrize("store_kind", ["redis"])
def test_tombstones_without_a_latest_time_are_still_checked(store: Store) -> None:
    # Versions before the hash's "latest" field wrote tombstones alone: the script must
    # then look the batch's visitors up, as it did.
    from trackmw.stores.base import tombstone_key

    client = store.client  # type: ignore[attr-defined]
    erased = f"{store.prefix}:erased"  # type: ignore[attr-defined]
    client.hset(erased, tombstone_key("v", "gone-visitor"), ts_of(START, 10))
    store.write([pageview(START, 1, "gone-visitor"), pageview(START, 2, "kept-visitor")], [])
    assert store.visitor_data("gone-visitor")["pageviews"] == []
    assert store.report(START, START).pageviews == 1
    store.write([pageview(START, 3, None)], [])  # no visitor: nothing to look up
    assert store.report(START, START).pageviews == 2
    # An erasure never lowers "latest" (hosts' clocks may differ).
    store.erase("someone")
    latest = float(client.hget(erased, "latest"))
    someone = tombstone_key("v", "someone")
    at = client.hget(erased, someone)
    store._script("tombstone", [erased], [repr(latest - 100), someone])  # type: ignore[attr-defined]
    assert float(client.hget(erased, "latest")) == latest
    assert client.hget(erased, someone) == at  # nor any visitor's time


@pytest.mark.parametrize("store_kind", ["redis"])
def test_a_purge_drops_old_tombstones_but_keeps_the_latest_erasure_time(store: Store) -> None:
    store.erase("gone-visitor")
    client = store.client  # type: ignore[attr-defined]
    erased = f"{store.prefix}:erased"  # type: ignore[attr-defined]
    latest = client.hget(erased, "latest")
    store.purge(date.today() + timedelta(days=10))  # every tombstone is older
    # Without "latest", tombstones written later would look like an earlier version's.
    assert client.hgetall(erased) == {"latest": latest}


@pytest.mark.parametrize("store_kind", ["redis"])
def test_a_second_request_for_tombstone_keys_is_an_error_not_a_loop(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The script asks (-2) only for a batch sent without its keys: asked again once they
    # were sent, the client stops at once instead of sending the same batch eight times.
    store.write([pageview(START, 0, "v0")], [])
    sent: list[int] = []

    def always_ask(name: str, keys: list[str], args: list[object]) -> int:
        sent.append(len(args))
        return -2

    monkeypatch.setattr(store, "_script", always_ask)
    monkeypatch.setattr(store, "_loaded", False)  # sent through _script, not pipelined
    with pytest.raises(StoreError, match="-2"):
        store.write([pageview(START, 1, "v1")], [])
    assert len(sent) == 2 and sent[1] > sent[0]  # without the keys, then with them


@pytest.mark.parametrize("store_kind", ["redis", "redis-cluster"])
def test_a_sent_batch_runs_before_its_reply_is_read(store: Store) -> None:
    # ``send`` returns with the script sent (the writer plans the next batch meanwhile),
    # on a cluster too: the batch is written before ``sync`` reads its reply.
    store.write(named_batch("warm", 1), [])  # the script loaded: sends no longer wait
    store.send(named_batch("ahead", 300), [])
    assert store.held() == 300
    reader = open_store(store.url)
    try:
        wait_for(lambda: reader.report(START, START).pageviews == 301, "the script to run")
    finally:
        reader.close()
    store.sync()
    assert store.held() == 0
    assert store.report(START, START).pageviews == 301


@pytest.mark.parametrize("store_kind", ["redis-cluster"])
def test_a_batch_sent_to_a_node_that_lost_the_slot_follows_it_once(store: Store) -> None:
    # The store's slot moves to another node between two batches. The next batch goes
    # to the old node, which answers MOVED; it is sent again the usual way, which
    # follows the slot (and loads the script there), and written once.
    import redis

    store.write(named_batch("one", 50), [])
    client: Any = store.client  # type: ignore[attr-defined]
    key = store.prefix + ":days"  # type: ignore[attr-defined]
    slot = client.keyslot(key)
    source = client.get_node_from_key(key)
    target = next(n for n in client.get_primaries() if n.name != source.name)
    nodes = {n.name: redis.Redis(host=n.host, port=n.port) for n in client.get_primaries()}
    try:
        old, new = nodes[source.name], nodes[target.name]
        old_id, new_id = old.execute_command("CLUSTER MYID"), new.execute_command("CLUSTER MYID")
        new.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", old_id)
        old.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", new_id)
        while keys := old.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            old.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
        for node in nodes.values():
            node.execute_command("CLUSTER SETSLOT", slot, "NODE", new_id)
        store.send(named_batch("two", 40), [])  # to the old node: MOVED
        store.send(named_batch("three", 30), [])  # reads that, sends "two" again, then this
        store.sync()
        assert client.get_node_from_key(key).name == target.name  # the client followed
        assert store.report(START, START).pageviews == 120
        pages = [p["path"] for p in store.report(START, START).pages]
        assert {p.split("/")[1] for p in pages} == {"one", "two", "three"}
    finally:
        for node in nodes.values():
            node.close()
