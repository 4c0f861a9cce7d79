"""What every contender process shares: its arguments, its stamps, and the one line it reports.

Standard library only: each contender runs in its own virtual environment (FastStream's, Faust's,
taskflow's), and each imports this module from the bench directory.

A contender process reads the pre-produced topic in a fresh group, calls `Counter.hit` once per
decoded record, stops once `expected` records were handled, and prints one line
``RESULT {json}`` on stdout: the first and last handled records as `time.monotonic()` stamps
(CLOCK_MONOTONIC, the same clock in every process of the machine, so the suite can subtract its
own start stamp), how many it handled, and its peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

__all__ = ["RESULT", "Counter", "arguments", "peak_rss_kib", "report"]

RESULT = "RESULT "
# Shared by every contender. Tansu holds a join for max(1 s, session_timeout / 2).
SESSION_TIMEOUT_MS = 2000
HEARTBEAT_INTERVAL_MS = 300


class Counter:
    """The shared handler body: count, and stamp the first and the `expected`-th record."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first = time.monotonic()
        if self.count == self.expected:
            self.last = time.monotonic()
            self.done.set()

    def stamps(self) -> dict[str, Any]:
        """The first and last stamps and the count, for `report`."""
        return {"first": self.first, "last": self.last, "handled": self.count}


def arguments(
    description: str, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """The command line every contender process takes (added to `parser`, when given)."""
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("contender", help="which contender of this file to run")
    parser.add_argument("--bootstrap", required=True, help="host:port of the broker")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True, help="a fresh consumer group")
    parser.add_argument("--expected", type=int, required=True, help="records to handle")
    parser.add_argument("--ends", default="{}", help="JSON {partition: end offset}")
    parser.add_argument("--redis", default="", help="redis:// URL, for contenders that use it")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this")
    return parser.parse_args()


def peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def report(**fields: Any) -> None:
    """Print the RESULT line for the suite (stdout, flushed): `fields` and the peak RSS."""
    sys.stdout.write(RESULT + json.dumps({**fields, "rss_kib": peak_rss_kib()}) + "\n")
    sys.stdout.flush()
