"""Shared test set-up: asyncio debug mode for every loop the tests create."""

from __future__ import annotations

import os

# Read when each event loop is created: slow callbacks and never-awaited coroutines get reported.
os.environ.setdefault("PYTHONASYNCIODEBUG", "1")
