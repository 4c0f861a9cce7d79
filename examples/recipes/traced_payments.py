"""Idempotency and tracing together: each payment is booked once, however
often Kafka delivers it, and the handler adds a span of its own under the one
taskflow opens for the message.

Start Redis, then run it with spans sent to an OpenTelemetry collector:

    docker run -d --name redis -p 6379:6379 redis:7
    OTEL_TRACES_EXPORTER=otlp \
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 \
        taskflow run examples.recipes.traced_payments:app
"""

# --8<-- [start:app]
from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from taskflow import App, Context, Message

BALANCES = "payments:balances"  # a Redis hash: account -> cents


@dataclass
class Payment:
    id: str
    account: str
    amount_cents: int


def payment_id(message: Message) -> bytes | None:
    """Two deliveries are one payment if their `payment-id` header is."""
    return message.header("payment-id")  # header values are bytes


def create_app(
    redis_url: str = "redis://localhost:6379/0",
    tracer_provider: TracerProvider | None = None,
) -> App:
    """The app; without a provider, spans go to the global one."""
    app = App("payments", redis_url=redis_url, tracer_provider=tracer_provider)
    tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    @app.consume("payments", idempotent=True, idempotency_key=payment_id)
    async def on_payment(payment: Payment, ctx: Context) -> None:
        # A child of taskflow's `process payments` span, in the same trace.
        with tracer.start_as_current_span("check limits") as span:
            span.set_attribute("payment.account", payment.account)
            if payment.amount_cents > 1_000_000:
                raise ValueError(f"payment {payment.id} is over the limit")
        # Applied with the payment's done mark: booked once, or not at all.
        ctx.transaction.hincrby(BALANCES, payment.account, payment.amount_cents)
        ctx.logger.info("booked payment %s", payment.id)

    return app


app = create_app()
# --8<-- [end:app]
