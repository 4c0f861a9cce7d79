"""The status of a running app as one JSON-ready body, and its rates over the last minute.

`status_body` is what ``GET /status`` answers and what each replica publishes to the fleet
(`taskflow.fleet`). `Rates` turns successive statuses into messages and errors per second: a
partition's committed offset moves by one per message finished, and a consumer's error-policy
counts by one per failure. Everything here is known locally; nothing asks the broker.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from taskflow.telemetry.status import ConsumerStatus
from taskflow.types import WorkerState, status_of

if TYPE_CHECKING:
    from taskflow.manager import Manager
    from taskflow.middleware.timeout import Watchdog
    from taskflow.runner import Runtime
    from taskflow.types import Worker

__all__ = ["RATE_WINDOW", "Rates", "app_state", "status_body"]

RATE_WINDOW = 60.0
"""Seconds the rates are measured over."""

ERROR_ACTIONS = ("retry", "retry_topic", "skip", "skip_tombstone", "dead_letter")


def status_body(runtime: Runtime | None, app_name: str, loop_lag: float) -> dict[str, Any]:
    """The /status body: the app's state and every worker's."""
    workers: list[dict[str, Any]] = []
    if runtime is not None:
        workers = [_describe(runtime.manager, w, runtime.watchdog) for w in runtime.workers]
    return {
        "app": app_name,
        "state": app_state(runtime),
        "loop_lag": round(loop_lag, 4),
        "workers": workers,
        "publishing": _publishing(runtime),
    }


def app_state(runtime: Runtime | None) -> str:
    """``starting``, ``running`` or ``stopping`` (from the first stop request on)."""
    if runtime is None:
        return "starting"
    manager = runtime.manager
    if manager.stop_requested:
        return "stopping"
    statuses = manager.statuses.values()
    if statuses and all(status.task is None for status in statuses):  # none: publishing only
        return "starting"
    return "running"


def _describe(manager: Manager, worker: Worker, watchdog: Watchdog | None) -> dict[str, Any]:
    supervision = manager.statuses.get(worker.name)
    status = status_of(worker)
    entry: dict[str, Any] = {
        "name": worker.name,
        "kind": status.kind,
        "state": supervision.state.value if supervision else WorkerState.STOPPED.value,
        "restarts": supervision.restarts if supervision else 0,
        "last_error": supervision.last_error if supervision else None,
    }
    if watchdog is not None and worker.name in watchdog.threads:
        entry["stuck_threads"] = watchdog.stuck_threads()[worker.name]
    body = entry | status.as_json(time.monotonic())
    if isinstance(status, ConsumerStatus):
        body["retries"] = status.count("retry") + status.count("retry_topic")
        body["dead_letters"] = status.count("dead_letter")
        body["errors"] = sum(status.count(action) for action in ERROR_ACTIONS)
        for partition, known in zip(body["partitions"], status.partitions, strict=True):
            partition["in_flight"] = known.in_flight
    return body


def _publishing(runtime: Runtime | None) -> dict[str, int]:
    """Records published without waiting: not answered yet, and lost."""
    if runtime is None:
        return {"pending": 0, "undelivered": 0}
    deliveries = runtime.deliveries
    return {"pending": len(deliveries.pending), "undelivered": deliveries.failed}


class Rates:
    """Messages and errors per second over the last `window` seconds, from successive bodies.

    `add` a /status body each time one is made; it writes ``messages_per_s`` into each partition
    of each consumer and ``errors_per_s`` into each consumer, measured from the oldest body kept
    (at most `window` seconds old). A partition whose committed offset went back (a new owner)
    counts from there.
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._seen: deque[tuple[float, dict[str, int]]] = deque()

    def add(self, body: dict[str, Any], now: float) -> dict[str, Any]:
        """Write the rates into `body` (a /status body made at `now`, monotonic) and keep it."""
        counters = _counters(body)
        while self._seen and now - self._seen[0][0] > self.window:
            self._seen.popleft()
        then, before = self._seen[0] if self._seen else (now, counters)
        span = now - then
        for worker in body["workers"]:
            if "partitions" not in worker:
                continue
            name = worker["name"]
            for p in worker["partitions"]:
                key = f"{name}/{p['topic']}/{p['partition']}"
                p["messages_per_s"] = _rate(counters.get(key), before.get(key), span)
            worker["errors_per_s"] = _rate(counters.get(name), before.get(name), span)
        self._seen.append((now, counters))
        return body


def _counters(body: dict[str, Any]) -> dict[str, int]:
    counters: dict[str, int] = {}
    for worker in body["workers"]:
        if "partitions" not in worker:
            continue
        counters[worker["name"]] = worker.get("errors", 0)
        for p in worker["partitions"]:
            if p["committed"] is not None:
                counters[f"{worker['name']}/{p['topic']}/{p['partition']}"] = p["committed"]
    return counters


def _rate(now: int | None, then: int | None, span: float) -> float | None:
    if now is None or span <= 0:
        return None if now is None else 0.0
    if then is None or now < then:
        return 0.0
    return round((now - then) / span, 2)
