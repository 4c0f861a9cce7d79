"""Telemetry is on only for a real provider: the API's proxy and no-op defaults mean off."""

from __future__ import annotations

import subprocess
import sys

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from taskflow.telemetry.providers import is_real


class _OtherMeterProvider(metrics.MeterProvider):
    """Another implementation of the API than the SDK's."""

    def get_meter(self, name: str, *args: object, **kwargs: object) -> metrics.Meter:
        return metrics.NoOpMeter(name)


def test_the_api_defaults_are_not_real_and_implementations_are() -> None:
    assert not is_real(metrics.NoOpMeterProvider())
    assert not is_real(trace.NoOpTracerProvider())
    assert not is_real(trace.ProxyTracerProvider())
    assert is_real(MeterProvider())
    assert is_real(TracerProvider())
    assert is_real(_OtherMeterProvider())


def test_the_global_providers_before_any_is_set_are_not_real() -> None:
    probe = (
        "from opentelemetry import metrics, trace\n"
        "from taskflow.telemetry.providers import is_real\n"
        "print(is_real(metrics.get_meter_provider()), is_real(trace.get_tracer_provider()))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
