"""Settings: flag > TASKFLOW_* variable > App argument > default, errors that name their source,
and secrets that never show."""

from __future__ import annotations

import math
from typing import Any

import pytest

from taskflow.app import App
from taskflow.brokers.kafka import kafka_options_from_env
from taskflow.brokers.memory import MemoryBroker
from taskflow.config import OPTIONS, Settings, mask_url, shown
from taskflow.exceptions import ConfigurationError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for variable in [name for name in os.environ if name.startswith("TASKFLOW_")]:
        monkeypatch.delenv(variable)


def resolve(code: dict[str, Any] | None = None, **env: str) -> Settings:
    return Settings.resolve(code or {}, env, kafka_parser=kafka_options_from_env)


def table(settings: Settings) -> dict[str, tuple[str, str, str]]:
    """What `taskflow info` shows: name -> (value, source, origin)."""
    return {row.name: (row.shown, row.source, row.origin) for row in settings.rows()}


# -- precedence ------------------------------------------------------------------------------


def test_without_anything_each_option_has_its_default() -> None:
    settings = resolve()

    assert (settings.broker, settings.redis_url, settings.http_port) == (None, None, None)
    assert (settings.shutdown_timeout, settings.commit_interval) == (30.0, 1.0)
    assert settings.idempotent is False
    assert table(settings) == {
        "broker": ("memory://", "default", ""),
        "redis_url": ("none", "default", ""),
        "redis_username": ("none", "default", ""),
        "redis_password": ("none", "default", ""),
        "shutdown_timeout": ("30", "default", ""),
        "commit_interval": ("1", "default", ""),
        "buffer_bytes": ("67108864", "default", ""),
        "idempotent": ("false", "default", ""),
        "http_port": ("none", "default", ""),
        "http_host": ("0.0.0.0", "default", ""),
        "instance_id": ("none", "default", ""),
    }


# name, a value in code, the variable's text, its value, a flag's value (None: no flag)
LAYERS = [
    ("broker", "memory://?partitions=2", "kafka://k:9092", "kafka://k:9092", "memory://"),
    (
        "redis_url",
        "redis://code:6379/0",
        "redis://env:6379/1",
        "redis://env:6379/1",
        "redis://flag:6379/2",
    ),
    ("shutdown_timeout", 5, "12.5", 12.5, 60.0),
    ("commit_interval", 2.0, "0.25", 0.25, None),
    ("buffer_bytes", 32 * 2**20, "128MiB", 128 * 2**20, 16 * 2**20),
    ("idempotent", True, "false", False, None),
    ("http_port", 8000, "9100", 9100, 0),
    ("http_host", "127.0.0.1", "10.1.2.3", "10.1.2.3", "::1"),
    ("instance_id", "billing-0", "pod-7f9c", "pod-7f9c", "pod-b"),
]


@pytest.mark.parametrize(("name", "code", "text", "from_env", "flag"), LAYERS)
def test_a_flag_beats_the_variable_which_beats_the_code_which_beats_the_default(
    name: str, code: Any, text: str, from_env: Any, flag: Any
) -> None:
    option = next(o for o in OPTIONS if o.name == name)

    only_code = resolve({name: code})
    with_env = resolve({name: code}, **{option.variable: text})

    assert (getattr(only_code, name), only_code.sources[name]) == (code, "code")
    assert (getattr(with_env, name), with_env.sources[name]) == (from_env, "env")
    assert table(with_env)[name][1:] == ("env", option.variable)
    if flag is not None:
        with_flag = with_env.with_flags({name: flag})
        assert (getattr(with_flag, name), with_flag.sources[name]) == (flag, "flag")
        assert table(with_flag)[name][1:] == ("flag", option.flag)
        # A flag not given leaves the variable in charge.
        assert with_env.with_flags({name: None}).sources[name] == "env"


def test_an_empty_or_blank_variable_counts_as_unset() -> None:
    settings = resolve(
        {"redis_url": "redis://code:6379/0"},
        TASKFLOW_REDIS_URL="",
        TASKFLOW_HTTP_PORT="  ",
        TASKFLOW_SHUTDOWN_TIMEOUT="",
    )

    assert (settings.redis_url, settings.sources["redis_url"]) == ("redis://code:6379/0", "code")
    assert settings.http_port is None
    assert settings.shutdown_timeout == 30.0


def test_an_empty_redis_url_in_code_means_no_redis_unless_the_environment_names_one() -> None:
    assert resolve({"redis_url": ""}).redis_url == ""
    assert resolve({"redis_url": ""}, TASKFLOW_REDIS_URL="redis://r/0").redis_url == "redis://r/0"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("67108864", 64 * 2**20),
        ("64MiB", 64 * 2**20),
        ("64 mib", 64 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("500MB", 500_000_000),
        ("2048KiB", 2 * 2**20),
        ("1TiB", 2**40),
        ("  8MB ", 8_000_000),
    ],
)
def test_the_memory_budget_is_read_in_bytes_or_with_a_unit(text: str, size: int) -> None:
    settings = resolve(TASKFLOW_BUFFER_BYTES=text)

    assert (settings.buffer_bytes, settings.sources["buffer_bytes"]) == (size, "env")
    assert resolve().with_flags({"buffer_bytes": text}).buffer_bytes == size
    assert resolve({"buffer_bytes": text}).buffer_bytes == size


@pytest.mark.parametrize(
    "text", ["64M", "64 MiBs", "-64MiB", "1_000_000", "64MiB!", "inf", "nan", "1e9", " ", "MiB"]
)
def test_a_memory_budget_that_is_not_a_size_is_refused_in_one_sentence(text: str) -> None:
    rule = (
        "must be a size from 1MiB to 1TiB: bytes, or a number with a unit such as 64MiB, "
        "512MB or 1GiB, got "
    )
    with pytest.raises(ConfigurationError) as refused:
        resolve({"buffer_bytes": text})
    assert str(refused.value) == f"buffer_bytes {rule}{text!r}"
    if text.strip():  # a blank variable is unset
        with pytest.raises(ConfigurationError) as refused:
            resolve(TASKFLOW_BUFFER_BYTES=text)
        assert str(refused.value) == f"TASKFLOW_BUFFER_BYTES {rule}{text.strip()!r}"


@pytest.mark.parametrize("value", [2**20 - 1, 2**40 + 1, 0, -1, True, 64.0])
def test_a_memory_budget_out_of_range_is_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^--buffer-bytes must be a size from 1MiB"):
        resolve().with_flags({"buffer_bytes": value})
    if isinstance(value, int) and not isinstance(value, bool):
        with pytest.raises(ConfigurationError, match=r"^TASKFLOW_BUFFER_BYTES must be a size"):
            resolve(TASKFLOW_BUFFER_BYTES=str(value))


def test_only_options_with_a_flag_take_one() -> None:
    with pytest.raises(ConfigurationError, match="commit_interval has no CLI flag"):
        resolve().with_flags({"commit_interval": 3.0})


# -- errors name what to change ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        (
            "TASKFLOW_SHUTDOWN_TIMEOUT",
            "abc",
            "TASKFLOW_SHUTDOWN_TIMEOUT must be a number of seconds from 0 to 86400, got 'abc'",
        ),
        (
            "TASKFLOW_SHUTDOWN_TIMEOUT",
            "-1",
            "TASKFLOW_SHUTDOWN_TIMEOUT must be a number of seconds from 0 to 86400, got '-1'",
        ),
        (
            "TASKFLOW_COMMIT_INTERVAL",
            "nan",
            "TASKFLOW_COMMIT_INTERVAL must be a number of seconds from 0 to 3600, got 'nan'",
        ),
        (
            "TASKFLOW_HTTP_PORT",
            "nine",
            "TASKFLOW_HTTP_PORT must be a port number from 0 to 65535, got 'nine'",
        ),
        (
            "TASKFLOW_HTTP_PORT",
            "70000",
            "TASKFLOW_HTTP_PORT must be a port number from 0 to 65535, got '70000'",
        ),
        ("TASKFLOW_IDEMPOTENT", "maybe", "TASKFLOW_IDEMPOTENT must be true or false, got 'maybe'"),
        (
            "TASKFLOW_REDIS_URL",
            "localhost:6379",
            "TASKFLOW_REDIS_URL must be a redis://, rediss://, unix://, redis+cluster:// or "
            "redis+sentinel:// URL, got 'localhost:6379'",
        ),
        (
            "TASKFLOW_REDIS_URL",
            "http://:hunter2@host",
            "TASKFLOW_REDIS_URL must be a redis://, rediss://, unix://, redis+cluster:// or "
            "redis+sentinel:// URL, got 'http://:***@host'",
        ),
    ],
)
def test_a_bad_variable_is_refused_in_one_sentence_naming_it(
    variable: str, text: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve(**{variable: text})

    assert str(caught.value) == message


def test_a_bad_variable_is_refused_even_when_a_flag_would_win() -> None:
    with pytest.raises(ConfigurationError, match="TASKFLOW_HTTP_PORT must be a port number"):
        Settings.resolve({}, {"TASKFLOW_HTTP_PORT": "x"}).with_flags({"http_port": 8000})


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            {"shutdown_timeout": -1},
            "shutdown_timeout must be a number of seconds from 0 to 86400, got -1",
        ),
        (
            {"commit_interval": "1"},
            "commit_interval must be a number of seconds from 0 to 3600, got '1'",
        ),
        ({"idempotent": "yes"}, "idempotent is True or False, got 'yes'"),
        ({"http_port": 65536}, "http_port must be a port number from 0 to 65535"),
        ({"redis_url": 6379}, "redis_url is a Redis URL such as redis://localhost:6379/0"),
        ({"broker_options": ["acks"]}, "broker_options is a mapping of option names"),
    ],
)
def test_a_bad_argument_is_refused_naming_it(code: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve(code)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"shutdown_timeout": float("nan")},
            "--shutdown-timeout must be a number of seconds from 0 to 86400, got nan",
        ),
        (
            {"redis_url": "localhost:6379"},
            "--redis must be a redis://, rediss://, unix://, redis+cluster:// or "
            "redis+sentinel:// URL, got 'localhost:6379'",
        ),
        (
            {"http_port": 70000},
            "--http-port must be a port number from 0 to 65535 (0 picks a free one), got 70000",
        ),
    ],
)
def test_a_bad_flag_is_refused_naming_the_flag(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve().with_flags(flags)

    assert str(caught.value) == message


# -- Kafka options -----------------------------------------------------------------------------


def test_kafka_variables_win_over_broker_options_one_option_at_a_time() -> None:
    settings = resolve(
        {
            "broker": "kafka://k:9092",
            "broker_options": {"client_id": "code", "session_timeout_ms": 6000},
        },
        TASKFLOW_KAFKA_SESSION_TIMEOUT_MS="2000",
        TASKFLOW_KAFKA_SASL_PLAIN_PASSWORD="hunter2",
    )

    assert settings.broker_options == {
        "client_id": "code",
        "session_timeout_ms": 2000,
        "sasl_plain_password": "hunter2",
    }
    rows = table(settings)
    assert rows["broker_options.client_id"] == ("code", "code", "App(broker_options.client_id)")
    assert rows["broker_options.session_timeout_ms"] == (
        "2000",
        "env",
        "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS",
    )
    assert rows["broker_options.sasl_plain_password"] == (
        "***",
        "env",
        "TASKFLOW_KAFKA_SASL_PLAIN_PASSWORD",
    )


def test_kafka_variables_are_not_read_for_the_memory_broker() -> None:
    settings = resolve(TASKFLOW_KAFKA_SESSION_TIMEOUT_MS="not even a number")

    assert settings.broker_options == {}


def test_kafka_variables_apply_when_a_flag_makes_the_broker_kafka() -> None:
    settings = resolve(TASKFLOW_KAFKA_CLIENT_ID="ops").with_flags({"broker": "kafka://k:9092"})

    assert settings.broker_options == {"client_id": "ops"}
    assert settings.sources["broker_options.client_id"] == "env"


# -- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://app:hunter2@host:6379/0", "redis://app:***@host:6379/0"),
        ("redis://hunter2@host", "redis://***@host"),
        ("rediss://host:6380/0?password=hunter2&ssl_cert_reqs=none",
         "rediss://host:6380/0?password=***&ssl_cert_reqs=none"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("memory://", "memory://"),
        ("kafka://a:9092,b:9092", "kafka://a:9092,b:9092"),
    ],
)  # fmt: skip
def test_passwords_in_urls_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("broker_options.sasl_plain_password", "hunter2", "***"),
        ("broker_options.ssl_password", "hunter2", "***"),
        ("broker_options.sasl_oauth_token_provider", object(), "***"),
        ("broker_options.sasl_plain_username", "billing", "billing"),
        ("broker_options.ssl_context", __import__("ssl").create_default_context(), "<SSLContext>"),
        ("redis_url", "redis://:hunter2@r:6379/0", "redis://:***@r:6379/0"),
        ("broker", MemoryBroker(partitions=3), "memory://?partitions=3 (MemoryBroker)"),
        ("shutdown_timeout", 2.5, "2.5"),
    ],
)
def test_settings_are_shown_with_secrets_masked(name: str, value: Any, text: str) -> None:
    assert shown(name, value) == text


def test_no_secret_from_code_or_environment_reaches_the_rows() -> None:
    settings = resolve(
        {
            "broker": "kafka://k:9092",
            "broker_options": {"sasl_plain_password": "from-code"},
            "redis_url": "redis://:from-code@r:6379/0",
        },
        TASKFLOW_KAFKA_SSL_PASSWORD="from-env",
    )

    text = "\n".join(f"{r.name} {r.shown} {r.source} {r.origin}" for r in settings.rows())

    assert "from-code" not in text
    assert "from-env" not in text
    assert text.count("***") == 3


# -- the App -----------------------------------------------------------------------------------


def test_the_app_takes_the_environment_over_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLOW_COMMIT_INTERVAL", "0.5")
    monkeypatch.setenv("TASKFLOW_IDEMPOTENT", "true")
    monkeypatch.setenv("TASKFLOW_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("TASKFLOW_BUFFER_BYTES", "256MiB")

    app = App(
        "billing", commit_interval=2, idempotent=False, shutdown_timeout=3, buffer_bytes="1GiB"
    )

    assert (app.commit_interval, app.idempotent, app.redis_url) == (0.5, True, "redis://env:6379/0")
    assert app.shutdown_timeout == 3.0
    assert app.buffer_bytes == 256 * 2**20
    assert dict(app.settings.sources) == {
        "broker": "default",
        "redis_url": "env",
        "redis_username": "default",
        "redis_password": "default",
        "shutdown_timeout": "code",
        "commit_interval": "env",
        "buffer_bytes": "env",
        "idempotent": "env",
        "http_port": "default",
        "http_host": "default",
        "instance_id": "default",
    }


def test_the_environment_default_of_idempotent_reaches_each_registration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLOW_IDEMPOTENT", "1")
    app = App("billing")

    @app.consume("orders")
    async def on_order(order: dict) -> None: ...

    assert app.consumers[0].idempotent is True


def test_a_bad_broker_variable_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_BROKER", "nats://x")

    with pytest.raises(ConfigurationError, match=r"^TASKFLOW_BROKER: unsupported broker URL"):
        App("billing")


def test_what_code_sets_on_the_app_afterwards_is_code_and_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLOW_REDIS_URL", "redis://env:6379/0")
    app = App("billing")
    app.redis_url = "redis://later:6379/0"

    settings = app.settings
    assert (app.redis_url, settings.redis_url) == ("redis://later:6379/0",) * 2
    assert settings.sources["redis_url"] == "code"
    assert settings.sources["http_port"] == "default"
    assert settings.with_flags({"redis_url": "redis://flag/0"}).redis_url == "redis://flag/0"


def test_a_value_code_sets_on_the_app_afterwards_is_checked_naming_the_attribute() -> None:
    app = App("billing")

    with pytest.raises(ConfigurationError, match=r"^app.shutdown_timeout must be a number"):
        app.shutdown_timeout = -1
    with pytest.raises(ConfigurationError, match=r"^unsupported broker URL 'nats://x'"):
        app.broker = "nats://x"
    assert (app.shutdown_timeout, app.broker_url) == (30.0, "memory://")


def test_broker_options_code_sets_afterwards_keep_the_variables_over_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLOW_KAFKA_CLIENT_ID", "from-env")
    app = App("billing", broker="kafka://k:9092", broker_options={"linger_ms": 5})

    app.broker_options = {**app.broker_options, "acks": 1, "linger_ms": 7}

    assert dict(app.broker_options) == {"client_id": "from-env", "acks": 1, "linger_ms": 7}
    assert app.settings.sources["broker_options.client_id"] == "env"
    assert app.settings.sources["broker_options.linger_ms"] == "code"
    with pytest.raises(TypeError):
        app.broker_options["acks"] = 0  # type: ignore[index]


# -- one rule for seconds ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "5"], ids=repr)
def test_a_lease_grace_or_timeout_must_be_more_than_zero_and_finite(value: object) -> None:
    app = App("billing")

    async def job() -> None: ...

    for options in ({"lease": value}, {"grace": value}, {"timeout": value}):
        name = next(iter(options))
        with pytest.raises(ConfigurationError, match=rf"^{name} must be a positive number of sec"):
            app.add_schedule(job, 60, **options)  # type: ignore[arg-type]


def test_an_app_duration_may_be_zero_and_runs_to_its_documented_end() -> None:
    app = App("billing", shutdown_timeout=0, commit_interval=3600)

    assert (app.shutdown_timeout, app.commit_interval) == (0.0, 3600.0)
    with pytest.raises(ConfigurationError, match=r"^commit_interval .* from 0 to 3600, got 3601$"):
        App("billing", commit_interval=3601)


# -- Redis deployments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
        "rediss+cluster://user:pw@10.0.0.1:7000",
        "redis+cluster://node",
        "redis+sentinel://s1:26379,s2:26379/taskflow",
        "rediss+sentinel://:pw@s1/taskflow/3",
    ],
)
def test_cluster_and_sentinel_urls_are_taken_wherever_a_redis_url_is(url: str) -> None:
    assert resolve(TASKFLOW_REDIS_URL=url).redis_url == url
    assert resolve({"redis_url": url}).redis_url == url
    assert resolve().with_flags({"redis_url": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "TASKFLOW_REDIS_URL names no host, got 'redis+cluster://'"),
        (
            "redis+cluster://h:7000,:7001",
            "TASKFLOW_REDIS_URL has an empty host, got 'redis+cluster://h:7000,:7001'",
        ),
        (
            "redis+cluster://h:70000",
            "TASKFLOW_REDIS_URL has a bad port '70000' (1 to 65535), got 'redis+cluster://h:70000'",
        ),
        (
            "redis+cluster://:pw@h:7000/1",
            "TASKFLOW_REDIS_URL is a cluster URL, and a cluster has no database number: drop "
            "'/1', got 'redis+cluster://:***@h:7000/1'",
        ),
        (
            "redis+sentinel://s1:26379",
            "TASKFLOW_REDIS_URL names no Sentinel service: write "
            "redis+sentinel://host:port/SERVICE, got 'redis+sentinel://s1:26379'",
        ),
        (
            "redis+sentinel://s1/taskflow/x",
            "TASKFLOW_REDIS_URL has a database that is not a number: 'x', "
            "got 'redis+sentinel://s1/taskflow/x'",
        ),
    ],
)
def test_a_bad_cluster_or_sentinel_url_is_refused_in_one_sentence(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve(TASKFLOW_REDIS_URL=url)

    assert str(caught.value) == message
    with pytest.raises(ConfigurationError, match=r"^redis_url "):
        resolve({"redis_url": url})
    with pytest.raises(ConfigurationError, match=r"^--redis "):
        resolve().with_flags({"redis_url": url})


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis+cluster://user:pw@h1:7000,h2:7001", "redis+cluster://user:***@h1:7000,h2:7001"),
        (
            "rediss+sentinel://:pw@s1:26379,s2/taskflow/0",
            "rediss+sentinel://:***@s1:26379,s2/taskflow/0",
        ),
    ],
)
def test_passwords_in_cluster_and_sentinel_urls_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert table(resolve(TASKFLOW_REDIS_URL=url))["redis_url"][0] == masked


def test_the_redis_password_variable_is_never_shown() -> None:
    settings = resolve(TASKFLOW_REDIS_PASSWORD="hunter2", TASKFLOW_REDIS_USERNAME="worker")

    assert (settings.redis_password, settings.redis_username) == ("hunter2", "worker")
    assert table(settings)["redis_password"] == ("***", "env", "TASKFLOW_REDIS_PASSWORD")
    assert table(settings)["redis_username"] == ("worker", "env", "TASKFLOW_REDIS_USERNAME")
