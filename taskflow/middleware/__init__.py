"""Middleware: one shape, a class built with the next handler that is itself a handler.

```python
class Timing:
    def __init__(self, next: Handler) -> None:
        self.next = next

    async def __call__(self, job: Job, ctx: Context) -> None:
        started = time.perf_counter()
        try:
            await self.next(job, ctx)
        finally:
            ctx.logger.info("%s took %.3fs", job, time.perf_counter() - started)

app = App("billing", middleware=[Middleware(Timing)])
```

The stack is built once, when the app starts: app-wide middleware outermost, in the order given,
then the registration's own, then the handler.

A middleware of a consumer may also be `BatchAware`: it then sees each fetched batch before any
of its messages runs, so per-message work against a remote store can go out in one round trip
(the idempotency middleware claims a whole batch at once this way).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from taskflow.handler import Handler

if TYPE_CHECKING:
    from taskflow.message import Message, TopicPartition

__all__ = ["BatchAware", "Middleware", "build_stack"]


@runtime_checkable
class BatchAware(Protocol):
    """A consumer middleware that also sees fetched batches, partitions leaving, and the commit.

    The consumer calls these from its fetch loop and its rebalance and shutdown steps; none of
    them may raise for a store failure (the per-message path must still work without them).

    One more method is optional: ``watch_progress(finished_below)``, called once when the
    consumer is built, with a function that gives a partition's commit position (every offset
    below it is finished: handled, skipped or dead-lettered), or None when none is known. The
    idempotency middleware records it in the partition's ledger.
    """

    async def prefetch(self, messages: Sequence[Message]) -> None:
        """Called with each fetched batch (all partitions), before any of its messages runs."""
        ...

    async def flush(self) -> None:
        """Called before partitions are committed on revoke and stop: finish deferred writes."""
        ...

    async def discard(self, partitions: Collection[TopicPartition]) -> None:
        """Called when partitions leave this consumer: drop what `prefetch` holds for them."""
        ...


class Middleware:
    """A middleware class with the options to build it with.

    Args:
        cls: A class (or any callable) taking the next handler first and returning a handler.
        *args: Further positional arguments for `cls`.
        **kwargs: Keyword arguments for `cls`.
    """

    __slots__ = ("args", "cls", "kwargs")

    def __init__(self, cls: Callable[..., Handler], *args: Any, **kwargs: Any) -> None:
        if not callable(cls):
            raise TypeError(f"Middleware needs a class or callable, got {cls!r}")
        self.cls = cls
        self.args = args
        self.kwargs = kwargs

    def __call__(self, next: Handler) -> Handler:
        return self.cls(next, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        name = getattr(self.cls, "__name__", repr(self.cls))
        options = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Middleware({', '.join([name, *options])})"


def build_stack(
    handler: Handler,
    layers: Iterable[Callable[[Handler], Handler]],
    batch_aware: list[BatchAware] | None = None,
) -> Handler:
    """Wrap `handler` so that the first of `layers` is the outermost.

    Args:
        handler: The innermost handler.
        layers: Middleware factories, outermost first.
        batch_aware: When given, every built layer that is `BatchAware` is appended to it.
    """
    for layer in reversed(list(layers)):
        handler = layer(handler)
        if batch_aware is not None and isinstance(handler, BatchAware):
            batch_aware.append(handler)
    return handler
