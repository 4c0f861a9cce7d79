"""The headers of the records taskflow writes for a failed message: a dead letter, a retry.

A dead letter and a record on a retry topic are the original (its key, value and own headers)
with `taskflow-` headers added; the document describes them as the message's ``headers`` schema,
from the header names `taskflow.workers.dead_letter` and `taskflow.retry_topics` write.
"""

from __future__ import annotations

from typing import Any, Final, get_args

from taskflow.policy import DeadLetterReason
from taskflow.retry_topics import DUE, RETRY_HEADERS
from taskflow.workers.dead_letter import DEAD_LETTER_HEADERS

__all__ = ["DEAD_LETTER", "RETRY", "dead_letter_headers", "retry_headers"]

DEAD_LETTER: Final = "TaskflowDeadLetterHeaders"
"""The name in ``components.schemas`` of the headers of a dead letter."""
RETRY: Final = "TaskflowRetryHeaders"
"""The name in ``components.schemas`` of the headers of a record on a retry topic."""

_SAID: Final = {
    "taskflow-original-topic": "The topic of the original record.",
    "taskflow-original-partition": "The partition of the original record.",
    "taskflow-original-offset": "The offset of the original record.",
    "taskflow-original-timestamp": "The original record's timestamp, in ms since the epoch.",
    "taskflow-consumer-group": "The consumer group whose handler gave the record up.",
    "taskflow-attempts": "The attempts made at the record.",
    "taskflow-reason": f"Why it was given up: {', '.join(get_args(DeadLetterReason))}.",
    "taskflow-exception-type": "The last exception's class, qualified by its module.",
    "taskflow-exception-message": "The start of the last exception's message.",
    "taskflow-traceback": "The end of the last exception's traceback.",
    "taskflow-value-omitted": "Why the value was left out (the whole record was too large).",
    "taskflow-key-omitted": "Why the key was left out.",
    "taskflow-headers-omitted": "Why the original's own headers were left out.",
    "taskflow-original-size": "The size of the value left out, in bytes.",
    "taskflow-original-sha256": "The SHA-256 of the value left out, in hex.",
    DUE: "When the retry may run, in ms since the epoch.",
}
# What every dead letter carries; the others only one whose original was too large to keep.
_ALWAYS: Final = (
    "taskflow-original-topic",
    "taskflow-original-partition",
    "taskflow-original-offset",
    "taskflow-original-timestamp",
    "taskflow-consumer-group",
    "taskflow-attempts",
    "taskflow-reason",
    "taskflow-exception-type",
    "taskflow-exception-message",
    "taskflow-traceback",
)
_NUMBERS: Final = frozenset(name for name, number in DEAD_LETTER_HEADERS if number) | {DUE}


def dead_letter_headers() -> dict[str, Any]:
    """The headers schema of a dead letter."""
    names = [name for name, _ in DEAD_LETTER_HEADERS]
    return _headers(
        names,
        [name for name in names if name in _ALWAYS],
        "The original record's own headers, and taskflow's: where it came from and why it "
        "was given up.",
    )


def retry_headers() -> dict[str, Any]:
    """The headers schema of a record on a retry topic."""
    names = [name for name, _ in DEAD_LETTER_HEADERS if name in RETRY_HEADERS]
    names += sorted(RETRY_HEADERS.difference(names))
    return _headers(
        names,
        names,
        "The original record's own headers, and taskflow's: where it came from, what failed "
        "and when it is due.",
    )


def _headers(names: list[str], required: list[str], description: str) -> dict[str, Any]:
    properties = {name: _header(name) for name in names}
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": required,
    }


def _header(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if name in _NUMBERS:
        schema["pattern"] = "^-?[0-9]+$"
    said = _SAID.get(name)
    if said:
        schema["description"] = said
    return schema
