"""Middleware: one shape, a class built with the next handler that is itself a handler.

```python
class Timing:
    def __init__(self, app: Handler) -> None:
        self.app = app

    async def __call__(self, job: Job, ctx: Context) -> None:
        started = time.perf_counter()
        try:
            await self.app(job, ctx)
        finally:
            ctx.logger.info("%s took %.3fs", job, time.perf_counter() - started)

app = App("billing", middleware=[Middleware(Timing)])
```

The stack is built once, when the app starts: app-wide middleware outermost, in the order given,
then the registration's own, then the handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from taskflow.handler import Handler

__all__ = ["Middleware", "build_stack"]


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

    def __call__(self, app: Handler) -> Handler:
        return self.cls(app, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        name = getattr(self.cls, "__name__", repr(self.cls))
        options = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Middleware({', '.join([name, *options])})"


def build_stack(handler: Handler, layers: Iterable[Callable[[Handler], Handler]]) -> Handler:
    """Wrap `handler` so that the first of `layers` is the outermost."""
    for layer in reversed(list(layers)):
        handler = layer(handler)
    return handler
