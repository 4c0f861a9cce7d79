"""A stop signal during start-up: a broker that accepts connections and never answers.

Before, the first SIGTERM waited for the producer's request timeout (37 s, past a 30 s
shutdown_timeout) and a second one left an unclosed producer behind. Now a stop during start-up
cancels it, closes what was opened, and exits 1 within the shutdown timeout.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._process import AppProcess
from tests.kafka.conftest import KAFKA_ENV

RECORDER = "tests.apps.recorder:app"
SHUTDOWN_TIMEOUT = 3.0


class SilentBroker:
    """A TCP listener on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connected = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            self._held.append(conn)
            self.connected.set()

    def __enter__(self) -> SilentBroker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentBroker]:
    with SilentBroker() as broker:
        yield broker


def against(silent: SilentBroker, tmp_path: Path) -> AppProcess:
    env = {
        **KAFKA_ENV,
        "TASKFLOW_BROKER": f"kafka://127.0.0.1:{silent.port}",
        "RECORDER_OUT": str(tmp_path / "handled.txt"),
    }
    args = ("--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    return AppProcess(RECORDER, *args, env=env)


def test_sigterm_while_the_broker_never_answers_interrupts_the_start_up(
    silent: SilentBroker, tmp_path: Path
) -> None:
    with against(silent, tmp_path) as app:
        assert silent.connected.wait(30), f"the app never connected to the broker:\n{app.log}"
        sent = time.monotonic()
        code = app.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - sent

    assert code == 1, app.log
    assert took < SHUTDOWN_TIMEOUT + 1, app.log
    assert "SIGTERM during start-up: interrupting it and closing what was opened" in app.log
    assert app.lines[-1].endswith(
        "app recorder did not run: start-up interrupted: SIGTERM came before it was ready"
    )
    assert "Unclosed" not in app.log
    assert "Traceback" not in app.log


def test_a_second_sigterm_during_start_up_also_exits_at_once_and_clean(
    silent: SilentBroker, tmp_path: Path
) -> None:
    with against(silent, tmp_path) as app:
        assert silent.connected.wait(30), f"the app never connected to the broker:\n{app.log}"
        sent = time.monotonic()
        app.send(signal.SIGTERM)
        app.send(signal.SIGTERM)
        code = app.wait(timeout=30)
        took = time.monotonic() - sent

    assert code == 1, app.log
    assert took < SHUTDOWN_TIMEOUT + 1, app.log
    assert "start-up interrupted" in app.lines[-1]
    assert "Unclosed" not in app.log
    assert "Traceback" not in app.log
