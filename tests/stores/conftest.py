"""Store fixtures: one URL per store, each on real servers, cleaned up after.

- ``memory://NAME`` and ``sqlite:///TMP/…``: private per test.
- Redis on 127.0.0.1:6379, db ``TRACKMW_TEST_REDIS_DB`` (default 15), with a key prefix
  per test whose keys are deleted before and after. Other test runs may share the db at
  the same time, so the fixture deletes only its own prefix instead of ``FLUSHDB``.
- A three-node Redis Cluster started for the session on spare loopback ports (a temp
  dir holds the node files), torn down after.
- PostgreSQL database ``test`` on 127.0.0.1:5432: a schema per test, dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from bench import local

from tests.conftest import need_service
from trackmw.stores import Store, open_store

REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("TRACKMW_TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("TRACKMW_TEST_REDIS_DB", "15"))
PG_URL = os.environ.get("TRACKMW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: Every store of the conformance suite; "redis-hll" is checked with estimate tolerances.
#: ("redis-cluster-hll" is also known to ``store_url``, for tests that ask for it.)
STORES = ("memory", "sqlite", "redis", "redis-hll", "redis-cluster", "postgresql")


def redis_up(port: int = REDIS_PORT) -> bool:
    return local.redis_up(port, REDIS_HOST)


def postgres_up() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


def delete_prefix(client: object, prefix: str) -> None:
    """Delete every key of one ``{prefix}`` (on each node of a cluster)."""
    keys = list(client.scan_iter(match="{" + prefix + "}*", count=1000))  # type: ignore[attr-defined]
    for key in keys:
        client.delete(key)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """``redis+cluster://127.0.0.1:PORT``: three masters on spare ports, for the session."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(local.local_cluster())
        except local.Unavailable as exc:
            need_service(False, str(exc))
        yield url


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store of ``store_kind``; its data is removed after the test."""
    name = "t" + uuid.uuid4().hex[:12]
    if store_kind == "memory":
        yield f"memory://{name}"
    elif store_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'trackmw.db'}"
    elif store_kind.startswith("redis"):
        import redis

        if store_kind.startswith("redis-cluster"):
            base = request.getfixturevalue("redis_cluster")
            from redis.cluster import RedisCluster

            client = RedisCluster.from_url(base.replace("redis+cluster", "redis"))
        else:
            need_service(redis_up(), f"no Redis on {REDIS_HOST}:{REDIS_PORT}")
            base = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
        uniques = "hll" if store_kind.endswith("hll") else "exact"
        delete_prefix(client, name)
        try:
            yield f"{base}?prefix={name}&uniques={uniques}"
        finally:
            delete_prefix(client, name)
            client.close()
    elif store_kind == "postgresql":
        need_service(postgres_up(), f"no PostgreSQL at {PG_URL}")
        import psycopg

        try:
            yield f"{PG_URL}?schema={name}"
        finally:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    else:  # pragma: no cover
        raise AssertionError(store_kind)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """The store at ``store_url``, opened; closed after the test."""
    s = open_store(store_url)
    yield s
    s.close()
