"""How much a flood of /metrics requests slows a consumer: the ratio of its rates.

Runs ``tests.apps.steady`` (a consumer fed at a steady rate from its memory broker, with 1 ms of
CPU work per message) with the operations endpoint on 127.0.0.1, measures its consumption for
``--seconds`` quiet, then under ``--clients`` concurrent keep-alive clients asking for /metrics as
fast as they can (``tests/reliability/_flood.py``), and prints both rates and their ratio.

    .venv/bin/python bench/metrics_flood.py --clients 100 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._process import AppProcess, count_lines, wait_until  # noqa: E402


def rate(out: Path, seconds: float) -> float:
    before, started = count_lines(out), time.monotonic()
    time.sleep(seconds)
    return (count_lines(out) - before) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "handled.txt"
        args = ("--http-port", "0", "--http-host", "127.0.0.1")
        with AppProcess("tests.apps.steady:app", *args, env={"STEADY_OUT": str(out)}) as app:
            line = app.wait_for(r"operations endpoint on http://127\.0\.0\.1:\d+")
            port = re.search(r":(\d+) ", line).group(1)  # type: ignore[union-attr]
            wait_until(lambda: count_lines(out) >= 200, 30, "consumption to settle")
            quiet = rate(out, options.seconds)
            url = f"http://127.0.0.1:{port}/metrics"
            command = [sys.executable, "-m", "tests.reliability._flood", url]
            command += [str(options.seconds + 2), str(options.clients)]
            with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as flood:
                time.sleep(1)
                flooded = rate(out, options.seconds)
                stdout, _ = flood.communicate(timeout=120)
            app.stop(signal.SIGTERM)
    answers = json.loads(stdout)["answers"]
    print(f"consumed {quiet:.1f}/s quiet, {flooded:.1f}/s under {options.clients} clients")
    print(f"answers {answers}; ratio {flooded / quiet:.2f}")


if __name__ == "__main__":
    main()
