"""Garbage in every setting: refused before anything starts, in one line, exit code 2.

Every ``TASKFLOW_*`` variable (found from the code: the App's options, the command's own
variables, the supervisor's and one per aiokafka option) and every flag of ``taskflow run`` and
``taskflow info`` gets huge numbers, inf, nan, negatives, empty text, unicode, 5,000 digits and
random text. The command runs in-process (its settings are resolved as in a real run; only the
workers are not started) and must exit 0 or 2, never with a traceback, with one ``Error:`` line
on 2 and no secret in what it prints. A handful of the same mistakes then go through real
``taskflow run`` children.
"""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskflow import App, cli, supervisor
from taskflow.brokers.kafka import _CONSUMER_PARAMS, _PRODUCER_PARAMS, kafka_variables
from taskflow.config import OPTIONS
from taskflow.dashboard.server import TOKEN_VARIABLE
from taskflow.exceptions import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.factory:create_app"  # a function: each call makes an App that reads the env
SECRET = "S3cretPw"
CHILD_TIMEOUT = 20.0


def variables() -> list[str]:
    """Every TASKFLOW_* variable taskflow reads, from the code that reads them."""
    names = {option.variable for option in OPTIONS}
    for command in (cli.run, cli.info):
        names |= {p.envvar for p in command.params if isinstance(p.envvar, str)}
    names |= {supervisor.PROCESS_INDEX_ENV, supervisor.SUPERVISOR_PID_ENV}
    names.add(TOKEN_VARIABLE)  # the dashboard's: any text is a token
    names |= set(kafka_variables())
    return sorted(names)


def flags(command: click.Command) -> list[str]:
    """The options of `command` that take a value."""
    return sorted(
        p.opts[0]
        for p in command.params
        if isinstance(p, click.Option) and not p.is_flag and p.opts[0].startswith("--")
    )


VARIABLES = variables()
KAFKA = set(kafka_variables())

_printable = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
garbage = st.one_of(
    st.sampled_from(
        [
            "inf", "-inf", "Infinity", "nan", "NaN", "1e309", "-1e309", "-1", "-5", "0", "-0",
            "", " ", "99999999999999999999", "9" * 5000, "1_000", "٣", "१२", "0x10", "1.5",
            "2.5e-3", "true", "auto", "None", "[]", "{}", "🙂", "é", "\t",
        ]
    ),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(_printable, max_size=40),
    st.builds(lambda a, b: f"{a}u:{SECRET}@{b}", st.sampled_from(["", "redis://", "x://"]),
              st.text(_printable, max_size=10).filter(lambda t: "@" not in t)),
    st.sampled_from(
        [
            f"user:{SECRET}@redis.internal:6379/0",
            f"kafkas://u:{SECRET}@k:9092",
            f"kafka://k:9092?password={SECRET}",
            f"redis://{SECRET}@host",
            f"memory://?token={SECRET}",
        ]
    ),
)  # fmt: skip


@pytest.fixture(scope="module")
def quiet() -> Iterator[None]:
    """`taskflow run` in-process, up to the point where the workers would start."""

    async def serve(app: App, app_ref: str | None = None) -> Any:
        return SimpleNamespace(clean=True, exit_code=None)

    with (
        mock.patch.object(cli, "serve", serve),
        mock.patch.object(cli, "_supervise", return_value=0),
        mock.patch.object(cli, "_configure_logging"),
        mock.patch.object(cli.otel, "configure_from_env", return_value=None),
        mock.patch.object(supervisor, "_label_logs"),
        mock.patch.object(supervisor, "_stop_when_the_supervisor_dies"),
    ):
        yield


def invoke(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.main, args, env=env, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args} {env} raised") from result.exception
    return result.exit_code, result.stdout, result.stderr


def hidden(value: str) -> str | None:
    """The secret `value` holds as a URL's password or secret parameter, if it holds one."""
    return SECRET if f"{SECRET}@" in value or f"={SECRET}" in value else None


def assert_refused_or_run(code: int, out: str, err: str, secret: str | None) -> None:
    if code == 1:  # a well-formed Redis URL to a host that is no Redis: not a bad value
        assert "cannot reach Redis at" in err, (out, err)
        return
    assert code in (0, 2), (code, out, err)
    assert "Traceback" not in out + err
    if code == 2:
        [line] = err.splitlines()
        assert line.startswith("Error: ")
        assert len(line) < 500
    if secret:
        assert secret not in out + err


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.sampled_from(["run", "info"]),
    variable=st.sampled_from(VARIABLES),
    value=garbage,
)
def test_garbage_in_any_variable_is_refused_in_one_line_or_runs(
    quiet: None, command: str, variable: str, value: str
) -> None:
    env = {variable: value}
    if variable in KAFKA:  # read for a Kafka broker only; nothing connects here
        env.setdefault("TASKFLOW_BROKER", "kafka://127.0.0.1:9")
    code, out, err = invoke([command, APP], env)

    assert_refused_or_run(code, out, err, hidden(value))
    # A secret-named Kafka option may hold anything: it is never shown, valid or not.
    if "PASSWORD" in variable and len(value.strip()) > 3:
        assert value.strip() not in out + err


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), command=st.sampled_from(["run", "info"]), value=garbage)
def test_garbage_in_any_flag_is_refused_in_one_line_or_runs(
    quiet: None, data: st.DataObject, command: str, value: str
) -> None:
    flag = data.draw(st.sampled_from(flags(getattr(cli, command))))
    code, out, err = invoke([command, APP, f"{flag}={value}"], {})

    assert_refused_or_run(code, out, err, hidden(value))


def test_every_variable_named_in_the_code_is_covered() -> None:
    named = set()
    for path in (ROOT / "taskflow").rglob("*.py"):
        named |= set(re.findall(r"TASKFLOW_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    prefixes = {"TASKFLOW_KAFKA_SASL_PLAIN"}  # "TASKFLOW_KAFKA_SASL_PLAIN_* variables"

    assert named - prefixes <= set(VARIABLES)
    assert {"TASKFLOW_COMMIT_INTERVAL", "TASKFLOW_PROCESSES", "TASKFLOW_PROCESSES_LIMIT"} <= set(
        VARIABLES
    )


# -- App(...) arguments and broker_options --------------------------------------------------

code_garbage = st.one_of(
    st.floats(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**40),
    st.just(10**5000),
    st.just(math.inf),
    st.text(_printable, max_size=20),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.just(object()),
)

NUMERIC_KAFKA_OPTIONS = sorted(
    name
    for name in (_CONSUMER_PARAMS | _PRODUCER_PARAMS)
    if name.endswith(("_ms", "_bytes", "_size"))
)


# The options that are also `App(...)` arguments (the Redis credentials come from the environment).
APP_ARGUMENTS = [o.name for o in OPTIONS if o.name in inspect.signature(App).parameters]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(APP_ARGUMENTS), value=code_garbage)
def test_a_bad_app_argument_raises_configuration_error(name: str, value: Any) -> None:
    try:
        App("garbage", **{name: value})
    except ConfigurationError as exc:
        message = str(exc)
    else:
        return
    assert name in message
    assert "\n" not in message


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NUMERIC_KAFKA_OPTIONS), value=code_garbage)
def test_a_bad_numeric_kafka_option_raises_configuration_error(name: str, value: Any) -> None:
    try:
        App("garbage", broker="kafka://127.0.0.1:9", broker_options={name: value})
    except ConfigurationError as exc:
        message = str(exc)
    else:  # accepted: a whole number Kafka can carry
        assert isinstance(value, int)
        assert not isinstance(value, bool)
        assert 0 <= value < 2**31
        return
    assert name in message


def test_the_numbers_of_app_arguments_are_finite_and_in_range() -> None:
    for arguments in (
        {"shutdown_timeout": math.inf},
        {"shutdown_timeout": math.nan},
        {"commit_interval": math.inf},
        {"commit_interval": 1e309},
        {"http_port": 10**5000},
    ):
        with pytest.raises(ConfigurationError, match=next(iter(arguments))):
            App("garbage", **arguments)  # type: ignore[arg-type]


# -- the named mistakes, through real `taskflow run` processes -------------------------------


def run_child(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {
        k: v
        for k, v in __import__("os").environ.items()
        if not k.startswith("TASKFLOW_") and k != "PYTHONPATH"
    }
    environ.update(env)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "taskflow", "run", "tests.apps.idle:app", *args],
        cwd=ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    return result, time.monotonic() - started


KAFKA_DOWN = {"TASKFLOW_BROKER": "kafka://127.0.0.1:1"}  # nothing listens: a start would fail 1


@pytest.mark.parametrize(
    ("env", "args", "names"),
    [
        ({"TASKFLOW_COMMIT_INTERVAL": "inf"}, (), "TASKFLOW_COMMIT_INTERVAL"),
        ({"TASKFLOW_SHUTDOWN_TIMEOUT": "inf"}, (), "TASKFLOW_SHUTDOWN_TIMEOUT"),
        ({"TASKFLOW_SHUTDOWN_TIMEOUT": "1e309"}, (), "TASKFLOW_SHUTDOWN_TIMEOUT"),
        ({"TASKFLOW_SHUTDOWN_TIMEOUT": "nan"}, (), "TASKFLOW_SHUTDOWN_TIMEOUT"),
        ({}, ("--shutdown-timeout", "inf"), "--shutdown-timeout"),
        (
            {**KAFKA_DOWN, "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS": "-5"},
            (),
            "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS",
        ),
        (
            {**KAFKA_DOWN, "TASKFLOW_KAFKA_FETCH_MAX_WAIT_MS": "-1"},
            (),
            "TASKFLOW_KAFKA_FETCH_MAX_WAIT_MS",
        ),
        (
            {**KAFKA_DOWN, "TASKFLOW_KAFKA_REQUEST_TIMEOUT_MS": "-5"},
            (),
            "TASKFLOW_KAFKA_REQUEST_TIMEOUT_MS",
        ),
        ({"TASKFLOW_PROCESS_INDEX": "9" * 5000}, (), "TASKFLOW_PROCESS_INDEX"),
        ({"TASKFLOW_PROCESSES": "100000"}, (), "TASKFLOW_PROCESSES"),
        ({}, ("--processes", "99999999999999999999"), "--processes"),
    ],
)
def test_a_named_mistake_exits_2_at_once_with_one_line(
    env: dict[str, str], args: tuple[str, ...], names: str
) -> None:
    result, took = run_child(*args, **env)

    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert names in line
    assert re.search(r"from -?\d+ to \d+", line), line  # the accepted range
    assert took < 10.0  # well under the time a start would take to give up on Kafka


def test_more_processes_than_the_default_limit_is_refused_and_the_limit_allows_them() -> None:
    over = supervisor.default_processes_limit() + 1

    refused, _ = run_child("--processes", str(over))
    allowed_then_refused, _ = run_child(
        "--processes", str(over), "--processes-limit", str(over), TASKFLOW_HTTP_PORT="x"
    )

    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert f"--processes {over} is more than {over - 1}" in line
    assert f"--processes-limit {over}" in line
    # Past the count check, the next mistake is the one reported: the limit let the count pass.
    assert allowed_then_refused.returncode == 2
    assert "TASKFLOW_HTTP_PORT" in allowed_then_refused.stderr


def test_the_process_limit_is_checked_in_the_supervisor_too() -> None:
    with pytest.raises(ConfigurationError, match="more than 2"):
        supervisor.Supervisor(lambda index: ["true"], 3, limit=2)
    with pytest.raises(ConfigurationError, match="from 1 to 4096"):
        supervisor.Supervisor(lambda index: ["true"], 1, limit=10**6)
