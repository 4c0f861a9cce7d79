from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields
from datetime import timedelta
from typing import Any

import pytest

from taskflow.app import App
from taskflow.backoff import Backoff
from taskflow.brokers.memory import MemoryBroker
from taskflow.context import Context
from taskflow.exceptions import ConfigurationError, HandlerSignatureError, StateError
from taskflow.formats.msgpack_codec import MsgpackCodec
from taskflow.handler import Handler
from taskflow.message import Message
from taskflow.schedule import Cron, Interval


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("TASKFLOW_BROKER", "TASKFLOW_SHUTDOWN_TIMEOUT", "TASKFLOW_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def app() -> App:
    return App("billing")


async def on_order(order: dict, ctx: Context) -> None: ...


async def on_orders(orders: list[dict], ctx: Context) -> None: ...


async def on_refund(refund: dict) -> None: ...


async def cleanup(ctx: Context) -> None: ...


class Heartbeat:
    name = "heartbeat"

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# -- the app -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["billing", "billing-v2", "eu.billing_2"])
def test_an_app_name_of_letters_digits_dots_underscores_and_dashes_is_accepted(name: str) -> None:
    assert App(name).name == name


@pytest.mark.parametrize(
    "name", ["", "bill ing", "billing/eu", "billing\n", "é", 42, None], ids=repr
)
def test_an_app_name_with_other_characters_is_refused(name: Any) -> None:
    with pytest.raises(ConfigurationError, match="an app name uses letters, digits"):
        App(name)


def test_app_state_names_the_missing_attribute_and_where_to_set_it(app: App) -> None:
    with pytest.raises(AttributeError, match=r"app\.state has no 'db'; set it in a startup hook"):
        _ = app.state.db


def test_app_state_holds_what_startup_puts_there(app: App) -> None:
    app.state.db = "connection"

    assert app.state.db == "connection"


# -- consumers -----------------------------------------------------------------------------


def test_the_consume_decorator_returns_the_function_unchanged(app: App) -> None:
    assert app.consume("orders")(on_order) is on_order


def test_a_consumer_is_named_after_its_function_and_grouped_under_the_app_name(app: App) -> None:
    app.consume("orders")(on_order)

    [spec] = app.consumers
    assert (spec.name, spec.topics, spec.group, spec.func) == (
        "on_order",
        ("orders",),
        "billing",
        on_order,
    )


def test_a_consumer_may_read_several_topics_in_one_group(app: App) -> None:
    spec = app.add_consumer(on_order, "orders", "orders.eu", group="orders-service")

    assert spec.topics == ("orders", "orders.eu")
    assert spec.group == "orders-service"


def test_consumer_defaults_keep_order_per_partition_and_never_drop_a_message(app: App) -> None:
    spec = app.add_consumer(on_order, "orders")

    assert spec.ordering == "partition"
    assert spec.concurrency == 1
    assert spec.max_attempts is None
    assert spec.dead_letter is None
    assert spec.timeout is None
    assert spec.retry == Backoff()


@pytest.mark.parametrize(("ordering", "concurrency"), [("key", 16), ("none", 16)])
def test_concurrent_orderings_default_to_sixteen_at_once(
    app: App, ordering: Any, concurrency: int
) -> None:
    assert app.add_consumer(on_order, "orders", ordering=ordering).concurrency == concurrency


def test_a_consumer_with_a_dead_letter_topic_tries_five_times_by_default(app: App) -> None:
    spec = app.add_consumer(on_order, "orders", dead_letter="orders.DLQ")

    assert spec.max_attempts == 5


def test_max_attempts_may_be_set_with_a_dead_letter_topic(app: App) -> None:
    spec = app.add_consumer(on_order, "orders", dead_letter="orders.DLQ", max_attempts=2)

    assert spec.max_attempts == 2


def test_options_reach_the_registration(app: App) -> None:
    backoff = Backoff(initial=0.1, maximum=1)
    spec = app.add_consumer(
        on_order,
        "orders",
        ordering="key",
        concurrency=4,
        timeout=2,
        retry=backoff,
        reject_on=(KeyError,),
        max_buffered=10,
    )

    assert (spec.concurrency, spec.timeout, spec.retry, spec.reject_on, spec.max_buffered) == (
        4,
        2.0,
        backoff,
        (KeyError,),
        10,
    )


@pytest.mark.parametrize(
    ("topics", "options", "message"),
    [
        ((), {}, "needs at least one topic"),
        (("orders/eu",), {}, "a topic name uses letters"),
        (("orders\n",), {}, "a topic name uses letters"),
        ((".",), {}, "a topic name uses letters"),
        (("x" * 250,), {}, "a topic name uses letters"),
        ((42,), {}, "a topic name uses letters"),
        (("orders", "orders"), {}, "a topic is listed twice"),
        (("orders",), {"ordering": "fifo"}, "ordering is one of partition, key, none"),
        (("orders",), {"concurrency": 4}, "concurrency applies to ordering='key' or 'none'"),
        (("orders",), {"ordering": "key", "concurrency": 0}, "concurrency must be a whole number"),
        (("orders",), {"ordering": "none", "concurrency": 2.5}, "concurrency must be a whole"),
        (("orders",), {"timeout": 0}, "timeout must be a positive number"),
        (("orders",), {"timeout": -1}, "timeout must be a positive number"),
        (("orders",), {"timeout": "5"}, "timeout must be a positive number"),
        (("orders",), {"max_attempts": 3}, "max_attempts needs dead_letter="),
        (("orders",), {"dead_letter": "DLQ", "max_attempts": 0}, "max_attempts must be a whole"),
        (("orders",), {"dead_letter": "orders"}, "'orders' is also consumed here"),
        (("orders",), {"dead_letter": "bad topic"}, "dead_letter is a topic name"),
        (("orders",), {"reject_on": (KeyError, "boom")}, "reject_on takes exception classes"),
        (("orders",), {"reject_on": (KeyboardInterrupt,)}, "reject_on takes exception classes"),
        (("orders",), {"reject_on": KeyError}, "reject_on takes a sequence of exception classes"),
        (("orders",), {"retry": 5}, "retry is a Backoff"),
        (("orders",), {"group": ""}, "a consumer group is a non-empty string"),
        (("orders",), {"name": ""}, "a worker name is a non-empty string"),
        (("orders",), {"max_buffered": 0}, "max_buffered must be a whole number"),
        (("orders",), {"middleware": [42]}, "middleware 42 is not callable"),
    ],
    ids=repr,
)
def test_an_invalid_consumer_option_is_refused(
    app: App, topics: tuple[Any, ...], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.add_consumer(on_order, *topics, **options)

    assert app.consumers == []


def test_a_consumer_with_an_unusable_signature_is_refused(app: App) -> None:
    async def on_order(order: int) -> None: ...

    with pytest.raises(HandlerSignatureError, match="on_order: payload type int"):
        app.consume("orders")(on_order)


def test_two_workers_with_one_name_are_refused(app: App) -> None:
    app.consume("orders")(on_order)

    with pytest.raises(ConfigurationError, match="'on_order' is already registered; pass name="):
        app.consume("orders.eu")(on_order)


def test_name_tells_two_registrations_of_one_function_apart(app: App) -> None:
    app.consume("orders")(on_order)
    app.consume("orders.eu", name="on_order_eu")(on_order)

    assert app.worker_names() == ["on_order", "on_order_eu"]


# -- periodic tasks ------------------------------------------------------------------------


def test_the_every_decorator_returns_the_function_unchanged(app: App) -> None:
    assert app.every(minutes=5)(cleanup) is cleanup


@pytest.mark.parametrize(
    ("args", "kwargs", "period"),
    [
        ((timedelta(minutes=5),), {}, timedelta(minutes=5)),
        ((90,), {}, timedelta(seconds=90)),
        ((), {"minutes": 1, "seconds": 30}, timedelta(seconds=90)),
        ((), {"days": 1}, timedelta(days=1)),
    ],
    ids=["timedelta", "seconds", "unit keywords", "days"],
)
def test_every_accepts_each_form_of_period(
    app: App, args: tuple[Any, ...], kwargs: dict[str, Any], period: timedelta
) -> None:
    app.every(*args, **kwargs)(cleanup)

    assert app.schedules[0].schedule == Interval(period)


@pytest.mark.parametrize(
    "schedule",
    [Interval(timedelta(seconds=30)), timedelta(seconds=30), 30, 30.0],
    ids=repr,
)
def test_add_schedule_accepts_a_schedule_or_a_period(app: App, schedule: Any) -> None:
    spec = app.add_schedule(cleanup, schedule)

    assert spec.schedule == Interval(timedelta(seconds=30))
    assert (spec.name, spec.run_at_start, spec.jitter) == ("cleanup", False, timedelta(0))


def test_schedule_options_reach_the_registration(app: App) -> None:
    app.every(minutes=5, name="sweep", run_at_start=True, jitter=10, timeout=60)(cleanup)

    [spec] = app.schedules
    assert (spec.name, spec.run_at_start, spec.jitter, spec.timeout) == (
        "sweep",
        True,
        timedelta(seconds=10),
        60.0,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"jitter": 60}, "jitter .* must be shorter than the period"),
        ({"jitter": timedelta(minutes=2)}, "jitter .* must be shorter than the period"),
        ({"jitter": -1}, "jitter cannot be negative"),
        ({"jitter": "1s"}, "jitter is a timedelta or seconds"),
        ({"jitter": float("nan")}, "jitter is a finite number"),
        ({"run_at_start": 1}, "run_at_start is True or False"),
        ({"run_at_start": "yes"}, "run_at_start is True or False"),
        ({"timeout": 0}, "timeout must be a positive number"),
    ],
    ids=repr,
)
def test_an_invalid_schedule_option_is_refused(
    app: App, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.add_schedule(cleanup, 60, **options)

    assert app.schedules == []


@pytest.mark.parametrize("period", [0, -5, True, "5m"], ids=repr)
def test_an_invalid_period_is_refused_when_decorating(app: App, period: Any) -> None:
    with pytest.raises(ConfigurationError):
        app.every(period)


def test_a_periodic_task_taking_a_payload_is_refused(app: App) -> None:
    with pytest.raises(HandlerSignatureError, match="a periodic task takes no parameters"):
        app.every(seconds=10)(on_refund)


# -- workers and hooks ---------------------------------------------------------------------


def test_a_custom_worker_is_registered_under_its_name(app: App) -> None:
    worker = Heartbeat()

    assert app.add_worker(worker) is worker
    assert app.worker_names() == ["heartbeat"]


def test_an_object_without_start_and_stop_is_not_a_worker(app: App) -> None:
    class NoStop:
        name = "half"

        async def start(self) -> None: ...

    with pytest.raises(ConfigurationError, match="needs a name, async start\\(\\) and async stop"):
        app.add_worker(NoStop())  # type: ignore[arg-type]


def test_a_custom_worker_name_must_be_unique(app: App) -> None:
    app.every(seconds=5, name="heartbeat")(cleanup)

    with pytest.raises(ConfigurationError, match="'heartbeat' is already registered"):
        app.add_worker(Heartbeat())


def test_the_worker_decorator_registers_an_async_function(app: App) -> None:
    async def poller(ctx: Context) -> None: ...

    assert app.worker(poller) is poller
    assert [spec.name for spec in app.function_workers] == ["poller"]


def test_the_worker_decorator_needs_an_async_def(app: App) -> None:
    def poller(ctx: Context) -> None: ...

    with pytest.raises(ConfigurationError, match=r"@app\.worker needs an async def"):
        app.worker(poller)


def test_startup_and_shutdown_hooks_are_registered_in_order(app: App) -> None:
    async def first() -> None: ...

    async def second() -> None: ...

    assert app.on_startup(first) is first
    app.on_startup(second)
    app.on_shutdown(second)

    assert app.startup_hooks == [first, second]
    assert app.shutdown_hooks == [second]


@pytest.mark.parametrize("kind", ["on_startup", "on_shutdown"])
def test_a_hook_must_be_an_async_def(app: App, kind: str) -> None:
    def open_db() -> None: ...

    with pytest.raises(ConfigurationError, match=f"@app.{kind} needs an async def"):
        getattr(app, kind)(open_db)


# -- broker URL and environment ------------------------------------------------------------


def test_without_a_broker_the_memory_broker_is_used() -> None:
    assert App("billing").broker_url == "memory://"


def test_the_environment_names_the_broker_when_the_app_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLOW_BROKER", "memory://?partitions=2")

    assert App("billing").broker_url == "memory://?partitions=2"


def test_the_environment_wins_over_the_broker_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    # The deployment decides where the broker is; the code's argument is the default.
    monkeypatch.setenv("TASKFLOW_BROKER", "memory://?partitions=2")

    assert App("billing", broker="memory://?partitions=8").broker_url == "memory://?partitions=2"


def test_a_broker_object_gives_its_own_url() -> None:
    assert App("billing", broker=MemoryBroker(partitions=3)).broker_url == MemoryBroker(3).url


def test_the_environment_replaces_a_broker_object_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_BROKER", "memory://?partitions=2")

    assert App("billing", broker=MemoryBroker(partitions=3)).broker_url == "memory://?partitions=2"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:9092", "unsupported broker URL 'localhost:9092': use memory:// or kafka://"),
        ("redis://localhost", "unsupported broker URL 'redis://localhost'"),
        ("", "unsupported broker URL ''"),
        ("memory://?partitions=x", "partitions must be a positive whole number"),
    ],
)
def test_a_bad_broker_url_is_refused_when_the_app_is_made(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        App("billing", broker=url)


def test_the_shutdown_timeout_defaults_to_thirty_seconds() -> None:
    assert App("billing").shutdown_timeout == 30.0


def test_the_environment_sets_the_shutdown_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_SHUTDOWN_TIMEOUT", "12.5")

    assert App("billing").shutdown_timeout == 12.5


def test_the_environment_wins_over_the_shutdown_timeout_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLOW_SHUTDOWN_TIMEOUT", "12.5")

    assert App("billing", shutdown_timeout=3).shutdown_timeout == 12.5


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "soon",
            "TASKFLOW_SHUTDOWN_TIMEOUT must be a number of seconds from 0 to 86400, got 'soon'",
        ),
        ("-1", "TASKFLOW_SHUTDOWN_TIMEOUT must be a number of seconds from 0 to 86400, got '-1'"),
        ("nan", "TASKFLOW_SHUTDOWN_TIMEOUT must be a number of seconds from 0 to 86400, got 'nan'"),
    ],
)
def test_an_invalid_shutdown_timeout_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str, message: str
) -> None:
    monkeypatch.setenv("TASKFLOW_SHUTDOWN_TIMEOUT", raw)

    with pytest.raises(ConfigurationError, match=message):
        App("billing")


# -- running -------------------------------------------------------------------------------


async def test_publishing_before_the_app_runs_says_where_publishing_works(app: App) -> None:
    with pytest.raises(StateError, match=r"app 'billing' is not running: publish from a handler"):
        await app.publish("orders", {"id": 1})


async def test_publishing_while_running_reaches_the_broker(app: App) -> None:
    broker = MemoryBroker(partitions=1)
    await broker.start()
    app.attach(broker)

    await app.publish("orders", {"id": 1}, key="c1", headers={"trace": "t"})

    [message] = broker.topic("orders").logs[0]
    assert (message.value, message.key, message.headers) == (
        b'{"id":1}',
        b"c1",
        (("trace", b"t"), ("content-type", b"application/json")),
    )


@pytest.mark.parametrize(
    "register",
    [
        lambda app: app.consume("orders")(on_order),
        lambda app: app.every(seconds=5)(cleanup),
        lambda app: app.add_worker(Heartbeat()),
        lambda app: app.on_startup(cleanup),
        lambda app: app.on_shutdown(cleanup),
    ],
    ids=["consume", "every", "add_worker", "on_startup", "on_shutdown"],
)
def test_registering_while_the_app_runs_is_refused(app: App, register: Any) -> None:
    app.attach(MemoryBroker())

    with pytest.raises(StateError, match="app 'billing' is running: register everything before"):
        register(app)


def test_registering_works_again_once_the_app_has_stopped(app: App) -> None:
    app.attach(MemoryBroker())
    app.attach(None)

    app.consume("orders")(on_order)

    assert app.worker_names() == ["on_order"]


# -- decorators take the options of their add_* method ---------------------------------------


def _options(method: Callable[..., Any]) -> list[inspect.Parameter]:
    """The keyword options of a method, `**options` included, in order."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
    return [p for p in inspect.signature(method).parameters.values() if p.kind in kinds]


@pytest.mark.parametrize(
    ("decorator", "add", "own"),
    [
        (App.consume, App.add_consumer, ()),
        (App.every, App.add_schedule, ("seconds", "minutes", "hours", "days")),
        (App.cron, App.add_schedule, ("tz", "hash_id")),
        (App.worker, App.add_worker, ()),
    ],
    ids=["consume", "every", "cron", "worker"],
)
def test_a_decorator_takes_the_options_of_its_add_method_by_name_type_and_default(
    decorator: Callable[..., Any], add: Callable[..., Any], own: tuple[str, ...]
) -> None:
    """Besides the keywords that say when a periodic task runs, a decorator's options are those
    of its add_* method, spelled out so an editor and mypy know each one's type."""
    options = _options(decorator)

    assert [p.name for p in options[: len(own)]] == list(own)
    assert options[len(own) :] == _options(add)


def _passthrough(handler: Handler) -> Handler:
    return handler


def _message_key(message: Message) -> bytes | None:
    return message.key


# For each option of add_consumer, options that set it to something other than its default
# (with what it needs beside it), so a decorator that dropped it would register something else.
CONSUMER_OPTIONS: dict[str, dict[str, Any]] = {
    "group": {"group": "payments"},
    "name": {"name": "on_order_eu"},
    "ordering": {"ordering": "key"},
    "concurrency": {"ordering": "none", "concurrency": 4},
    "timeout": {"timeout": 2},
    "retry": {"retry": Backoff(initial=0.1, maximum=1)},
    "max_attempts": {"dead_letter": "orders.DLQ", "max_attempts": 2},
    "dead_letter": {"dead_letter": "orders.DLQ"},
    "reject_on": {"reject_on": (KeyError,)},
    "middleware": {"middleware": (_passthrough,)},
    "max_buffered": {"max_buffered": 10},
    "rate_limit": {"rate_limit": "100/s"},
    "rate_limit_scope": {"rate_limit": "100/s", "rate_limit_scope": "global"},
    "idempotent": {"idempotent": True},
    "idempotency_key": {"idempotent": True, "idempotency_key": _message_key},
    "idempotency_lease": {"idempotency_lease": 10},
    "idempotency_retention": {"idempotency_retention": 60},
    "on_store_error": {"on_store_error": "proceed"},
    "start": {"start": "latest"},
    "consumer_options": {"consumer_options": {"isolation_level": "read_committed"}},
    "batch": {"batch": 10},
    "batch_wait": {"batch": 10, "batch_wait": 1},
    "retry_topics": {"dead_letter": "orders.DLQ", "retry_topics": [10, 60]},
    "codec": {"codec": MsgpackCodec()},
}

SCHEDULE_OPTIONS: dict[str, dict[str, Any]] = {
    "name": {"name": "sweep"},
    "fleet": {"fleet": False},
    "catch_up": {"catch_up": "all"},
    "grace": {"grace": 60},
    "lease": {"lease": 10},
    "run_at_start": {"run_at_start": True},
    "jitter": {"jitter": 10},
    "timeout": {"timeout": 5},
    "middleware": {"middleware": (_passthrough,)},
    "idempotent": {"idempotent": True},
    "idempotency_lease": {"idempotency_lease": 10},
    "idempotency_retention": {"idempotency_retention": 60},
    "on_store_error": {"on_store_error": "proceed"},
}


def _registered(spec: Any) -> dict[str, Any]:
    """What a registration holds, but for the functions built from the handler on each call."""
    built = ("handler", "batch_decode")
    return {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in built}


def test_every_option_of_the_add_methods_has_a_case_below() -> None:
    assert list(CONSUMER_OPTIONS) == [p.name for p in _options(App.add_consumer)]
    assert list(SCHEDULE_OPTIONS) == [p.name for p in _options(App.add_schedule)]


@pytest.mark.parametrize("options", CONSUMER_OPTIONS.values(), ids=list(CONSUMER_OPTIONS))
def test_each_consume_option_registers_what_add_consumer_registers(
    options: dict[str, Any],
) -> None:
    decorated, added = App("billing"), App("billing")
    handler = on_orders if "batch" in options else on_order
    decorated.consume("orders", **options)(handler)
    expected = added.add_consumer(handler, "orders", **options)

    assert _registered(decorated.consumers[0]) == _registered(expected)
    assert _registered(expected) != _registered(App("billing").add_consumer(handler, "orders"))


@pytest.mark.parametrize("options", SCHEDULE_OPTIONS.values(), ids=list(SCHEDULE_OPTIONS))
def test_each_every_option_registers_what_add_schedule_registers(
    options: dict[str, Any],
) -> None:
    decorated, added = App("billing"), App("billing")
    decorated.every(minutes=1, **options)(cleanup)
    expected = added.add_schedule(cleanup, 60, **options)

    assert _registered(decorated.schedules[0]) == _registered(expected)
    assert _registered(expected) != _registered(App("billing").add_schedule(cleanup, 60))


@pytest.mark.parametrize("options", SCHEDULE_OPTIONS.values(), ids=list(SCHEDULE_OPTIONS))
def test_each_cron_option_registers_what_add_schedule_registers(
    options: dict[str, Any],
) -> None:
    decorated, added = App("billing"), App("billing")
    decorated.cron("H * * * *", tz="Europe/Berlin", **options)(cleanup)
    task = options.get("name", "cleanup")
    schedule = Cron("H * * * *", tz="Europe/Berlin", hash_id=f"billing:{task}")
    expected = added.add_schedule(cleanup, schedule, **options)

    assert _registered(decorated.schedules[0]) == _registered(expected)


# -- where a group starts, and a registration's own Kafka options ---------------------------


def test_start_is_kept_and_defaults_to_the_brokers_choice() -> None:
    app = App("billing")

    latest = app.add_consumer(on_order, "orders", start="latest")
    default = app.add_consumer(on_order, "refunds", name="on_refund")

    assert (latest.start, default.start) == ("latest", None)


def test_an_unknown_start_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        App("billing").add_consumer(on_order, "orders", start="beginning")  # type: ignore[arg-type]

    assert str(caught.value) == "start is 'earliest' or 'latest', got 'beginning'"


def test_consumer_options_are_kept_read_only() -> None:
    options = {"isolation_level": "read_committed", "max_partition_fetch_bytes": 65536}

    spec = App("billing").add_consumer(on_order, "orders", consumer_options=options)
    options["isolation_level"] = "read_uncommitted"

    assert dict(spec.consumer_options) == {
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 65536,
    }
    with pytest.raises(TypeError):
        spec.consumer_options["fetch_max_wait_ms"] = 10  # type: ignore[index]


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (
            {"isolation_levl": "read_committed"},
            "unknown Kafka consumer option 'isolation_levl'; did you mean 'isolation_level'?",
        ),
        (
            {"auto_offset_reset": "latest"},
            "consumer option 'auto_offset_reset' is set by taskflow: pass start='earliest' or "
            "'latest' to @app.consume",
        ),
        (
            {"group_id": "other"},
            "consumer option 'group_id' is set by taskflow: pass group= to @app.consume",
        ),
        (
            {"max_poll_records": 10},
            "consumer option 'max_poll_records' is set by taskflow: bound what is fetched ahead "
            "with max_buffered= on @app.consume, or in bytes with App(buffer_bytes=...)",
        ),
        (
            {"linger_ms": 5},
            "'linger_ms' is not a Kafka consumer option: pass it in App(broker_options=...), "
            "which gives it to the producer",
        ),
        (
            {"isolation_level": "dirty"},
            "Kafka option 'isolation_level' is one of read_uncommitted, read_committed, "
            "got 'dirty'",
        ),
        (
            {"session_timeout_ms": "10s"},
            "Kafka option 'session_timeout_ms' must be an integer from 1000 to 1800000 "
            "(milliseconds), got '10s'",
        ),
        (
            {"session_timeout_ms": 6000, "heartbeat_interval_ms": 6000},
            "Kafka option 'heartbeat_interval_ms' (6000) must be lower than "
            "'session_timeout_ms' (6000), typically a third of it",
        ),
        (
            ["isolation_level"],
            "consumer_options is a mapping of Kafka consumer option names to values, "
            "got ['isolation_level']",
        ),
    ],
    ids=lambda v: str(v)[:30],
)
def test_bad_consumer_options_are_refused_at_registration(options: Any, refusal: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        App("billing").add_consumer(on_order, "orders", consumer_options=options)

    assert str(caught.value) == refusal


# -- one topic, one group, one registration ---------------------------------------------------


def test_two_registrations_consuming_one_topic_in_one_group_are_refused() -> None:
    app = App("billing")
    app.add_consumer(on_order, "orders", "refunds")

    with pytest.raises(ConfigurationError) as caught:
        app.add_consumer(on_order, "invoices", "refunds", name="audit")

    assert str(caught.value) == (
        "consumers 'on_order' and 'audit' both consume 'refunds' in group 'billing', so each "
        "would get only some of its partitions; pass group= to give one a group of its own"
    )
    assert [spec.name for spec in app.consumers] == ["on_order"]


def test_a_topic_is_consumed_by_two_registrations_in_groups_of_their_own() -> None:
    app = App("billing")
    app.add_consumer(on_order, "orders")
    app.add_consumer(on_order, "orders", name="audit", group="billing-audit")
    app.add_consumer(on_order, "refunds", name="on_refund")  # another topic, the same group

    assert [(s.name, s.group) for s in app.consumers] == [
        ("on_order", "billing"),
        ("audit", "billing-audit"),
        ("on_refund", "billing"),
    ]


# -- the replica's identity -------------------------------------------------------------------


def test_an_instance_id_is_taken_from_the_app_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert App("billing").instance_id is None
    assert App("billing", instance_id="billing-7f9c").instance_id == "billing-7f9c"
    monkeypatch.setenv("TASKFLOW_INSTANCE_ID", "pod-2")
    assert App("billing", instance_id="billing-7f9c").instance_id == "pod-2"


@pytest.mark.parametrize("value", ["", "pod 1", "pod/1", "x" * 101, 7])
def test_an_instance_id_kafka_would_not_take_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^instance_id is this replica's stable name"):
        App("billing", instance_id=value)
