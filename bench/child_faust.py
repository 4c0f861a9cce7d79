"""A faust-streaming contender process (runs in bench/.venvs/faust): one agent over the topic.

A Faust agent acknowledges each event once the agent has taken the next one, and the consumer
commits acknowledged offsets every ``broker_commit_interval`` (2.8 s by default) and at stop:
at-least-once. The topic's values are decoded as JSON (``value_serializer="json"``), so the agent
gets a dict. The web server is off, tables live in memory, and the data directory is a temporary
one, removed at exit. Once the agent has handled
`expected` records the process sends itself SIGTERM, which the Faust worker takes as a graceful
stop (it commits, then leaves the group).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import tempfile

import faust
from _child import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS, Counter, arguments, report


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    counter = Counter(args.expected)
    datadir = tempfile.mkdtemp(prefix="bench-faust-")  # Faust writes its data dir: not in bench/
    app = faust.App(
        args.group,
        datadir=datadir,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        web_enabled=False,
        value_serializer="json",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_MS / 1000,
        broker_heartbeat_interval=HEARTBEAT_INTERVAL_MS / 1000,
        topic_partitions=max(1, len(json.loads(args.ends))),
    )
    topic = app.topic(args.topic, value_serializer="json")

    @app.agent(topic)
    async def handle(stream: faust.Stream) -> None:
        async for _value in stream:
            counter.hit()
            if counter.count == counter.expected:
                os.kill(os.getpid(), signal.SIGTERM)

    async def watchdog() -> None:
        await asyncio.sleep(args.timeout)
        os.kill(os.getpid(), signal.SIGTERM)

    app.task(watchdog)
    worker = faust.Worker(app, loglevel=logging.WARNING, quiet=True)
    try:
        with contextlib.suppress(SystemExit):  # the worker exits the process when it stops
            worker.execute_from_commandline()
    finally:
        shutil.rmtree(datadir, ignore_errors=True)
    report(
        **counter.stamps(),
        version=f"faust-streaming {importlib.metadata.version('faust-streaming')}",
    )


if __name__ == "__main__":
    main()
