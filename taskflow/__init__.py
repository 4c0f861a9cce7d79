"""taskflow: decorator-driven asyncio workers for Kafka consumers and periodic tasks.

```python
from taskflow import App, Context

app = App("billing")

@app.consume("orders")
async def on_order(order: dict, ctx: Context) -> None: ...

@app.every(minutes=5)
async def cleanup(ctx: Context) -> None: ...

@app.cron("0 3 * * *", tz="Europe/Berlin")
async def nightly(ctx: Context) -> None: ...
```
"""

from __future__ import annotations

from taskflow.app import App, State
from taskflow.backoff import Backoff
from taskflow.batch import Batch
from taskflow.clock import Clock, SystemClock
from taskflow.context import Context, Tick
from taskflow.exceptions import (
    AppLoadError,
    BatchError,
    BrokerError,
    CommitError,
    ConfigurationError,
    DecodeError,
    Defer,
    HandlerSignal,
    HandlerSignatureError,
    HandlerTimeout,
    PublishError,
    RecordRefused,
    RecordTooLarge,
    Reject,
    Retry,
    SkipTombstone,
    StartupInterrupted,
    StateError,
    StoreError,
    TaskflowError,
)
from taskflow.formats.avro_codec import AvroCodec
from taskflow.formats.json_codec import JsonCodec
from taskflow.formats.msgpack_codec import MsgpackCodec
from taskflow.formats.protobuf_codec import ProtobufCodec
from taskflow.handler import Handler, Job
from taskflow.manager import Manager, ShutdownReport
from taskflow.message import Message, TopicPartition
from taskflow.middleware import Middleware
from taskflow.ratelimit import RateLimit
from taskflow.runner import running
from taskflow.schedule import Cron, Interval, Schedule
from taskflow.topic import Topic
from taskflow.types import Codec, Worker, WorkerState, WorkerStatus

__all__ = [
    "App",
    "AppLoadError",
    "AvroCodec",
    "Backoff",
    "Batch",
    "BatchError",
    "BrokerError",
    "Clock",
    "Codec",
    "CommitError",
    "ConfigurationError",
    "Context",
    "Cron",
    "DecodeError",
    "Defer",
    "Handler",
    "HandlerSignal",
    "HandlerSignatureError",
    "HandlerTimeout",
    "Interval",
    "Job",
    "JsonCodec",
    "Manager",
    "Message",
    "Middleware",
    "MsgpackCodec",
    "ProtobufCodec",
    "PublishError",
    "RateLimit",
    "RecordRefused",
    "RecordTooLarge",
    "Reject",
    "Retry",
    "Schedule",
    "ShutdownReport",
    "SkipTombstone",
    "StartupInterrupted",
    "State",
    "StateError",
    "StoreError",
    "SystemClock",
    "TaskflowError",
    "Tick",
    "Topic",
    "TopicPartition",
    "Worker",
    "WorkerState",
    "WorkerStatus",
    "running",
]

__version__ = "0.1.0"
