"""`taskflow run` sets up the OpenTelemetry SDK from the standard OTEL_* variables, on request."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from taskflow import ConfigurationError
from taskflow.telemetry.setup import configure_from_env
from tests._process import AppProcess


def test_nothing_is_set_up_unless_an_exporter_is_asked_for() -> None:
    assert configure_from_env("app", {}) is None
    assert configure_from_env("app", {"OTEL_TRACES_EXPORTER": "none"}) is None
    disabled = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert configure_from_env("app", disabled) is None


def test_an_unknown_exporter_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="exporters are console, otlp or none"):
        configure_from_env("app", {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_otlp_without_its_package_says_what_to_install() -> None:
    with pytest.raises(ConfigurationError, match="pip install opentelemetry-exporter-otlp"):
        configure_from_env("app", {"OTEL_METRICS_EXPORTER": "otlp"})


def test_taskflow_run_exports_consumer_spans_to_the_console(tmp_path: Path) -> None:
    spans = tmp_path / "stdout.txt"
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "slow-service",
        "TASKFLOW_TEST_MARKS": str(tmp_path / "marks.txt"),
        "TASKFLOW_TEST_SECONDS": "0",
    }
    with AppProcess("tests.apps.slow:app", env=env, stdout=spans) as app:
        app.wait_for("handling job 1")
        assert app.stop(signal.SIGTERM, timeout=30) == 0
    text = spans.read_text()
    decoder, position, exported = json.JSONDecoder(), 0, []
    while (start := text.find("{", position)) != -1:
        span, position = decoder.raw_decode(text, start)
        exported.append(span)
    process = [s for s in exported if s["name"] == "process jobs"]
    assert len(process) == 1
    assert process[0]["kind"] == "SpanKind.CONSUMER"
    assert process[0]["attributes"]["messaging.destination.name"] == "jobs"
    assert process[0]["resource"]["attributes"]["service.name"] == "slow-service"


def test_taskflow_run_refuses_an_unknown_exporter_with_exit_code_2() -> None:
    env = {"OTEL_TRACES_EXPORTER": "zipkin"}
    with AppProcess("tests.apps.idle:app", env=env) as app:
        code = app.wait(timeout=30)
    assert code == 2
    assert "exporters are console, otlp or none" in app.log
