"""The dead-letter recipe on a real broker: retries, the dead-letter topic, and its reader."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid

from aiokafka import AIOKafkaProducer

from tests._process import ROOT, AppProcess, wait_until
from tests._tansu import create_topic

READER = [sys.executable, "-m", "examples.recipes.read_dead_letters", "payments.DLQ"]


def read_dead_letters(bootstrap: str, run: str) -> list[str]:
    """The reader's lines about this run's payments (the topic is shared by the session)."""
    done = subprocess.run(
        [*READER, "--bootstrap", bootstrap],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if f"key={run}" in line]


async def test_failing_payments_are_retried_dead_lettered_and_read_back(
    app_env: dict[str, str], bootstrap: str, producer: AIOKafkaProducer
) -> None:
    for name in ("payments", "payments.DLQ"):
        await create_topic(bootstrap, name, 4, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    payments = [
        {"id": f"{run}-ok", "account": "a1", "amount_cents": 500},
        {"id": f"{run}-declined", "account": "a1", "amount_cents": 0},
        {"id": f"{run}-offline", "account": "a1", "amount_cents": 9, "gateway": "offline"},
    ]
    with AppProcess("examples.recipes.dead_letters:app", env=app_env) as app:
        app.wait_for(r"→ consuming payments")
        for payment in payments:
            await producer.send("payments", json.dumps(payment).encode(), key=run.encode())
        await producer.flush()
        app.wait_for(rf"charged payment {run}-ok")
        lines: list[str] = []

        def two_letters() -> bool:
            lines[:] = read_dead_letters(bootstrap, run)
            return len(lines) >= 2

        wait_until(two_letters, 60, "two dead letters", step=0.5)
        assert app.stop(signal.SIGTERM) == 0
    declined, offline = lines  # one key, one partition: in the order they failed
    assert declined.startswith("payments[")
    assert declined.endswith(
        f"rejected after 1 attempt(s): examples.recipes.dead_letters.CardDeclined:"
        f" payment {run}-declined: amount must be positive"
    )
    assert offline.endswith(
        "exhausted after 3 attempt(s): builtins.ConnectionError: gateway 'offline' did not answer"
    )
    assert "stopped cleanly" in app.log
