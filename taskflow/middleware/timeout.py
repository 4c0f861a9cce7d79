"""The handler timeout as a built-in middleware: a run that takes longer raises `HandlerTimeout`.

It is the innermost built-in, so it times the registration's own middleware and the handler, not
the wait for a rate limit or an idempotency claim; and the layers outside it (idempotency,
telemetry) see the `HandlerTimeout` like any other failure: the claim is released, the span says
`error.type=taskflow.exceptions.HandlerTimeout`, and the error policy retries it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskflow.handler import call_with_timeout

if TYPE_CHECKING:
    from taskflow.context import Context
    from taskflow.handler import Handler, Job

__all__ = ["Timeout"]


class Timeout:
    """Cancels the rest of the stack after `seconds` and raises `HandlerTimeout`.

    Args:
        app: The next handler.
        seconds: The registration's `timeout=`.
    """

    def __init__(self, app: Handler, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, job: Job, ctx: Context) -> None:
        await call_with_timeout(self.app, job, ctx, self.seconds)
