"""The Observability guide's set-up: traces and metrics for an app, and a
span of your own inside a handler.

    taskflow run examples.telemetry:app
"""

# --8<-- [start:providers]
from __future__ import annotations

import sys

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
)

from taskflow import App, Context

# Spans to stderr: stdout is where `--log-format json` writes the logs. In
# production, an OTLP exporter sends them to a collector instead.
tracer_provider = TracerProvider()
console = ConsoleSpanExporter(out=sys.stderr)
tracer_provider.add_span_processor(BatchSpanProcessor(console))
# served on /metrics by the operations endpoint
meter_provider = MeterProvider([PrometheusMetricReader()])

app = App(
    "billing",
    tracer_provider=tracer_provider,
    meter_provider=meter_provider,
    http_port=8080,
)
# --8<-- [end:providers]

# --8<-- [start:own-span]
tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)


@app.consume("invoices")
async def send_invoice(invoice: dict, ctx: Context) -> None:
    # a child of taskflow's `process invoices` span
    with tracer.start_as_current_span("render pdf") as span:
        span.set_attribute("invoice.id", invoice["id"])
    ctx.logger.info("sent invoice %s", invoice["id"])


# --8<-- [end:own-span]
