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
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_service, wait_for
from trackmw.stores import Store, open_store

REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("TRACKMW_TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("TRACKMW_TEST_REDIS_DB", "15"))
PG_URL = os.environ.get("TRACKMW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: Every store of the conformance suite; "redis-hll" is checked with estimate tolerances.
#: ("redis-cluster-hll" is also known to ``store_url``, for tests that ask for it.)
STORES = ("memory", "sqlite", "redis", "redis-hll", "redis-cluster", "postgresql")


def redis_up(port: int = REDIS_PORT) -> bool:
    try:
        import redis

        with redis.Redis(host=REDIS_HOST, port=port, socket_timeout=2) as client:
            return bool(client.ping())
    except Exception:
        return False


def postgres_up() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


def free_port(also: int = 0) -> int:
    """A loopback port nobody listens on (and ``port + also`` free too, if asked)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if also and port + also > 65535:
            continue
        if not also:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + also))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def delete_prefix(client: object, prefix: str) -> None:
    """Delete every key of one ``{prefix}`` (on each node of a cluster)."""
    keys = list(client.scan_iter(match="{" + prefix + "}*", count=1000))  # type: ignore[attr-defined]
    for key in keys:
        client.delete(key)  # type: ignore[attr-defined]


class RedisServer:
    """A private ``redis-server`` process on a spare port, stoppable and restartable."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--daemonize",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis_up(self.port), f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """``redis+cluster://127.0.0.1:PORT``: three masters on spare ports, for the session."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        need_service(False, "redis-server / redis-cli are not installed")
    tmp = Path(tempfile.mkdtemp(prefix="trackmw-cluster-"))
    nodes: list[RedisServer] = []
    try:
        for i in range(3):
            d = tmp / str(i)
            d.mkdir()
            node = RedisServer(
                d,
                free_port(also=10000),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(d / "nodes.conf"),
                "--appendonly",
                "no",
            )
            nodes.append(node.start())
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

        def ready() -> bool:
            import redis

            for n in nodes:
                with redis.Redis(port=n.port) as c:
                    if c.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                        return False
            return True

        wait_for(ready, "the redis cluster to be ready")
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


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
