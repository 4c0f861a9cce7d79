"""The recorder (tests/apps/recorder.py) with a handler that takes a JSON object (`dict`).

The recorder's own ``RECORDER_PAYLOAD=dict`` mode does not load: its handler annotates the context
``ctx: Any``, and taskflow passes the Context only to a parameter annotated ``Context`` (or an
unannotated ``ctx``). The other ``RECORDER_*`` variables work as there; the group is ``recorder``.
"""

from __future__ import annotations

from typing import Any

from taskflow import App, Context
from tests.apps.recorder import _options, _topics, record

app = App("recorder")


@app.consume(*_topics, **_options)
async def on_event(event: dict[str, Any], ctx: Context) -> None:
    assert ctx.message is not None
    await record(ctx.message)
