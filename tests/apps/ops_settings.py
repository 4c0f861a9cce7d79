"""An app that sets its options in code, for `taskflow info`'s settings (tests/test_cli.py).

It has a consumer and no periodic task, so `info` never needs its (unreachable) Redis.
"""

from __future__ import annotations

from taskflow import App

app = App(
    "settings",
    broker="kafka://code-broker:9092",
    broker_options={
        "client_id": "billing",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "billing",
        "sasl_plain_password": "code-secret",
    },
    shutdown_timeout=10,
    http_port=8000,
)


@app.consume("orders")
async def on_order(payload: bytes) -> None:
    """Never called: the app is only inspected."""
