"""Handlers: user functions adapted, once at registration, to the one shape taskflow calls.

Every handler, consumer or periodic, plain or wrapped in middleware, is called as
``await handler(job, ctx)`` where `job` is the `Message` (consumers) or the `Tick` (periodic tasks).
The user's function may ask for less: a decoded payload, the `Context`, both, or (periodic) nothing.
A batch consumer's job is a `Batch`, and its function takes the list of decoded payloads.
A plain `def` runs in a worker thread so it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, cast

from taskflow.batch import Batch
from taskflow.codec import ALLOWED, Decoder, decoder_for, feeding, identity
from taskflow.context import Context, Tick
from taskflow.exceptions import HandlerSignatureError, HandlerTimeout
from taskflow.message import Message
from taskflow.threads import HandlerThreads

__all__ = [
    "Handler",
    "Job",
    "batch_handler",
    "call_with_timeout",
    "consumer_handler",
    "handler_name",
    "ignores_ctx",
    "payload_type",
    "periodic_handler",
    "threads_of",
]

Job: TypeAlias = Message | Tick | Batch
"""What a handler is run for: a consumed message, a batch of them, or a scheduled tick."""


class Handler(Protocol):
    """The shape taskflow calls, and the shape of every middleware's ``__call__``."""

    def __call__(self, job: Job, ctx: Context, /) -> Awaitable[None]: ...


_CONTEXT_NAMES = ("ctx", "context")

Decoders: TypeAlias = Callable[[Any], Decoder]
"""The decoder of each payload annotation: `decoder_for` with a registration's codec."""


@dataclass(frozen=True, slots=True)
class _Shape:
    decode: Decoder | None
    ctx_keyword: str | None  # the name to pass ctx by, when it is keyword-only
    wants_ctx: bool
    is_async: bool


async def call_with_timeout(
    handler: Handler, job: Job, ctx: Context, timeout: float | None
) -> None:
    """Await `handler(job, ctx)`, cancelling it after `timeout` seconds (None: no limit).

    Raises:
        HandlerTimeout: when the timeout expired; a TimeoutError the handler raised itself
            passes through unchanged.
    """
    if timeout is None:
        await handler(job, ctx)
        return
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            await handler(job, ctx)
    except TimeoutError as exc:
        if scope.expired():
            raise HandlerTimeout(f"ran past its timeout of {timeout:g}s") from exc
        raise


def handler_name(func: Callable[..., Any]) -> str:
    """The default worker name of a handler: its function name."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None) or type(func).__name__
    return str(name)


def consumer_handler(func: Callable[..., Any], decoders: Decoders = decoder_for) -> Handler:
    """Adapt a consumer function ``(payload?, ctx?)`` to the handler shape; `decoders` gives
    the payload's decoder (default JSON).

    Raises:
        HandlerSignatureError: naming the function and what is allowed.
    """
    return _adapt(func, _inspect(func, with_payload=True, decoders=decoders))


def batch_handler(
    func: Callable[..., Any], decoders: Decoders = decoder_for
) -> tuple[Handler, Decoder]:
    """Adapt a batch consumer function ``(payloads: list[T], ctx?)`` to the handler shape.

    Returns:
        The handler, called with a `Batch`, and the decoder of one record to a `T`.

    Raises:
        HandlerSignatureError: naming the function and what is allowed.
    """
    shape = _inspect(func, with_payload=True, batch=True, decoders=decoders)
    assert shape.decode is not None
    return _adapt(func, _Shape(_payloads, *_rest(shape))), shape.decode


def _payloads(job: Message) -> list[Any]:
    return list(cast(Batch, job).payloads)


def _rest(shape: _Shape) -> tuple[str | None, bool, bool]:
    return shape.ctx_keyword, shape.wants_ctx, shape.is_async


def payload_type(func: Callable[..., Any], *, batch: bool = False) -> Any:
    """The payload annotation of a consumer function (of one record, for a batch consumer), read
    as registration reads it; None when it takes no payload.

    Raises:
        HandlerSignatureError: naming the function and what is allowed.
    """
    seen: list[Any] = []

    def note(annotation: Any) -> Decoder:
        seen.append(annotation)
        return identity

    _inspect(func, with_payload=True, batch=batch, decoders=note)
    return seen[0] if seen else None


def periodic_handler(func: Callable[..., Any]) -> Handler:
    """Adapt a periodic-task function ``(ctx?)`` to the handler shape.

    Raises:
        HandlerSignatureError: naming the function and what is allowed.
    """
    return _adapt(func, _inspect(func, with_payload=False))


def _inspect(
    func: Callable[..., Any],
    *,
    with_payload: bool,
    batch: bool = False,
    decoders: Decoders = decoder_for,
) -> _Shape:
    if not callable(func):
        raise HandlerSignatureError(
            f"handler {func!r} is not callable; a handler is an `async def` or `def` function, "
            "or an object with a `__call__` method"
        )
    where, code = _describe(func), _code_of(func)
    if inspect.isasyncgenfunction(code) or inspect.isgeneratorfunction(code):
        raise HandlerSignatureError(
            f"{where} is a generator; a handler is an `async def` or `def` that returns nothing"
        )
    try:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(code)
    except (NameError, TypeError, ValueError) as exc:
        raise HandlerSignatureError(
            f"cannot read the signature of {where}: {exc}; import the names its annotations use "
            "at module level (not only under TYPE_CHECKING)"
        ) from exc
    decode, wants_ctx, ctx_keyword = None, False, None
    skipped_positional = False  # an optional positional parameter left at its default
    for param in signature.parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise HandlerSignatureError(f"{where} takes *args or **kwargs; {_rules(with_payload)}")
        if annotation is Context or (annotation is param.empty and param.name in _CONTEXT_NAMES):
            if wants_ctx:
                raise HandlerSignatureError(
                    f"{where} asks for the Context twice; {_rules(with_payload)}"
                )
            wants_ctx = True
            if param.kind is not param.POSITIONAL_ONLY:
                ctx_keyword = param.name  # by name, so no optional parameter before it takes it
            elif skipped_positional:
                raise HandlerSignatureError(
                    f"{where} takes the Context positional-only after an optional parameter; "
                    f"move it before the optional ones or drop the '/'"
                )
            continue
        if param.default is not param.empty:
            # an optional parameter of the user's own; leave it at its default
            skipped_positional |= param.kind is not param.KEYWORD_ONLY
            continue
        if param.name in _CONTEXT_NAMES and (decode is not None or not with_payload):
            raise HandlerSignatureError(
                f"{where}: annotate the parameter {param.name!r} as `Context` "
                f"(from taskflow import Context) to receive the context"
            )
        if not with_payload or decode is not None or param.kind is param.KEYWORD_ONLY:
            raise HandlerSignatureError(
                f"{where} has an unexpected parameter {param.name!r}; {_rules(with_payload)}"
            )
        if wants_ctx:
            raise HandlerSignatureError(
                f"{where} must take the payload before the Context; {_rules(with_payload)}"
            )
        if annotation is param.empty:
            raise HandlerSignatureError(
                f"{where}: annotate the payload parameter {param.name!r} with one of {ALLOWED}"
            )
        try:
            decode = _element_decoder(annotation, decoders) if batch else decoders(annotation)
        except HandlerSignatureError as exc:
            raise HandlerSignatureError(f"{where}: {exc}") from None
    if batch and decode is None:
        raise HandlerSignatureError(
            f"{where} takes no payload; a batch handler takes the records as `list[T]` "
            f"(T one of {ALLOWED}) and optionally `ctx: Context`"
        )
    return _Shape(decode, ctx_keyword, wants_ctx, inspect.iscoroutinefunction(code))


def _element_decoder(annotation: Any, decoders: Decoders) -> Decoder:
    """The decoder of one record of a batch whose payload parameter is `annotation`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin not in (list, Sequence) or len(args) != 1:
        raise HandlerSignatureError(
            f"with batch= the payload parameter is `list[T]` or `Sequence[T]` (T one of "
            f"{ALLOWED}), got {getattr(annotation, '__name__', None) or annotation!r}"
        )
    return decoders(args[0])


def _rules(with_payload: bool) -> str:
    if with_payload:
        return f"a consumer takes one payload parameter ({ALLOWED}) and optionally `ctx: Context`"
    return "a periodic task takes no parameters or only `ctx: Context`"


def _code_of(func: Callable[..., Any]) -> Callable[..., Any]:
    """The function whose code and annotations say how `func` is called."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.isfunction(func) or inspect.ismethod(func) or isinstance(func, type):
        return func
    call = getattr(type(func), "__call__", None)  # noqa: B004 - a callable object's method
    return func if call is None else cast(Callable[..., Any], call)


def _describe(func: Any) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    owner = func if hasattr(func, "__qualname__") else type(func)
    module = getattr(owner, "__module__", None)
    name = owner.__qualname__ if owner is func else f"{owner.__qualname__} object"
    return f"handler {module}.{name}" if module else f"handler {name}"


def _adapt(func: Callable[..., Any], shape: _Shape) -> Handler:
    """Build the (job, ctx) caller. Each returns the user's awaitable rather than awaiting it,
    so a message costs one coroutine frame, the user's own. A plain `def` is called the same
    way, in a thread of its registration's own (`taskflow.threads`)."""
    caller = _caller(func, shape)
    if shape.is_async:
        return caller
    threaded = _InThread(caller, HandlerThreads(handler_name(func)))
    if ignores_ctx(caller):
        _ignoring_ctx(threaded)
    return threaded


def _caller(func: Callable[..., Any], shape: _Shape) -> Handler:
    target: Callable[..., Awaitable[None]] = func
    decode = shape.decode
    if shape.ctx_keyword is not None:
        name = shape.ctx_keyword

        def call_keyword(job: Job, ctx: Context) -> Awaitable[None]:
            args = (decode(cast(Message, job)),) if decode else ()
            return target(*args, **{name: ctx})

        return call_keyword
    if decode is not None and shape.wants_ctx:
        if decode is identity and shape.is_async:
            return cast(Handler, func)  # already (message, ctx): nothing to adapt

        def call_payload_ctx(job: Job, ctx: Context) -> Awaitable[None]:
            return target(decode(job), ctx)  # type: ignore[arg-type]

        return call_payload_ctx
    if decode is identity:

        def call_message(job: Job, ctx: Context) -> Awaitable[None]:
            return target(job)

        return _ignoring_ctx(call_message)
    if decode is not None:
        # Per message: the decode runs in the adapter, one call less (see `codec.feeding`).
        return _ignoring_ctx(cast(Handler, feeding(decode, target)))
    if shape.wants_ctx:

        def call_ctx(job: Job, ctx: Context) -> Awaitable[None]:
            return target(ctx)

        return call_ctx

    def call_bare(job: Job, ctx: Context) -> Awaitable[None]:
        return target()

    return _ignoring_ctx(call_bare)


def _ignoring_ctx(handler: Handler) -> Handler:
    handler.taskflow_ignores_ctx = True  # type: ignore[attr-defined]
    return handler


def ignores_ctx(handler: Handler) -> bool:
    """True when `handler` is an adapted user function that never looks at its Context.

    The consumer then need not build one per message. Any middleware hides the mark (it might
    read the Context), so a wrapped stack always gets a fresh Context.
    """
    return bool(getattr(handler, "taskflow_ignores_ctx", False))


class _InThread:
    """A plain `def` handler, called in one of its registration's threads."""

    def __init__(self, call: Handler, threads: HandlerThreads) -> None:
        self.call = call
        self.threads = threads

    async def __call__(self, job: Job, ctx: Context) -> None:
        worker = ctx.worker if ctx is not None else self.threads.name
        result: Any = await self.threads.run(worker, job, self.call, job, ctx)
        if inspect.isawaitable(result):  # a plain def wrapping a coroutine function
            await result


def threads_of(handler: Handler) -> HandlerThreads | None:
    """The threads of an adapted `def` handler; None for an `async def` one."""
    return handler.threads if isinstance(handler, _InThread) else None
