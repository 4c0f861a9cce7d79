"""The recipes in examples/recipes/ do what their pages say (the Kafka one runs in tests/kafka/)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections import Counter
from contextlib import ExitStack
from datetime import datetime

import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from examples.recipes import dead_letters, traced_payments
from examples.recipes.service.shop import app as shop
from taskflow.testing import TestClient
from tests._process import ROOT, AppProcess, wait_until
from tests._redis import REDIS_URL

SERVICE = ROOT / "examples/recipes/service"


# --8<-- [start:dead-letters]
async def test_a_declined_payment_goes_to_the_dead_letters_at_once() -> None:
    good = {"id": "p1", "account": "a1", "amount_cents": 500}
    declined = {**good, "id": "p2", "amount_cents": 0}
    async with TestClient(dead_letters.app) as client:
        await client.publish("payments", good, key="a1")
        await client.publish("payments", declined, key="a1")
        await client.drain()
        logs = client.broker.topic("payments.DLQ").logs
    (dead,) = [m for log in logs for m in log]
    assert json.loads(dead.value)["id"] == "p2"
    assert dead.header("taskflow-reason") == b"rejected"  # bytes
    assert dead.header("taskflow-attempts") == b"1"
    assert client.report is not None
    assert client.report.clean


# --8<-- [end:dead-letters]


@pytest.mark.redis
def test_two_replicas_run_each_tick_of_the_job_once() -> None:
    env = {"TASKFLOW_REDIS_URL": REDIS_URL}
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(AppProcess("tests.apps.recipe_reports:app", env=env))
            for _ in range(2)
        ]
        for replica in replicas:
            replica.wait_for(r"→ scheduled every 1s")

        def runs() -> int:
            return sum(len(_ticks(replica.log)) for replica in replicas)

        # Eight ticks after both are up, whichever replica ran them.
        first = runs()
        wait_until(lambda: runs() >= first + 8, 30, "eight more ticks")
        assert [replica.stop(signal.SIGTERM, timeout=30) for replica in replicas] == [0, 0]
    ticks = [tick for replica in replicas for tick in _ticks(replica.log)]
    assert [tick for tick, n in Counter(ticks).items() if n > 1] == []  # none ran twice
    seconds = sorted(int(datetime.fromisoformat(tick).timestamp()) for tick in ticks)
    assert seconds == list(range(seconds[0], seconds[-1] + 1))  # none was missed


def _ticks(log: str) -> list[str]:
    return re.findall(r"report for (\S+)", log)


# --8<-- [start:traced]
@pytest.mark.redis
async def test_a_payment_is_booked_once_in_a_span_of_its_own(
    redis: Redis,
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = traced_payments.create_app(REDIS_URL, tracer_provider=provider)
    payment = {"id": "p1", "account": "a1", "amount_cents": 500}
    headers = {"payment-id": b"p1"}
    async with TestClient(app) as client:
        for _ in range(2):  # delivered twice: booked once
            await client.publish("payments", payment, headers=headers)
        await client.drain()
    balances = await redis.hgetall(traced_payments.BALANCES)
    assert balances == {b"a1": b"500"}
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    # one, since the second delivery was skipped
    (own,) = [s for s in finished if s.name == "check limits"]
    assert own.parent is not None
    # a child of taskflow's span for the message, in its trace
    parent = by_id[own.parent.span_id]
    assert (parent.name, parent.kind) == ("process payments", SpanKind.CONSUMER)
    assert own.context.trace_id == parent.context.trace_id
    assert own.attributes == {"payment.account": "a1"}


# --8<-- [end:traced]


async def test_the_service_recipes_app_ships_each_order() -> None:
    async with TestClient(shop.app) as client:
        await client.publish("orders", {"id": 7, "customer": "c1"}, key="c1")
        await client.drain()
        shipments = [m for log in client.broker.topic("shipments").logs for m in log]
    assert [(m.key, m.value) for m in shipments] == [(b"c1", b'{"order":7}')]


def _deployment_and_secret() -> tuple[dict, dict]:
    documents = list(yaml.safe_load_all((SERVICE / "kubernetes.yaml").read_text()))
    kinds = {document["kind"]: document for document in documents}
    return kinds["Deployment"], kinds["Secret"]


def test_the_service_manifest_takes_kafka_credentials_from_its_secret() -> None:
    deployment, secret = _deployment_and_secret()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    assert set(secret["stringData"]) == {
        "TASKFLOW_KAFKA_SASL_PLAIN_USERNAME",
        "TASKFLOW_KAFKA_SASL_PLAIN_PASSWORD",
    }
    plain = {item["name"] for item in container["env"]}
    assert not {name for name in plain if "SASL" in name and "MECHANISM" not in name}
    # The variables the pod gets, as taskflow reads them: accepted, with the password masked.
    env = {item["name"]: item["value"] for item in container["env"]} | secret["stringData"]
    info = subprocess.run(
        [sys.executable, "-m", "taskflow", "info", "shop.app:app", "--app-dir", str(SERVICE)],
        env={"PATH": "/usr/bin:/bin", **env, "OTEL_TRACES_EXPORTER": "none"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert info.returncode == 0, info.stderr
    assert "sasl_plain_username" in info.stdout
    assert secret["stringData"]["TASKFLOW_KAFKA_SASL_PLAIN_PASSWORD"] not in info.stdout


def test_the_service_image_holds_only_the_app_and_runs_what_the_manifest_runs() -> None:
    deployment, _ = _deployment_and_secret()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    dockerfile = (SERVICE / "Dockerfile").read_text().splitlines()
    cmd = next(line for line in dockerfile if line.startswith("CMD "))
    assert json.loads(cmd.removeprefix("CMD ")) == container["args"]
    assert container["args"][:3] == ["taskflow", "run", "shop.app:app"]
    copies = [line.split()[1:] for line in dockerfile if line.startswith("COPY ")]
    assert copies == [["requirements.txt", "."], ["wheels/", "wheels/"], ["shop/", "shop/"]]
    assert any("-r requirements.txt" in line for line in dockerfile if line.startswith("RUN "))
    ignored = (SERVICE / ".dockerignore").read_text().split()
    assert {".venv/", ".git/"} <= set(ignored)
    requirements = (SERVICE / "requirements.txt").read_text()
    assert re.search(r"^taskflow\b", requirements, re.MULTILINE)
