"""Private Redis deployments for tests: a 3-primary Redis Cluster, and a primary with a replica
watched by one Sentinel.

Plain classes, like `tests._redis_server.RedisServer` which they are built from; fixtures in
``tests/conftest.py`` start one of each per session. Every server keeps nothing on disk and lives
in its own temp dir; `close` stops what was started.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from tests._redis_server import RedisServer, RedisStartError

__all__ = ["RedisCluster", "RedisSentinel", "free_port"]

_HOST = "127.0.0.1"
_MAX_PORT = 55535  # a cluster node's bus listens at port + 10000
SERVICE = "taskflow"


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def free_port(low: int = 20000, high: int = _MAX_PORT) -> int:
    """A port in [low, high] that is free, and whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(low, high)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RedisStartError(f"no free port between {low} and {high}")


def _cli(*args: str, timeout: float = 30.0) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", _HOST, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RedisStartError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def _wait(what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            raise RedisStartError(f"{what} within {timeout:.0f}s")
        time.sleep(0.1)  # polled: a server has no way to tell us it is ready


class RedisCluster:
    """Three ``redis-server --cluster-enabled yes`` primaries joined by ``redis-cli --cluster``."""

    def __init__(self, *, nodes: int = 3, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.servers = [
            RedisServer(
                port=free_port(),
                args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            )
            for _ in range(nodes)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…``."""
        return "redis+cluster://" + ",".join(f"{_HOST}:{s.port}" for s in self.servers)

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def start(self) -> Self:
        for server in self.servers:
            server.start()
        nodes = [f"{_HOST}:{server.port}" for server in self.servers]
        _cli("--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes")
        for port in self.ports:
            _wait(
                f"the cluster node on {port} did not report cluster_state:ok",
                lambda port=port: "cluster_state:ok" in _cli("-p", str(port), "cluster", "info"),
                self.timeout,
            )
        return self

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisSentinel:
    """A primary, its replica and one Sentinel monitoring them as ``taskflow`` (quorum 1).

    The Sentinel calls the primary down after `down_after` ms without an answer and fails over to
    the replica; `url` is ``redis+sentinel://127.0.0.1:S/taskflow``.

    `down_after` stays well above a second, the period of the Sentinel's PINGs. At 1000 ms the
    Sentinel was seen calling the primary it had just promoted down a second after promoting it,
    until that primary's first answer a few ms later: clients found no primary at all meanwhile,
    and an app logged the outage twice.
    """

    def __init__(self, *, down_after: int = 2000, failover_timeout: int = 3000) -> None:
        self.primary = RedisServer(port=free_port())
        self.replica = RedisServer(
            port=free_port(), args=["--replicaof", _HOST, str(self.primary.port)]
        )
        config = (
            f"sentinel monitor {SERVICE} {_HOST} {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after}\n"
            f"sentinel failover-timeout {SERVICE} {failover_timeout}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.sentinel = RedisServer(port=free_port(), args=["--sentinel"], config=config)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{_HOST}:{self.sentinel.port}/{SERVICE}"

    def primary_port(self) -> int:
        """The port of the primary as the Sentinel names it now."""
        reply = _cli("-p", str(self.sentinel.port), "sentinel", "get-master-addr-by-name", SERVICE)
        return int(reply.split()[1])

    def kill_primary(self) -> tuple[RedisServer, RedisServer]:
        """SIGKILL the server the Sentinel names primary now, as a crash would.

        Returns it and the other server, the replica the Sentinel promotes once the primary has
        not answered for `down_after` ms.
        """
        port = self.primary_port()
        primary, replica = (
            (self.primary, self.replica)
            if self.primary.port == port
            else (self.replica, self.primary)
        )
        primary.stop(graceful=False)
        return primary, replica

    def wait_promoted(self, server: RedisServer, timeout: float = 60.0) -> None:
        """Wait until the Sentinel names `server` the primary and `server` says it is one."""
        _wait(
            f"the Sentinel did not promote the server on {server.port}",
            lambda: (
                self.primary_port() == server.port
                and "role:master" in _cli("-p", str(server.port), "info", "replication")
            ),
            timeout,
        )

    def start(self) -> Self:
        self.primary.start()
        self.replica.start()
        _wait(
            "the replica did not sync with the primary",
            lambda: (
                "master_link_status:up" in _cli("-p", str(self.replica.port), "info", "replication")
            ),
            30.0,
        )
        self.sentinel.start()
        _wait(
            "the Sentinel did not see the replica",
            lambda: "slaves=1" in _cli("-p", str(self.sentinel.port), "info", "sentinel"),
            30.0,
        )
        return self

    def close(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
