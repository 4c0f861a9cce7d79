"""Where the tests' Redis lives: its own database on the machine's server, flushed per test."""

from __future__ import annotations

import os

REDIS_URL = os.environ.get("TASKFLOW_TEST_REDIS", "redis://127.0.0.1:6379/15")
