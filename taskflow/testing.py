"""The test kit: run an app in-process on the memory broker, and drive its clock.

```python
async def test_order_is_invoiced() -> None:
    async with TestClient(app) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()
        assert client.app.state.invoices == [1]
```
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from taskflow.app import App
from taskflow.brokers.memory import MemoryBroker
from taskflow.clock import Clock, SystemClock
from taskflow.codec import decode_headers, encode_headers, encode_key, encode_record
from taskflow.context import Tick
from taskflow.exceptions import ConfigurationError, StateError
from taskflow.manager import ShutdownReport
from taskflow.message import Headers, Message, TopicPartition
from taskflow.runner import Runtime, open_runtime
from taskflow.specs import ConsumerSpec, consumer_stages
from taskflow.topic import Topic, topic_name
from taskflow.types import Codec
from taskflow.workers import ScheduledWorker
from taskflow.workers.dead_letter import DeadLetterRecord
from taskflow.workers.due import DueGate, epoch_ms

__all__ = ["DeadLetterRecord", "ManualClock", "Published", "TestClient"]


@dataclass(frozen=True, slots=True)
class Published:
    """One record on a topic of the test broker, as `TestClient.published` returns it.

    Header values are decoded as UTF-8 into `headers`; bytes that are not UTF-8 read as
    ``\\xNN`` escapes there, and `raw_headers` keeps them as they were.
    """

    value: bytes | None
    """The raw value; None for a tombstone."""
    key: bytes | None
    headers: dict[str, str]
    """The headers as text; a repeated name keeps its last value."""
    partition: int
    offset: int
    raw_headers: Headers = ()
    """The headers as they were published, in order."""

    def json(self) -> Any:
        """The value decoded as JSON (None for a tombstone)."""
        return None if self.value is None else json.loads(self.value)

    @classmethod
    def from_message(cls, message: Message) -> Published:
        """The record `message` as a `Published`."""
        headers = decode_headers(message.headers)
        return cls(
            message.value, message.key, headers, message.partition, message.offset, message.headers
        )


class ManualClock:
    """A clock that moves only when told to; sleepers wake when it passes their moment.

    Args:
        start: The initial time (aware); default 2026-01-01T00:00:00Z.

    Example:
        ```python
        clock = ManualClock()
        app = App("demo", clock=clock)
        ...
        await clock.advance(60)  # each sleeper due within the minute wakes, in order
        ```
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs an aware start time")
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()
        # Futures, not an Event: a clock made at import time serves every test's own event loop.
        self._watchers: list[asyncio.Future[None]] = []

    def now(self) -> datetime:
        """Return the clock's current time."""
        return self._now

    async def sleep_until(self, moment: datetime) -> None:
        """Return once the clock has been moved to `moment` or past it."""
        if moment <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (moment, next(self._counter), future))
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)
        await future

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Wait until at least `count` tasks are sleeping on this clock."""
        while self.sleepers < count:
            watcher: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(watcher)
            await watcher

    def next_wakeup(self) -> datetime | None:
        """The earliest moment a sleeper waits for."""
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float | timedelta) -> None:
        """Move time forward, waking each sleeper in order and letting it run."""
        step = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        await self.set(self._now + step)

    async def set(self, moment: datetime) -> None:
        """Move time to `moment` (not backwards), waking sleepers due by then in order."""
        if moment < self._now:
            raise ValueError("a ManualClock does not go back in time")
        while (due := self.next_wakeup()) is not None and due <= moment:
            self._now = max(self._now, due)
            _, _, future = heapq.heappop(self._sleepers)
            future.set_result(None)
            await _let_run()
        self._now = moment
        await _let_run()

    async def advance_to_next(self) -> datetime:
        """Jump to the earliest sleeper's moment, wake it and let it run; return that moment."""
        due = self.next_wakeup()
        if due is None:
            raise StateError("nothing is sleeping on this clock")
        await self.set(due)
        return due

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)


_SETTLE_TURNS = 1000  # a task that never waits must not hang the test: give up after this
_BLIND_TURNS = 20  # on a loop that does not show its ready queue


async def _let_run() -> None:
    """Let the tasks that were woken run until each waits again (on I/O, a timer or an event).

    On asyncio's own loops the ready queue tells when that is; elsewhere a fixed number of turns.
    """
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    for _ in range(_SETTLE_TURNS if ready is not None else _BLIND_TURNS):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return


class TestClient:
    """Run an app in-process on a fresh memory broker for the length of an `async with` block.

    On entry the broker starts, the lifespan and startup hooks run, and every worker starts; on exit
    the app shuts down as it would on SIGTERM and `report` says how it went. Offsets are committed
    as soon as a message is finished, so `drain` returns promptly.

    Args:
        app: The app under test. Its broker setting is ignored: the test kit uses memory.
        partitions: Partitions per topic on the memory broker.
        shutdown_timeout: Seconds to let work finish on exit (default: the app's).
        clock: A clock (a [ManualClock][taskflow.testing.ManualClock]) for the app's periodic
            tasks while the block runs, for an app built without one; the app gets its own
            clock back on exit.

    Raises:
        ConfigurationError: when `clock` is given and the app was built with another clock.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: App,
        *,
        partitions: int = 4,
        shutdown_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if clock is not None and not isinstance(app.clock, SystemClock) and app.clock is not clock:
            raise ConfigurationError(
                f"app {app.name!r} already has a clock of its own: drop clock= from the "
                "TestClient, or build the app without one"
            )
        self.app = app
        self.broker = MemoryBroker(partitions)
        self.shutdown_timeout = shutdown_timeout
        self._clock = clock
        self._app_clock: Clock | None = None
        self.report: ShutdownReport | None = None
        self._runtime: Runtime | None = None
        self._context: Any = None
        self._task: asyncio.Task[ShutdownReport] | None = None

    @property
    def runtime(self) -> Runtime:
        """The running app's broker, workers and Manager."""
        if self._runtime is None:
            raise StateError("the TestClient is not running: use `async with TestClient(app)`")
        return self._runtime

    async def __aenter__(self) -> TestClient:
        if self._clock is not None:
            self._app_clock, self.app.clock = self.app.clock, self._clock
        # No fleet snapshot: a test's run is no replica of the fleet.
        self._context = open_runtime(
            self.app,
            broker=self.broker,
            commit_interval=0,
            shutdown_timeout=self.shutdown_timeout,
            snapshots=False,
        )
        try:
            self._runtime = await self._context.__aenter__()
        except BaseException:
            self._restore_clock()
            raise
        self._task = asyncio.create_task(self._runtime.manager.run(), name="taskflow-testclient")
        await _let_run()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runtime, task = self.runtime, self._task
        assert task is not None
        runtime.manager.request_stop("test client exit")
        try:
            self.report = await task
        finally:
            self._runtime = None
            try:
                await self._context.__aexit__(exc_type, exc, tb)
            finally:
                self._restore_clock()

    def _restore_clock(self) -> None:
        if self._app_clock is not None:
            self.app.clock, self._app_clock = self._app_clock, None

    async def publish(
        self,
        topic: str | Topic[Any],
        value: Any,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        codec: Codec | None = None,
    ) -> tuple[TopicPartition, int]:
        """Publish as a producer outside the app would; returns the partition and offset.

        A value is encoded as `App.publish` encodes it, by `codec` (default the app's), and its
        record carries the codec's ``content-type`` header; bytes and str go as they are.
        """
        self.runtime  # noqa: B018 - raises when not running
        if isinstance(topic, Topic):
            codec = codec or topic.codec
        payload, raw_headers = encode_record(
            value, encode_headers(headers), codec or self.app.codec
        )
        return await self.broker.publish(
            topic_name(topic), payload, key=encode_key(key), headers=raw_headers
        )

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every message in every consumed topic is handled and committed.

        On retry topics (see "Retry topics" in the consuming guide) that means every record
        due by the app's clock: move a ManualClock on (`await clock.advance(10)`) to let the
        next stage run.

        Raises:
            TimeoutError: naming the groups still behind, when `timeout` passes first.
        """
        try:
            async with asyncio.timeout(timeout):
                while behind := self._behind():
                    # Any group still behind has to commit before the drain can end.
                    await self.broker.group(next(iter(behind))).wait_for_commit()
        except TimeoutError:
            late = ", ".join(f"{group} ({lag} behind)" for group, lag in self._behind().items())
            raise TimeoutError(f"drain timed out after {timeout}s: {late}") from None

    def _behind(self) -> dict[str, int]:
        lags: dict[str, int] = {}
        for spec in self.app.consumers:
            for stage in consumer_stages(spec):
                group = stage.consumer_group
                lag = sum(self._lag(stage, topic) for topic in stage.topics)
                if lag:
                    lags[group] = lags.get(group, 0) + lag
        return lags

    def _lag(self, spec: ConsumerSpec, topic: str) -> int:
        """Records of `topic` that the group of `spec` has not committed yet; on a retry stage
        only those that are due by the app's clock (and nothing from the first that is not)."""
        gate = None
        if spec.retrying:
            assert spec.retry_topics is not None
            gate = DueGate(spec.retry_topics.delay_of(topic), spec.group)
        now = epoch_ms(self.clock.now())
        lag = 0
        for partition, log in enumerate(self.broker.topic(topic).logs):
            committed = self.broker.committed(spec.consumer_group, TopicPartition(topic, partition))
            waiting = log[committed or 0 :]
            if gate is not None:
                waiting = _due(gate, waiting, now)
            lag += len(waiting)
        return lag

    def published(self, topic: str | Topic[Any]) -> list[Published]:
        """Every record on `topic`, over all partitions, in the order they were written.

        Within one partition that is offset order. Records published by the app, by
        `publish`, and dead letters alike; a topic nothing was written to gives ``[]``.
        """
        written = self.broker.topic(topic_name(topic)).written
        return [Published.from_message(message) for message in written]

    def dead_letters(self, topic: str) -> list[DeadLetterRecord]:
        """The dead letters on dead-letter topic `topic`, in the order they were written.

        Raises:
            ValueError: when a record on `topic` is not a dead letter taskflow wrote.
        """
        return [DeadLetterRecord.from_message(m) for m in self.broker.topic(topic).written]

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The offset `group` has committed for one partition."""
        return self.broker.committed(group, TopicPartition(topic, partition))

    async def run_schedule(self, name: str) -> None:
        """Run periodic task `name` once now, through its middleware; raises what it raises."""
        tasks = {w.name: w for w in self.runtime.workers if isinstance(w, ScheduledWorker)}
        worker = tasks.get(name)
        if worker is None:
            raise StateError(f"no periodic task {name!r}; the app has {sorted(tasks) or 'none'}")
        await worker.run_once(Tick(name, self.app.clock.now()))

    @property
    def clock(self) -> Any:
        """The clock the app runs on: the one given to the TestClient, else the app's own."""
        return self._clock or self.app.clock


def _due(gate: DueGate, records: Sequence[Message], now_ms: int) -> list[Message]:
    """The records from the head of `records` that are due by `now_ms`."""
    return list(itertools.takewhile(lambda record: gate.due(record) <= now_ms, records))
