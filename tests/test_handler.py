# String annotations on purpose: handlers written this way must work like any others.
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from taskflow.app import App
from taskflow.context import Context, Tick, WorkerLogger
from taskflow.exceptions import HandlerSignatureError
from taskflow.handler import consumer_handler, handler_name, periodic_handler
from taskflow.message import Message

ORDER = Message(topic="orders", partition=0, offset=3, key=None, value=b'{"id": 7}')
TICK = Tick(task="cleanup", scheduled_at=datetime(2026, 1, 1, 12, 0, tzinfo=UTC))


@dataclasses.dataclass
class Order:
    id: int


@pytest.fixture
def ctx() -> Context:
    return Context(
        App("test"), "worker", WorkerLogger(logging.getLogger("test"), "worker"), asyncio.Event()
    )


# -- consumer shapes that work -------------------------------------------------------------


async def test_a_consumer_may_take_only_the_decoded_payload(ctx: Context) -> None:
    seen = []

    async def on_order(order: dict) -> None:
        seen.append(order)

    await consumer_handler(on_order)(ORDER, ctx)

    assert seen == [{"id": 7}]


async def test_a_consumer_may_take_the_payload_and_the_context(ctx: Context) -> None:
    seen = []

    async def on_order(order: Order, ctx: Context) -> None:
        seen.append((order, ctx))

    await consumer_handler(on_order)(ORDER, ctx)

    assert seen == [(Order(7), ctx)]


async def test_a_consumer_may_take_only_the_context(ctx: Context) -> None:
    seen = []

    async def on_order(ctx: Context) -> None:
        seen.append(ctx.message)

    await consumer_handler(on_order)(
        ORDER, Context(ctx.app, "w", ctx.logger, ctx.stopping, message=ORDER)
    )

    assert seen == [ORDER]


async def test_a_consumer_may_take_the_context_keyword_only(ctx: Context) -> None:
    seen = []

    async def on_order(order: bytes, *, context: Context) -> None:
        seen.append((order, context))

    await consumer_handler(on_order)(ORDER, ctx)

    assert seen == [(b'{"id": 7}', ctx)]


async def test_an_unannotated_parameter_named_ctx_gets_the_context(ctx: Context) -> None:
    seen = []

    async def on_order(order: bytes, ctx) -> None:
        seen.append(ctx)

    await consumer_handler(on_order)(ORDER, ctx)

    assert seen == [ctx]


async def test_an_unannotated_parameter_named_context_gets_the_context(ctx: Context) -> None:
    seen = []

    async def cleanup(context) -> None:
        seen.append(context)

    await periodic_handler(cleanup)(TICK, ctx)

    assert seen == [ctx]


async def test_parameters_with_defaults_are_left_at_their_defaults(ctx: Context) -> None:
    seen = []

    async def on_order(
        order: dict, ctx: Context, retries: int = 3, *, dry_run: bool = False
    ) -> None:
        seen.append((order, ctx, retries, dry_run))

    await consumer_handler(on_order)(ORDER, ctx)

    assert seen == [({"id": 7}, ctx, 3, False)]


async def test_the_context_after_an_optional_parameter_still_reaches_the_context(
    ctx: Context,
) -> None:
    seen = []

    def on_order(order: dict, verbose=False, ctx=None) -> None:
        seen.append((verbose, ctx))

    await consumer_handler(on_order)(ORDER, ctx)

    assert seen == [(False, ctx)]


async def test_a_callable_object_with_an_async_call_is_a_handler(ctx: Context) -> None:
    class OnOrder:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        async def __call__(self, order: dict, ctx: Context) -> None:
            self.seen.append((order, ctx))

    handler = OnOrder()

    await consumer_handler(handler)(ORDER, ctx)

    assert handler.seen == [({"id": 7}, ctx)]


async def test_a_bound_async_method_is_a_handler(ctx: Context) -> None:
    class Service:
        seen: list[Any] = []

        async def on_order(self, order: dict) -> None:
            self.seen.append(order)

    service = Service()

    await consumer_handler(service.on_order)(ORDER, ctx)

    assert service.seen == [{"id": 7}]


async def test_a_partial_of_an_async_function_is_a_handler(ctx: Context) -> None:
    seen = []

    async def on_order(tag: str, order: dict, ctx: Context) -> None:
        seen.append((tag, order))

    handler = functools.partial(on_order, "eu")

    await consumer_handler(handler)(ORDER, ctx)

    assert seen == [("eu", {"id": 7})]
    assert handler_name(handler) == "on_order"


async def test_a_plain_def_runs_off_the_event_loop_thread(ctx: Context) -> None:
    threads = []

    def on_order(order: dict, ctx: Context) -> None:
        threads.append(threading.get_ident())

    await consumer_handler(on_order)(ORDER, ctx)

    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


async def test_a_plain_def_returning_a_coroutine_has_it_awaited(ctx: Context) -> None:
    seen = []

    async def work(order: dict) -> None:
        seen.append(order)

    @functools.wraps(work)
    def wrapper(order: dict) -> Any:
        return work(order)

    await consumer_handler(wrapper)(ORDER, ctx)

    assert seen == [{"id": 7}]


async def test_an_exception_from_the_user_function_reaches_the_caller(ctx: Context) -> None:
    async def on_order(order: dict) -> None:
        raise LookupError("no such customer")

    with pytest.raises(LookupError, match="no such customer"):
        await consumer_handler(on_order)(ORDER, ctx)


# -- consumer shapes that are refused ------------------------------------------------------


async def takes_args(*orders: dict) -> None: ...


async def takes_kwargs(order: dict, **extra: Any) -> None: ...


async def two_payloads(order: dict, other: dict) -> None: ...


async def unannotated_payload(order) -> None: ...


async def unsupported_payload(order: int) -> None: ...


async def ctx_first(ctx: Context, order: dict) -> None: ...


async def keyword_only_payload(*, order: dict) -> None: ...


async def ctx_twice(ctx: Context, context: Context) -> None: ...


async def unresolvable(order: NotImportedAnywhere) -> None: ...  # noqa: F821


def generator(order: dict) -> Iterator[None]:
    yield


async def async_generator(order: dict) -> AsyncIterator[None]:
    yield


@pytest.mark.parametrize(
    ("func", "problem"),
    [
        (takes_args, r"takes \*args or \*\*kwargs; a consumer takes one payload parameter"),
        (takes_kwargs, r"takes \*args or \*\*kwargs; a consumer takes one payload parameter"),
        (two_payloads, "unexpected parameter 'other'; a consumer takes one payload parameter"),
        (keyword_only_payload, "unexpected parameter 'order'; a consumer takes one payload"),
        (unannotated_payload, "annotate the payload parameter 'order' with one of Message, bytes"),
        (unsupported_payload, "payload type int is not supported; use Message, bytes"),
        (ctx_first, "must take the payload before the Context"),
        (ctx_twice, "asks for the Context twice"),
        (generator, "is a generator; a handler is an `async def` or `def`"),
        (async_generator, "is a generator; a handler is an `async def` or `def`"),
        (unresolvable, "NotImportedAnywhere.*import the names its annotations use"),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_a_consumer_with_an_unusable_signature_is_refused_by_name(func: Any, problem: str) -> None:
    with pytest.raises(HandlerSignatureError, match=problem) as caught:
        consumer_handler(func)

    assert f"handler {__name__}.{func.__name__}" in str(caught.value)


def test_a_callable_object_whose_call_is_a_generator_is_refused() -> None:
    class Stream:
        async def __call__(self, order: dict) -> AsyncIterator[None]:
            yield

    with pytest.raises(HandlerSignatureError, match=r"Stream object is a generator"):
        consumer_handler(Stream())


@pytest.mark.parametrize("thing", [42, "on_order", None], ids=repr)
def test_something_that_is_not_callable_is_refused(thing: Any) -> None:
    with pytest.raises(
        HandlerSignatureError, match=f"handler {thing!r} is not callable; a handler"
    ):
        consumer_handler(thing)


def test_a_positional_only_context_after_an_optional_parameter_is_refused() -> None:
    async def on_order(order: dict, verbose=False, ctx=None, /) -> None: ...

    with pytest.raises(HandlerSignatureError, match="positional-only after an optional parameter"):
        consumer_handler(on_order)


# -- periodic shapes -----------------------------------------------------------------------


async def test_a_periodic_task_may_take_nothing(ctx: Context) -> None:
    runs = []

    async def cleanup() -> None:
        runs.append("ran")

    await periodic_handler(cleanup)(TICK, ctx)

    assert runs == ["ran"]


async def test_a_periodic_task_may_take_the_context(ctx: Context) -> None:
    seen = []

    async def cleanup(ctx: Context) -> None:
        seen.append(ctx)

    await periodic_handler(cleanup)(TICK, ctx)

    assert seen == [ctx]


async def test_a_periodic_task_may_take_the_context_keyword_only(ctx: Context) -> None:
    seen = []

    async def cleanup(*, ctx: Context, batch: int = 10) -> None:
        seen.append((ctx, batch))

    await periodic_handler(cleanup)(TICK, ctx)

    assert seen == [(ctx, 10)]


async def test_a_plain_def_periodic_task_runs_off_the_event_loop_thread(ctx: Context) -> None:
    threads = []

    def cleanup(ctx: Context) -> None:
        threads.append(threading.get_ident())

    await periodic_handler(cleanup)(TICK, ctx)

    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


async def periodic_with_payload(order: dict) -> None: ...


def test_a_periodic_task_with_a_payload_parameter_is_refused() -> None:
    with pytest.raises(HandlerSignatureError, match="periodic_with_payload") as caught:
        periodic_handler(periodic_with_payload)

    assert "unexpected parameter 'order'; a periodic task takes no parameters or only" in str(
        caught.value
    )


def test_a_periodic_task_taking_args_is_refused() -> None:
    async def cleanup(*args: Any) -> None: ...

    with pytest.raises(HandlerSignatureError, match=r"takes \*args.*a periodic task takes"):
        periodic_handler(cleanup)


def test_a_ctx_parameter_with_another_annotation_says_to_annotate_it_context() -> None:
    async def handler(order: dict, ctx: object) -> None: ...

    with pytest.raises(HandlerSignatureError, match="annotate the parameter 'ctx' as `Context`"):
        consumer_handler(handler)


def test_a_periodic_ctx_parameter_with_another_annotation_says_to_annotate_it() -> None:
    async def job(ctx: int) -> None: ...

    with pytest.raises(HandlerSignatureError, match="annotate the parameter 'ctx' as `Context`"):
        periodic_handler(job)
