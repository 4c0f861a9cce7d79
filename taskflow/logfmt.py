"""Log formats for the CLI: compact text, or one JSON object per line.

The library itself only logs; `taskflow run` (and nothing else) calls `configure`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

__all__ = ["JsonFormatter", "TextFormatter", "configure"]

LogFormat = Literal["text", "json"]

# Attributes a LogRecord always has; anything else was passed through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


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
    """One JSON object per line: time, level, logger, message, extras, and the traceback."""

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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


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
