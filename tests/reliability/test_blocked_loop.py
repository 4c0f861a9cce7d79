"""A handler that blocks the event loop is reported while it blocks, with no --http-port.

Before, only the operations endpoint watched the loop, and only once the loop ran again.
"""

from __future__ import annotations

import signal
import time

from tests._process import AppProcess

BLOCKING = "tests.apps.blocking:app"


def test_a_blocked_loop_is_logged_while_blocked_naming_the_handler_and_record() -> None:
    with AppProcess(BLOCKING, env={"BLOCKING_SECONDS": "5"}) as app:
        app.wait_for("blocking the loop")
        seen = time.monotonic()
        warning = app.wait_for("the event loop is blocked", timeout=10)
        took = time.monotonic() - seen
        app.wait_for("the loop is free again", timeout=30)
        app.wait_for(r"the event loop was blocked for [45]\.\d\ds")
        code = app.stop(signal.SIGTERM)

    assert code == 0, app.log
    assert took < 4, app.log  # the block lasts 5 s: reported while it is still going on
    lines = app.lines
    assert lines.index(warning) < next(i for i, x in enumerate(lines) if "free again" in x)
    assert " WARNING " in warning
    assert "running handler on_job for jobs[0]@0" in warning
    assert "tests/apps/blocking.py:" in warning
    assert "in on_job" in warning
