"""Each replica's status snapshot, published to Redis for the fleet's dashboard.

With Redis, a running app publishes a `taskflow.stores.fleet.Snapshot` (its /status body, rates
and identity: host, pid, instance id, taskflow version, start time, state) every
`PUBLISH_INTERVAL` seconds, with a time to live of `SNAPSHOT_TTL`. The publishing task belongs to
the run's task group and is stopped by an event, never cancelled. When a stop is requested it
publishes at once with the state ``draining``; once the workers are done it withdraws the
snapshot, so the fleet sees the replica as stopped rather than waiting for the key to expire.
A Redis that does not answer is logged once and tried again at the next publication. Without
Redis nothing is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from taskflow.exceptions import StoreError
from taskflow.stores.fleet import SNAPSHOT_TTL, FleetStore, Snapshot
from taskflow.telemetry.snapshot import Rates, app_state, status_body

if TYPE_CHECKING:
    from taskflow.runner import Runtime

__all__ = ["PUBLISH_INTERVAL", "SnapshotPublisher", "Snapshots", "publishing_snapshots"]

logger = logging.getLogger(__name__)

PUBLISH_INTERVAL = 5.0
"""Seconds between two snapshots of a replica."""

WITHDRAW_TIMEOUT = 2.0
"""Seconds a clean stop waits for its snapshot to be withdrawn."""

STATES = {"starting": "starting", "running": "running", "stopping": "draining"}


class Snapshots:
    """Makes the snapshots of one run: its identity, fixed at start, and its rates.

    Args:
        runtime: The running app.
        instance: Tells this run apart from another with the same host and pid.
    """

    def __init__(self, runtime: Runtime, *, instance: str | None = None) -> None:
        from taskflow import __version__

        self.runtime = runtime
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.replica = f"{self.host}:{self.pid}:{instance or uuid.uuid4().hex[:8]}"
        self.started = time.time()
        self.version = __version__
        self._rates = Rates()

    def take(self, state: str | None = None) -> Snapshot:
        """The replica as it is now; `state` overrides the one the runtime is in."""
        runtime = self.runtime
        lag = runtime.loop_watch.lag if runtime.loop_watch is not None else 0.0
        body = self._rates.add(status_body(runtime, runtime.app.name, lag), time.monotonic())
        return Snapshot(
            replica=self.replica,
            host=self.host,
            pid=self.pid,
            instance_id=runtime.app.settings.instance_id,
            version=self.version,
            started=self.started,
            published=time.time(),
            state=state or STATES.get(app_state(runtime), "running"),
            status=body,
        )


class SnapshotPublisher:
    """Publishes a replica's snapshot every `interval` seconds until `stop`.

    Args:
        snapshots: What to publish.
        store: Where to.
        interval: Seconds between two snapshots.
        ttl: Seconds a snapshot lives unless published again.
    """

    def __init__(
        self,
        snapshots: Snapshots,
        store: FleetStore,
        *,
        interval: float = PUBLISH_INTERVAL,
        ttl: float = SNAPSHOT_TTL,
    ) -> None:
        self.snapshots = snapshots
        self.store = store
        self.interval = interval
        self.ttl = ttl
        self.published = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._failing = False

    def wake(self) -> None:
        """Publish now (a stop was requested: the state changed)."""
        self._wake.set()

    def stop(self) -> None:
        """End `run` after the publication under way, if any."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Publish until `stop`."""
        while not self._stopping:
            await self.publish_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def publish_once(self) -> None:
        """Publish one snapshot; a failure is logged once, until one succeeds again."""
        try:
            await self.store.publish(self.snapshots.take(), self.ttl)
        except StoreError as exc:
            if not self._failing:
                logger.warning("fleet snapshot not published, trying again: %s", exc)
            self._failing = True
            return
        if self._failing:
            logger.info("fleet snapshot published again")
        self._failing = False
        self.published += 1

    async def withdraw(self) -> None:
        """Withdraw the snapshot: the replica stopped cleanly."""
        stopped = replace(self.snapshots.take("stopped"), status={})
        try:
            async with asyncio.timeout(WITHDRAW_TIMEOUT):
                await self.store.withdraw(stopped)
        except (StoreError, TimeoutError) as exc:
            logger.warning("fleet snapshot not withdrawn, it will expire: %s", exc or "timeout")


@asynccontextmanager
async def publishing_snapshots(
    runtime: Runtime, *, store: Callable[[Runtime], FleetStore | None] | None = None
) -> AsyncIterator[SnapshotPublisher | None]:
    """Publish `runtime`'s snapshots for the life of the block, with Redis; withdraw on exit.

    Args:
        runtime: The running app.
        store: Where to publish; by default the Redis fleet store, None without Redis.
    """
    fleet = (store or redis_fleet)(runtime)
    if fleet is None:
        yield None
        return
    publisher = SnapshotPublisher(Snapshots(runtime), fleet)
    runtime.manager.before_stop.append(publisher.wake)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(publisher.run(), name=f"taskflow:{runtime.app.name}:snapshots")
            try:
                yield publisher
            finally:
                publisher.stop()
    finally:
        with contextlib.suppress(ValueError):
            runtime.manager.before_stop.remove(publisher.wake)
    await publisher.withdraw()


def redis_fleet(runtime: Runtime) -> FleetStore | None:
    """The Redis fleet store of `runtime`, or None without Redis."""
    if runtime.redis is None:
        return None
    from taskflow.stores.redis_fleet import RedisFleetStore

    return RedisFleetStore(runtime.redis, runtime.app.name)
