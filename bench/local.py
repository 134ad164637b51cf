"""Throwaway servers on 127.0.0.1: spare ports, a private ``redis-server``, and a
three-master Redis Cluster, for the bench and the test suite alike.

>>> with local_cluster() as url:                          # doctest: +SKIP
...     store = open_store(url)    # "redis+cluster://127.0.0.1:PORT"
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["RedisServer", "Unavailable", "free_port", "local_cluster", "redis_up", "wait_until"]


class Unavailable(RuntimeError):
    """The servers could not be started here (a program missing, or a start failed)."""


def free_port(also: int = 0) -> int:
    """A loopback port nobody listens on (and ``port + also`` free too, if asked: a
    cluster node's bus listens 10,000 above its port)."""
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
    raise Unavailable("no free port pair found")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true; raise ``Unavailable`` naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise Unavailable(f"gave up waiting for {what}")
        time.sleep(0.01)


def redis_up(port: int, host: str = "127.0.0.1") -> bool:
    """Does a Redis server answer PING there?"""
    try:
        import redis

        with redis.Redis(host=host, port=port, socket_timeout=2) as client:
            return bool(client.ping())
    except Exception:
        return False


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
        wait_until(lambda: redis_up(self.port), f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


@contextmanager
def local_cluster(masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``masters`` nodes on spare ports (no replicas, nothing saved),
    as ``redis+cluster://127.0.0.1:PORT``; stopped, and its files removed, on exit.

    Raises ``Unavailable`` when ``redis-server`` or ``redis-cli`` is not installed, or
    the cluster does not come up.
    """
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise Unavailable("redis-server / redis-cli are not installed")
    tmp = Path(tempfile.mkdtemp(prefix="trackmw-cluster-"))
    nodes: list[RedisServer] = []
    try:
        for i in range(masters):
            directory = tmp / str(i)
            directory.mkdir()
            node = RedisServer(
                directory,
                free_port(also=10000),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / "nodes.conf"),
                "--appendonly",
                "no",
            )
            nodes.append(node)  # first: stopped on the way out even if it never answers
            node.start()
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        if created.returncode:
            raise Unavailable(f"redis-cli --cluster create failed: {created.stderr[-300:]!r}")

        def ready() -> bool:
            import redis

            try:
                for n in nodes:
                    with redis.Redis(port=n.port) as c:
                        if c.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                            return False
            except redis.RedisError:  # a node not answering yet (or at all: see timeout)
                return False
            return True

        wait_until(ready, "the redis cluster to be ready")
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
