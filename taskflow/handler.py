"""Handlers: user functions adapted, once at registration, to the one shape taskflow calls.

Every handler, consumer or periodic, plain or wrapped in middleware, is called as
``await handler(job, ctx)`` where `job` is the `Message` (consumers) or the `Tick` (periodic tasks).
The user's function may ask for less: a decoded payload, the `Context`, both, or (periodic) nothing.
A plain `def` runs in a worker thread so it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, cast

from taskflow.codec import ALLOWED, Decoder, decoder_for
from taskflow.context import Context, Tick
from taskflow.exceptions import HandlerSignatureError
from taskflow.message import Message

__all__ = ["Handler", "Job", "consumer_handler", "handler_name", "periodic_handler"]

Job: TypeAlias = Message | Tick
"""What a handler is run for: a consumed message or a scheduled tick."""


class Handler(Protocol):
    """The shape taskflow calls, and the shape of every middleware's ``__call__``."""

    def __call__(self, job: Job, ctx: Context, /) -> Awaitable[None]: ...


_CONTEXT_NAMES = ("ctx", "context")


@dataclass(frozen=True, slots=True)
class _Shape:
    decode: Decoder | None
    ctx_keyword: str | None  # the name to pass ctx by, when it is keyword-only
    wants_ctx: bool
    is_async: bool


def handler_name(func: Callable[..., Any]) -> str:
    """The default worker name of a handler: its function name."""
    name = getattr(func, "__name__", None) or type(func).__name__
    return str(name)


def consumer_handler(func: Callable[..., Any]) -> Handler:
    """Adapt a consumer function ``(payload?, ctx?)`` to the handler shape.

    Raises:
        HandlerSignatureError: naming the function and what is allowed.
    """
    return _adapt(func, _inspect(func, with_payload=True))


def periodic_handler(func: Callable[..., Any]) -> Handler:
    """Adapt a periodic-task function ``(ctx?)`` to the handler shape.

    Raises:
        HandlerSignatureError: naming the function and what is allowed.
    """
    return _adapt(func, _inspect(func, with_payload=False))


def _inspect(func: Callable[..., Any], *, with_payload: bool) -> _Shape:
    where = _describe(func)
    if not callable(func):
        raise HandlerSignatureError(f"{where} is not callable")
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        raise HandlerSignatureError(f"{where} is a generator; a handler returns nothing")
    try:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func)
    except (NameError, TypeError, ValueError) as exc:
        raise HandlerSignatureError(f"cannot read the signature of {where}: {exc}") from exc
    decode, wants_ctx, ctx_keyword = None, False, None
    for param in signature.parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise HandlerSignatureError(f"{where} takes *args or **kwargs; {_rules(with_payload)}")
        if annotation is Context or (annotation is param.empty and param.name in _CONTEXT_NAMES):
            if wants_ctx:
                raise HandlerSignatureError(f"{where} asks for the Context twice")
            wants_ctx = True
            ctx_keyword = param.name if param.kind is param.KEYWORD_ONLY else None
            continue
        if param.default is not param.empty:
            continue  # an optional parameter of the user's own; leave it at its default
        if not with_payload or decode is not None or param.kind is param.KEYWORD_ONLY:
            raise HandlerSignatureError(
                f"{where} has an unexpected parameter {param.name!r}; {_rules(with_payload)}"
            )
        if wants_ctx:
            raise HandlerSignatureError(f"{where} must take the payload before the Context")
        if annotation is param.empty:
            raise HandlerSignatureError(
                f"{where}: annotate the payload parameter {param.name!r} with one of {ALLOWED}"
            )
        try:
            decode = decoder_for(annotation)
        except HandlerSignatureError as exc:
            raise HandlerSignatureError(f"{where}: {exc}") from None
    return _Shape(decode, ctx_keyword, wants_ctx, _is_async(func))


def _rules(with_payload: bool) -> str:
    if with_payload:
        return f"a consumer takes one payload parameter ({ALLOWED}) and optionally `ctx: Context`"
    return "a periodic task takes no parameters or only `ctx: Context`"


def _describe(func: Any) -> str:
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or repr(func)
    return f"handler {module}.{name}" if module else f"handler {name}"


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)  # noqa: B004 - a callable object's method
    return not inspect.isfunction(func) and inspect.iscoroutinefunction(call)


def _adapt(func: Callable[..., Any], shape: _Shape) -> Handler:
    target = func if shape.is_async else _in_thread(func)
    decode = shape.decode
    if shape.ctx_keyword is not None:
        name = shape.ctx_keyword

        async def call_keyword(job: Job, ctx: Context) -> None:
            args = (decode(cast(Message, job)),) if decode else ()
            await target(*args, **{name: ctx})

        return call_keyword
    if decode is not None and shape.wants_ctx:

        async def call_payload_ctx(job: Job, ctx: Context) -> None:
            await target(decode(cast(Message, job)), ctx)

        return call_payload_ctx
    if decode is not None:

        async def call_payload(job: Job, ctx: Context) -> None:
            await target(decode(cast(Message, job)))

        return call_payload
    if shape.wants_ctx:

        async def call_ctx(job: Job, ctx: Context) -> None:
            await target(ctx)

        return call_ctx

    async def call_bare(job: Job, ctx: Context) -> None:
        await target()

    return call_bare


def _in_thread(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(func, *args, **kwargs)

    return run
