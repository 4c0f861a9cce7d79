"""The Rate limiting guide's consumers: a limit per process, one shared by the
fleet through Redis, and one built from a `RateLimit`.

    taskflow run examples.rate_limits:app --redis redis://localhost:6379/0
"""

# --8<-- [start:app]
from __future__ import annotations

from datetime import timedelta

from taskflow import App, RateLimit

app = App("billing", redis_url="redis://localhost:6379/0")


# this process: 100 runs a second
@app.consume("invoices", rate_limit="100/s")
async def send_invoice(invoice: dict) -> None: ...


# every replica together
@app.consume("sms", rate_limit="30/m", rate_limit_scope="global")
async def send_sms(sms: dict) -> None: ...


async def notify(event: dict) -> None: ...


every_2s = RateLimit(5, per=timedelta(seconds=2))
app.add_consumer(notify, "events", rate_limit=every_2s)
# --8<-- [end:app]
