"""Protocols a user plugs in, and the small enums shared across taskflow."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Codec", "DescribesPayload", "Worker", "WorkerState", "WorkerStatus", "status_of"]


@runtime_checkable
class Codec(Protocol):
    """A payload format: how a handler's payload type is read from bytes, and a value written.

    taskflow asks `decoder` once per registration, for the handler's payload annotation, and
    calls what it returns on each record's value; it calls `encode` on each published value that
    is not bytes, str or None (those are published as they are). The records a codec encodes
    carry its `content_type` in their ``content-type`` header, and a consumer reads a record
    that names a content type with the app's codec of that type. See
    [Payloads and codecs](../payloads.md).

    Example:
        ```python
        import yaml

        class YamlCodec:
            content_type = "application/yaml"

            def decoder(self, annotation: Any) -> Callable[[bytes], Any]:
                if annotation is not dict:
                    raise TypeError("YAML payloads are read as dict")
                return yaml.safe_load

            def encode(self, value: Any) -> bytes:
                return yaml.safe_dump(value).encode()

        app = App("billing", codecs=[YamlCodec()])
        ```
    """

    @property
    def content_type(self) -> str:
        """The media type of the bytes, such as ``application/json``: what records carry in their
        ``content-type`` header."""
        ...

    def decoder(self, annotation: Any) -> Callable[[bytes], Any]:
        """The function from a record's value (never None) to an instance of `annotation`.

        Called once per registration. Raise `TypeError` (or `HandlerSignatureError`) for a
        payload type the codec cannot read: the registration then fails, naming the handler.
        The function raises `ValueError` (or `DecodeError`) for a value it cannot read; the
        record is then dead-lettered, never retried.
        """
        ...

    def encode(self, value: Any) -> bytes:
        """The bytes of a published value; raise `TypeError` or `ValueError` for a value the
        format cannot hold."""
        ...


@runtime_checkable
class DescribesPayload(Protocol):
    """What a `Codec` may add, and need not: the schema of a payload in its own terms.

    A codec that carries its schema (Avro's, a Protocol Buffers message's) describes its payloads
    in the app's [AsyncAPI](../asyncapi.md) document better than the payload's annotation can.
    Without the method, or when it returns None, the document has the annotation's JSON Schema.
    """

    def payload_schema(self, annotation: Any) -> Mapping[str, Any] | None:
        """The schema of the payloads read as (and written from) `annotation`, as JSON values:
        an AsyncAPI Schema Object (JSON Schema), or a Multi Format Schema Object
        (``{"schemaFormat": ..., "schema": ...}``); None to leave it to taskflow."""
        ...


@runtime_checkable
class Worker(Protocol):
    """A long-running piece of background work that the Manager starts, watches and stops.

    `start` does the work and returns only when the worker is done: after `stop` was called, or on
    its own. If it raises, the Manager logs the traceback and calls `start` again after a backoff.
    `stop` asks the worker to finish soon; it should return quickly. If `start` has not returned
    by the shutdown deadline, its task is cancelled.

    Example:
        ```python
        class Heartbeat:
            name = "heartbeat"

            def __init__(self) -> None:
                self._stopping = asyncio.Event()

            async def start(self) -> None:
                while not self._stopping.is_set():
                    await send_heartbeat()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), timeout=5)

            async def stop(self) -> None:
                self._stopping.set()

        app.add_worker(Heartbeat())
        ```

    A worker may also say how it is with a `status()` method returning a
    [WorkerStatus][taskflow.WorkerStatus] (see [status_of][taskflow.types.status_of]): /status
    shows it, and `taskflow.telemetry` reads the built-in workers' own from it. It is optional: a
    worker without one is reported by its name and kind alone.
    """

    @property
    def name(self) -> str:
        """A unique name among the app's workers."""
        ...

    async def start(self) -> None:
        """Run until done or stopped."""
        ...

    async def stop(self) -> None:
        """Ask `start` to finish."""
        ...


class WorkerState(enum.StrEnum):
    """Where a worker is in its life, as the Manager tracks it."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    RESTARTING = "restarting"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStatus:
    """What a worker says of itself, at one moment: read by /status and the metrics.

    The built-in workers return richer subclasses (`taskflow.telemetry.status`); a custom worker
    returns this one, with what it wants shown in `details`. `status()` may be called from a
    metrics thread: it should only read, and never wait.
    """

    kind: str = "worker"
    """What sort of worker: ``consumer``, ``periodic``, or a custom worker's own word."""
    activity: str | None = None
    """What it is doing now, in a word or two (``idle``, ``consuming``, ``sending``...)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Further JSON values /status shows under the worker, by name."""

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        """The fields /status adds to the worker's entry (`now`: `time.monotonic()`)."""
        shown: dict[str, Any] = {"kind": self.kind}
        if self.activity is not None:
            shown["activity"] = self.activity
        return shown | dict(self.details)


def status_of(worker: Worker) -> WorkerStatus:
    """`worker.status()`, or a status made of its `kind` for a worker without that method."""
    status = getattr(worker, "status", None)
    if callable(status):
        reported = status()
        if isinstance(reported, WorkerStatus):
            return reported
    return WorkerStatus(kind=getattr(worker, "kind", "worker"))
