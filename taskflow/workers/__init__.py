"""Workers: consumer, scheduled and function workers, and the Worker protocol."""

from __future__ import annotations

from taskflow.types import Worker, WorkerState
from taskflow.workers.consumer import ConsumerWorker
from taskflow.workers.function import FunctionWorker
from taskflow.workers.scheduled import ScheduledWorker

__all__ = ["ConsumerWorker", "FunctionWorker", "ScheduledWorker", "Worker", "WorkerState"]
