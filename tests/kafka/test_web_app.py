"""`examples/fastapi_service.py` under a real uvicorn process, on Kafka: the API publishes, the
consumer in the same process handles it, and SIGTERM drains it; with `SIGNUPS_WORKERS=0` the
same service only publishes, and no consumer joins the group."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import httpx
from aiokafka.admin import AIOKafkaAdminClient

from tests._process import ROOT
from tests._tansu import TansuBroker, create_topic
from tests.kafka.conftest import KAFKA_ENV
from tests.kafka.test_examples_kafka import free_port
from tests.kafka.test_publish_nowait import read_all


@contextmanager
def uvicorn_service(
    bootstrap: str, extra: Mapping[str, str] = {}
) -> Iterator[tuple[subprocess.Popen[str], httpx.Client]]:
    """The example under uvicorn on Kafka, ready (its /readyz says 200)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
    env.pop("PYTHONASYNCIODEBUG", None)
    env |= {**KAFKA_ENV, **extra, "TASKFLOW_BROKER": f"kafka://{bootstrap}", "PORT": str(port)}
    command = [sys.executable, "-m", "examples.fastapi_service"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 60
            while True:  # another process: ask until it answers
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, "the service exited before it was ready"
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.1)
            yield server, http
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def stop(server: subprocess.Popen[str]) -> str:
    """SIGTERM, as Kubernetes sends it; the log once the process has exited."""
    server.send_signal(signal.SIGTERM)
    _, log = server.communicate(timeout=60)
    return log


async def test_the_api_publishes_and_its_own_consumer_handles_it_then_sigterm_drains(
    bootstrap: str,
) -> None:
    await create_topic(bootstrap, "signups", 4, exist_ok=True)
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    with uvicorn_service(bootstrap) as (server, http):
        assert http.post("/signups", json={"email": email}).status_code == 202
        deadline = time.monotonic() + 30
        while email not in http.get("/welcomed").json():
            assert time.monotonic() < deadline, "the signup was not handled"
            await asyncio.sleep(0.1)
        log = await asyncio.to_thread(stop, server)

    # uvicorn raises the signal again once it has shut down cleanly
    assert server.returncode in (0, -signal.SIGTERM), log
    assert f"welcomed {email}" in log
    assert "[send_welcome] assigned signups[" in log
    assert "app signups stopped cleanly" in log
    # the web server stops first, then the workers drain
    assert log.index("Waiting for application shutdown") < log.index("stop requested")
    assert log.index("stop requested") < log.index("Application shutdown complete")


async def test_publish_only_the_api_publishes_and_no_consumer_joins_the_group() -> None:
    with TansuBroker() as broker:  # a broker of its own: no group of another test in it
        bootstrap = broker.bootstrap
        await create_topic(bootstrap, "signups", 4)
        extra = {"SIGNUPS_WORKERS": "0"}
        with uvicorn_service(bootstrap, extra) as (server, http):
            assert http.post("/signups", json={"email": "ada@example.com"}).status_code == 202
            (record,) = await read_all(bootstrap, "signups", 1)
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                (described,) = await admin.describe_consumer_groups(["signups"])
            finally:
                await admin.close()
            welcomed = http.get("/welcomed").json()
            log = await asyncio.to_thread(stop, server)

    assert record.key == b"ada@example.com"
    ((_, name, state, _, _, members),) = described.groups
    assert (name, state, members) == ("signups", "Empty", [])
    assert welcomed == []
    assert "app signups running to publish only: no worker runs" in log
    assert "assigned" not in log  # which a consumer says once it has joined
    assert server.returncode in (0, -signal.SIGTERM), log
