"""Log formats for the CLI: compact text, or one JSON object per line.

The library itself only logs; the `taskflow` command (and nothing else) calls `configure`.

A JSON line says where it applies: ``worker`` (the worker that logged it), ``topic``,
``partition`` and ``offset`` (a line about a message), ``tick`` (a line about a periodic run),
``trace_id`` and ``span_id`` (an OpenTelemetry span is current). All of it is worked out when a
line is written, from the record itself and the current span, so handling a message costs
nothing extra when nothing is logged.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry import trace

from taskflow.context import Tick
from taskflow.message import Message

__all__ = ["JsonFormatter", "TextFormatter", "configure"]

LogFormat = Literal["text", "json"]

JOB_EXTRA = "taskflow_job"
"""The `extra=` key that names the Message or Tick a line is about, when its arguments do not."""

# Attributes a LogRecord always has; anything else was passed through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    JOB_EXTRA,
}
_PROCESS_SPAN = "process"  # the messaging.operation.type of a consumer's span


class TextFormatter(logging.Formatter):
    """``12:00:01.123 INFO  billing [on_order] message``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
        worker = getattr(record, "worker", None)
        where = f"{record.name} [{worker}]" if worker else record.name
        line = f"{stamp} {record.levelname:<5} {where} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, where it applies (see
    the module docstring), and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        job = _job(record)
        if isinstance(job, Message):
            entry.setdefault("topic", job.topic)
            entry.setdefault("partition", job.partition)
            entry.setdefault("offset", job.offset)
        elif isinstance(job, Tick):
            entry.setdefault("tick", job.scheduled_at.isoformat())
        _add_trace(entry, job)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _job(record: logging.LogRecord) -> Message | Tick | None:
    """The Message or Tick a record is about: its `taskflow_job` extra, else one of its args."""
    job = getattr(record, JOB_EXTRA, None)
    if isinstance(job, Message | Tick):
        return job
    args: Any = record.args
    if isinstance(args, Mapping):
        args = tuple(args.values())
    if isinstance(args, tuple):
        for arg in args:
            if isinstance(arg, Message | Tick):
                return arg
    return None


def _add_trace(entry: dict[str, object], job: Message | Tick | None) -> None:
    """`trace_id` and `span_id` of the current span; else the trace a message came with.

    A consumer's `process` span (telemetry on) also tells the message a handler's own lines
    are about.
    """
    span = trace.get_current_span()
    context = span.get_span_context()
    if context.is_valid:
        entry.setdefault("trace_id", f"{context.trace_id:032x}")
        entry.setdefault("span_id", f"{context.span_id:016x}")
        attributes = getattr(span, "attributes", None)  # SDK spans have them; the API's do not
        if (
            "topic" not in entry
            and isinstance(attributes, Mapping)
            and attributes.get("messaging.operation.type") == _PROCESS_SPAN
        ):
            entry["topic"] = attributes.get("messaging.destination.name")
            partition = attributes.get("messaging.destination.partition.id")
            entry["partition"] = int(partition) if isinstance(partition, str) else partition
            entry["offset"] = attributes.get("messaging.kafka.offset")
        return
    if isinstance(job, Message):
        trace_id = _traceparent_trace_id(job.header("traceparent"))
        if trace_id is not None:
            entry.setdefault("trace_id", trace_id)


def _traceparent_trace_id(header: bytes | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header (``00-<trace id>-<span id>-<flags>``)."""
    if header is None:
        return None
    parts = header.decode("ascii", "replace").strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    trace_id = parts[1].lower()
    try:
        valid = int(trace_id, 16) != 0
    except ValueError:
        return None
    return trace_id if valid else None


class RepeatFilter(logging.Filter):
    """Let one of each repeated library message through per `window` seconds.

    aiokafka logs the same connection error many times a second while a broker is down; one line
    per window, with a count of what was held back, tells the operator as much.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka",), window: float = 10.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.window = window
        self._seen: dict[tuple[str, int, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, record.msg)
        first, held = self._seen.get(key, (float("-inf"), 0))
        if record.created - first < self.window:
            self._seen[key] = (first, held + 1)
            return False
        self._seen[key] = (record.created, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.window:g}s)"
        return True


def configure(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send every log record at `level` and above to stderr in the chosen format.

    Python warnings are logged too (logger `py.warnings`), so with `json` every line is JSON.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
