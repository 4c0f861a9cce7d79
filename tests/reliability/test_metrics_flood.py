"""A flood of /metrics requests does not slow the consumers measurably.

Before, each answer was rendered on the event loop: 200 connections for 10 s cut consumption
from about 19/s to 4-12/s. The text is now rendered in a thread, once a second at most, and
connections past the limit are answered 503 at once.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests._process import AppProcess, count_lines, wait_until

STEADY = "tests.apps.steady:app"
CLIENTS = 100
WINDOW = 5.0  # seconds measured with and without the flood
MIN_RATIO = 0.7  # generous: the machine is shared and noisy


def rate(out: Path, seconds: float) -> float:
    """Lines appended to `out` per second over the next `seconds`."""
    before, started = count_lines(out), time.monotonic()
    time.sleep(seconds)
    return (count_lines(out) - before) / (time.monotonic() - started)


def test_a_metrics_flood_does_not_slow_consumption(tmp_path: Path) -> None:
    out = tmp_path / "handled.txt"
    args = ("--http-port", "0", "--http-host", "127.0.0.1")
    with AppProcess(STEADY, *args, env={"STEADY_OUT": str(out)}) as app:
        line = app.wait_for(r"operations endpoint on http://127\.0\.0\.1:\d+")
        port = int(re.search(r":(\d+) ", line).group(1))  # type: ignore[union-attr]
        wait_until(lambda: count_lines(out) >= 200, 30, "consumption to settle")
        quiet = rate(out, WINDOW)

        url = f"http://127.0.0.1:{port}/metrics"
        command = [sys.executable, "-m", "tests.reliability._flood", url, str(WINDOW + 2)]
        with subprocess.Popen([*command, str(CLIENTS)], stdout=subprocess.PIPE, text=True) as flood:
            time.sleep(1)  # every client connected and asking
            flooded = rate(out, WINDOW)
            stdout, _ = flood.communicate(timeout=60)
        code = app.stop(signal.SIGTERM)

    assert code == 0, app.log
    result = json.loads(stdout)
    answers = {int(status): n for status, n in result["answers"].items()}
    print(f"\nconsumed {quiet:.0f}/s quiet, {flooded:.0f}/s under {CLIENTS} clients: {answers}")
    assert answers.get(200, 0) > 20, answers
    assert flooded >= MIN_RATIO * quiet, (quiet, flooded, answers)
    assert "# TYPE messaging_process_duration" in result["body"] or "# TYPE" in result["body"]
