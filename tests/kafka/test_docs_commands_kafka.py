"""The Kafka commands the home page and Getting started show, on the broker under test.

The pages say `--broker kafka://localhost:9092`, where the reader's Kafka listens; here the
address is the test broker's, and everything else runs as written.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests._doc_commands import KAFKA_FLAG, Command, shown, workdir
from tests._process import AppProcess
from tests._tansu import create_topic

COMMANDS = [c for page in ("index.md", "getting-started.md") for c in shown(page) if c.on_kafka]


def test_the_pages_show_the_kafka_commands_tested_here() -> None:
    assert [(c.page, c.line) for c in COMMANDS] == [
        ("index.md", f"taskflow run examples.billing:app {KAFKA_FLAG}"),
        ("getting-started.md", f"taskflow run quickstart:app {KAFKA_FLAG}"),
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.line for c in COMMANDS])
async def test_a_kafka_run_the_pages_show_consumes_and_stops_on_ctrl_c(
    command: Command, app_env: dict[str, str], bootstrap: str, tmp_path: Path
) -> None:
    await create_topic(bootstrap, "orders", 4, exist_ok=True)
    program, _, reference, *args = command.argv
    args = [f"kafka://{bootstrap}" if a == "kafka://localhost:9092" else a for a in args]
    env = {**app_env, "TASKFLOW_BROKER": "", "TASKFLOW_REDIS_URL": ""}
    cwd = workdir(command, tmp_path)
    with AppProcess(reference, *args, env=env, cwd=cwd, program=[program]) as app:
        app.wait_for(r"→ consuming orders", timeout=60)
        assert app.stop(signal.SIGINT, timeout=60) == 0
    assert "stopped cleanly" in app.log
