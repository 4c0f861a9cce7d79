"""The command line, run as a real process: bad input, `info`, signals, draining, log formats,
settings from flags and the environment, `trigger` and `send`.

Every test starts `python -m taskflow` (once the `taskflow` console script) from the repository
root with the apps in `tests/apps`, and waits for log lines rather than for time to pass.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis

from tests._process import wait_until
from tests._redis import REDIS_URL

REPO = Path(__file__).resolve().parent.parent
TASKFLOW = [sys.executable, "-m", "taskflow"]
PROCESS_TIMEOUT = 20.0  # no subprocess may outlive this
LOG_TIMEOUT = 10.0  # how long to wait for an expected log line
IDLE = "tests.apps.idle:app"


def _env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "PYTHONPATH" and not name.startswith("TASKFLOW_")
    }
    env.update(PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1", **extra)
    return env


def taskflow(
    *args: str, command: list[str] = TASKFLOW, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a taskflow command to completion, with extra environment variables."""
    return subprocess.run(
        [*command, *args],
        cwd=REPO,
        env=_env(**env),
        input=stdin,
        capture_output=True,
        encoding="utf-8",
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


class Running:
    """A `taskflow run` process; a thread reads its stderr lines as they come."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*TASKFLOW, "run", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            encoding="utf-8",
        )
        self.lines: list[str] = []
        self._unread: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._unread.put(line.rstrip("\n"))
        self._unread.put(None)

    def wait_for(self, *wanted: str, timeout: float = LOG_TIMEOUT) -> None:
        """Wait until each of `wanted` has appeared in stderr; fail after `timeout` or at EOF."""
        missing = [w for w in wanted if not any(w in line for line in self.lines)]
        deadline = time.monotonic() + timeout
        while missing and (left := deadline - time.monotonic()) > 0:
            try:
                line = self._unread.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._unread.put(None)
                break
            self.lines.append(line)
            missing = [w for w in missing if w not in line]
        if missing:
            raise AssertionError(
                f"no line with {missing} within {timeout}s; stderr so far:\n{self.log}"
            )

    def send(self, sig: signal.Signals) -> float:
        """Send `sig`; return when, on the monotonic clock."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        return sent

    def exit(self, timeout: float = PROCESS_TIMEOUT) -> int:
        """Wait for the process to end and read the rest of stderr; return the exit code."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        while (line := self._unread.get()) is not None:
            self.lines.append(line)
        return code

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        """Kill the process if it still runs, and release its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(PROCESS_TIMEOUT)
        self._reader.join(PROCESS_TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def start() -> Iterator[Callable[..., Running]]:
    """Start `taskflow run ARGS` with extra environment variables; killed after the test."""
    started: list[Running] = []

    def start(*args: str, **env: str) -> Running:
        process = Running(*args, env=_env(**env))
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def _marks(path: Path) -> dict[str, float]:
    """The handler's `started`/`finished` marks and their times."""
    if not path.exists():
        return {}
    return {
        event: float(t)
        for event, t in (line.split() for line in path.read_text().split("\n") if line)
    }


# -- bad input: one line, exit 2, a traceback only with --debug ------------------------------

BAD_INPUT = [
    pytest.param(["run", "tests.apps.idle"], "expected module:attribute", id="no-colon"),
    pytest.param(
        ["run", "tests.apps.nosuch:app"],
        "cannot import module 'tests.apps.nosuch' from ",
        id="no-module",
    ),
    pytest.param(
        ["run", "tests.apps.raises:app"],
        "importing 'tests.apps.raises' failed: RuntimeError: boom at import",
        id="import-raises",
    ),
    pytest.param(
        ["run", "tests.apps.idle:nope"],
        "module 'tests.apps.idle' has no attribute 'nope'",
        id="no-attribute",
    ),
    pytest.param(
        ["run", "tests.apps.notapp:app"],
        "tests.apps.notapp:app is an int, not a taskflow App",
        id="not-an-app",
    ),
    pytest.param(
        ["run", "tests.apps.factory:broken"],
        "calling tests.apps.factory:broken() failed: RuntimeError: the factory is broken",
        id="factory-raises",
    ),
    pytest.param(
        ["run", "tests.apps.factory:not_an_app"],
        "tests.apps.factory:not_an_app() returned a dict, not a taskflow App",
        id="factory-returns-dict",
    ),
    pytest.param(
        ["run", IDLE, "--broker", "nats://x"],
        "unsupported broker URL 'nats://x'",
        id="broker-scheme",
    ),
    pytest.param(
        ["run", IDLE, "--broker", "memory://?partitions=0"],
        "partitions must be a positive whole number",
        id="broker-partitions",
    ),
    pytest.param(
        ["run", IDLE, "--broker", "memory://["], "malformed broker URL", id="broker-malformed"
    ),
    pytest.param(["run", IDLE, "--broker", "kafka://"], "no Kafka servers", id="broker-kafka"),
    pytest.param(
        ["run", IDLE, "--instance-id", "pod 1"],
        "--instance-id is this replica's stable name (such as the pod name): letters, digits, "
        "'.', '_' and '-', at most 100, got 'pod 1'",
        id="instance-id-space",
    ),
    pytest.param(
        ["run", IDLE, "--shutdown-timeout", "-1"],
        "--shutdown-timeout must be a number of seconds from 0 to 86400, got '-1'",
        id="timeout-negative",
    ),
    pytest.param(
        ["run", IDLE, "--shutdown-timeout", "nan"],
        "--shutdown-timeout must be a number of seconds from 0 to 86400, got 'nan'",
        id="timeout-nan",
    ),
    pytest.param(
        ["info", "tests.apps.factory:broken"], "calling tests.apps.factory:broken()", id="info"
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    result = taskflow(*args)

    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert message in line


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_debug_adds_the_traceback(args: list[str], message: str) -> None:
    result = taskflow(*args, "--debug")

    assert result.returncode == 2
    assert "Traceback (most recent call last):" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("Error: ")
    assert message in last


@pytest.mark.parametrize(
    ("mistake", "message"),
    [("cron", "cron expression"), ("zone", "Europe/Atlantis")],
)
def test_a_bad_cron_expression_or_time_zone_is_one_line_and_exit_code_2(
    mistake: str, message: str
) -> None:
    result = taskflow("run", "tests.apps.bad_schedules:app", BAD_SCHEDULE=mistake)

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert message in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shutdown-timeout", "soon"], "--shutdown-timeout must be a number of seconds"),
        (["--log-format", "xml"], "Invalid value for '--log-format'"),
        (["--log-level", "LOUD"], "Invalid value for '--log-level'"),
        (["--app-dir", "/no/such/dir"], "Invalid value for '--app-dir'"),
        (["--http-port", "70000"], "--http-port must be a port number from 0 to 65535"),
        (["--http-port", "web"], "--http-port must be a port number from 0 to 65535"),
        (["--buffer-bytes", "64M"], "--buffer-bytes must be a size from 1MiB to 1TiB"),
    ],
)
def test_bad_option_values_are_one_line_usage_errors(args: list[str], message: str) -> None:
    result = taskflow("run", IDLE, *args)

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert message in line


def test_a_missing_import_inside_the_app_is_not_called_a_missing_app(tmp_path: Path) -> None:
    # `reports` imports `report`, a prefix of its own name: the error names the real culprit.
    (tmp_path / "reports.py").write_text("import report\n")

    result = taskflow("run", "reports:app", "--app-dir", str(tmp_path))

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "Error: importing 'reports' failed: No module named 'report'"
    ]


def test_an_unreachable_broker_ends_with_one_error_and_exit_code_1() -> None:
    result = taskflow("run", IDLE, "--broker", "kafka://127.0.0.1:1")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "ERROR taskflow app idle did not run: cannot reach Kafka" in result.stderr


# -- finding the app -------------------------------------------------------------------------


def test_app_dir_makes_a_module_elsewhere_importable(tmp_path: Path) -> None:
    (tmp_path / "elsewhere_app.py").write_text(
        "from taskflow import App\n\napp = App('elsewhere')\n"
    )

    found = taskflow("info", "elsewhere_app:app", "--app-dir", str(tmp_path))
    not_found = taskflow("info", "elsewhere_app:app")

    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("app elsewhere ")
    assert not_found.returncode == 2
    assert "cannot import module 'elsewhere_app'" in not_found.stderr


def test_info_lists_every_worker() -> None:
    result = taskflow("info", "tests.apps.workers:app")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header, *rows = lines[: lines.index("settings")]
    assert header == "app kinds  broker memory://  shutdown timeout 30s"
    consumer, periodic, function_worker, custom = (row.split() for row in rows)
    assert consumer == [
        "consumer", "on_money", "topics", "orders,", "refunds", "group", "billing",
        "ordering", "partition",
    ]  # fmt: skip
    assert periodic[:3] == ["periodic", "report", "every"]
    assert periodic[3:5] == ["15m", "next"]
    next_run = datetime.fromisoformat(periodic[5])
    now = datetime.now(UTC)
    assert now - timedelta(seconds=5) < next_run <= now + timedelta(minutes=15)
    assert next_run.minute % 15 == 0
    assert next_run.second == 0
    assert function_worker == ["worker", "watcher"]
    assert custom == ["worker", "heartbeat", "(Heartbeat)"]


def test_info_accepts_a_factory_and_a_broker() -> None:
    result = taskflow("info", "tests.apps.factory:create_app", "--broker", "memory://?partitions=2")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("app made  broker memory://?partitions=2 ")
    assert "  periodic  tidy  every 5m  next " in result.stdout


def test_help_and_version() -> None:
    helped = taskflow("--help")
    version = taskflow("--version")

    assert helped.returncode == 0
    assert helped.stdout.startswith("Usage: taskflow [OPTIONS] COMMAND [ARGS]...")
    for command in ("run", "info", "trigger", "send"):
        assert f"  {command} " in helped.stdout
    assert version.returncode == 0
    assert version.stdout.strip() == "taskflow, version 0.1.0"


def test_the_console_script_works() -> None:
    script = Path(sys.executable).with_name("taskflow")

    result = taskflow("info", IDLE, command=[str(script)])

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("app idle ")


# -- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_an_idle_app_at_once(
    start: Callable[..., Running], sig: signal.Signals
) -> None:
    app = start(IDLE)
    app.wait_for(
        "app idle running 2 worker(s): listen, hourly",
        "scheduled every 1h",
        "consuming silence as group listeners",
    )

    sent = app.send(sig)
    code = app.exit()
    took = time.monotonic() - sent

    assert code == 0, app.log
    assert took < 1.0, f"{sig.name} to exit took {took:.2f}s"
    assert f"stop requested ({sig.name})" in app.log
    assert app.lines[-1].endswith("app idle stopped cleanly")
    assert "Traceback" not in app.log


def test_a_busy_handler_finishes_before_the_app_exits(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    app = start("tests.apps.slow:app", TASKFLOW_TEST_MARKS=str(marks), TASKFLOW_TEST_SECONDS="1")
    app.wait_for("[on_job] handling job 1")

    sent_at = time.time()
    app.send(signal.SIGTERM)
    code = app.exit()

    assert code == 0, app.log
    times = _marks(marks)
    assert times["started"] < sent_at < times["finished"]
    assert app.lines[-1].endswith("app slow stopped cleanly")
    assert "cancel" not in app.log


def test_a_handler_past_the_shutdown_timeout_is_cancelled_and_named(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    app = start(
        "tests.apps.slow:app",
        "--shutdown-timeout",
        "0.5",
        TASKFLOW_TEST_MARKS=str(marks),
        TASKFLOW_TEST_SECONDS="30",
    )
    app.wait_for("[on_job] handling job 1")

    sent = app.send(signal.SIGTERM)
    code = app.exit()
    took = time.monotonic() - sent

    assert code == 1, app.log
    assert 0.5 <= took < 10
    assert "finished" not in _marks(marks)
    assert "cancelled handler on_job for jobs[0]@0" in app.log
    assert app.lines[-1].endswith("app slow stopped after cancelling on_job")


def test_a_second_signal_cancels_the_drain_at_once(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    app = start(
        "tests.apps.slow:app",
        "--shutdown-timeout",
        "20",
        TASKFLOW_TEST_MARKS=str(tmp_path / "marks"),
        TASKFLOW_TEST_SECONDS="30",
    )
    app.wait_for("[on_job] handling job 1")

    first = app.send(signal.SIGTERM)
    app.wait_for("stop requested (SIGTERM)")
    app.send(signal.SIGTERM)
    code = app.exit()
    took = time.monotonic() - first

    assert code == 1, app.log
    assert took < 10, f"exit took {took:.1f}s of a 20s shutdown timeout"
    assert "second stop request (SIGTERM): cancelling now" in app.log
    assert "cancelled handler on_job for jobs[0]@0" in app.log


def test_a_signal_interrupts_a_hanging_startup_hook(start: Callable[..., Running]) -> None:
    app = start("tests.apps.hanging:app", TASKFLOW_TEST_HANG="startup")
    app.wait_for("hanging in startup")

    sent = app.send(signal.SIGTERM)
    code = app.exit()
    took = time.monotonic() - sent

    assert code == 1, app.log
    assert took < 5
    assert "SIGTERM during start-up: interrupting it" in app.log
    assert "did not run: start-up interrupted: SIGTERM came before it was ready" in app.lines[-1]
    assert "Traceback" not in app.log


def test_a_second_signal_ends_a_hanging_shutdown_hook(start: Callable[..., Running]) -> None:
    app = start("tests.apps.hanging:app", TASKFLOW_TEST_HANG="shutdown")
    app.wait_for("app hanging running 1 worker(s)")
    app.send(signal.SIGTERM)
    app.wait_for("hanging in shutdown")
    app.wait_for("stop requested (SIGTERM)")

    sent = app.send(signal.SIGINT)
    code = app.exit()
    took = time.monotonic() - sent

    assert code == 1, app.log
    assert took < 5
    assert "a second signal cancelled its startup or teardown" in app.lines[-1]
    assert "Traceback" not in app.log


# -- the quickstart and the log formats ------------------------------------------------------


def test_the_quickstart_publishes_and_consumes(start: Callable[..., Running]) -> None:
    app = start("examples.quickstart:app")
    app.wait_for("app quickstart running 2 worker(s): on_order, place_order")

    app.wait_for(" done in ", "[on_order] order 1 from customer-1: 12.50 EUR", timeout=3)
    assert re.search(r"\[place_order\] .*place_order@\S+ done in \d+ms", app.log), app.log
    app.send(signal.SIGINT)
    code = app.exit()

    assert code == 0, app.log
    assert app.lines[-1].endswith("app quickstart stopped cleanly")


def test_json_logs_are_one_object_per_line(start: Callable[..., Running]) -> None:
    app = start("tests.apps.chatter:app", "--log-format", "json")
    app.wait_for("chatter warning line")
    app.send(signal.SIGTERM)
    code = app.exit()

    assert code == 0, app.log
    entries = [json.loads(line) for line in app.lines]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
        datetime.fromisoformat(entry["time"])
    by_message = {entry["message"]: entry for entry in entries}
    said = by_message["chatter warning line"]
    assert (said["level"], said["logger"], said["worker"]) == ("WARNING", "chatter", "chatter")
    assert by_message["chatter info line"]["worker"] == "chatter"
    assert "worker" not in by_message["app chatter stopped cleanly"]
    assert "chatter debug line" not in by_message


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [
        ("WARNING", {"WARNING"}, {"DEBUG", "INFO"}),
        ("debug", {"DEBUG", "INFO", "WARNING"}, set()),
    ],
)
def test_log_level_filters_lines(
    start: Callable[..., Running], level: str, shown: set[str], hidden: set[str]
) -> None:
    app = start("tests.apps.chatter:app", "--log-level", level, "--log-format", "json")
    app.wait_for("chatter warning line")
    app.send(signal.SIGTERM)
    code = app.exit()

    assert code == 0, app.log
    levels = {json.loads(line)["level"] for line in app.lines}
    assert shown <= levels
    assert not hidden & levels


def test_repeated_library_errors_are_held_back_to_one_line_per_window() -> None:
    from taskflow.logfmt import RepeatFilter

    repeat = RepeatFilter(window=10)

    def record(name: str, created: float) -> logging.LogRecord:
        entry = logging.LogRecord(name, logging.ERROR, __file__, 1, "Unable to connect", (), None)
        entry.created = created
        return entry

    shown = [repeat.filter(record("aiokafka.conn", t)) for t in (0.0, 1.0, 2.0, 9.9)]
    assert shown == [True, False, False, False]
    later = record("aiokafka.conn", 10.5)
    assert repeat.filter(later)
    assert later.getMessage() == "Unable to connect (3 more like this in the last 10s)"
    assert all(repeat.filter(record("taskflow.consumer", t)) for t in (0.0, 0.1, 0.2))


# -- settings: flags over the environment over the code, secrets masked ---------------------------


def _settings_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[lines.index("settings") + 1 :]}


def test_info_shows_each_setting_where_it_came_from_with_secrets_masked() -> None:
    result = taskflow(
        "info",
        "tests.apps.ops_settings:app",
        "--http-port",
        "9000",
        "--buffer-bytes",
        "256MiB",
        TASKFLOW_REDIS_URL="redis://:env-secret@127.0.0.1:6379/0",
        TASKFLOW_REDIS_PASSWORD="other-secret",
        TASKFLOW_SHUTDOWN_TIMEOUT="20",
        TASKFLOW_KAFKA_SASL_PLAIN_PASSWORD="env-secret",
        TASKFLOW_KAFKA_CLIENT_ID="ops",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "app settings  broker kafka://code-broker:9092  shutdown timeout 20s\n"
    )
    assert _settings_rows(result.stdout) == {
        "broker": ["kafka://code-broker:9092", "code", "App(broker=...)"],
        "redis_url": ["redis://:***@127.0.0.1:6379/0", "env", "TASKFLOW_REDIS_URL"],
        "redis_username": ["none", "default"],
        "redis_password": ["***", "env", "TASKFLOW_REDIS_PASSWORD"],
        "shutdown_timeout": ["20", "env", "TASKFLOW_SHUTDOWN_TIMEOUT"],
        "commit_interval": ["1", "default"],
        "buffer_bytes": ["268435456", "flag", "--buffer-bytes"],
        "idempotent": ["false", "default"],
        "http_port": ["9000", "flag", "--http-port"],
        "http_host": ["0.0.0.0", "default"],
        "instance_id": ["none", "default"],
        "broker_options.client_id": ["ops", "env", "TASKFLOW_KAFKA_CLIENT_ID"],
        "broker_options.sasl_mechanism": ["PLAIN", "code", "App(broker_options.sasl_mechanism)"],
        "broker_options.sasl_plain_password": [
            "***", "env", "TASKFLOW_KAFKA_SASL_PLAIN_PASSWORD"
        ],
        "broker_options.sasl_plain_username": [
            "billing", "code", "App(broker_options.sasl_plain_username)"
        ],
        "broker_options.security_protocol": [
            "SASL_PLAINTEXT", "code", "App(broker_options.security_protocol)"
        ],
    }  # fmt: skip
    assert "secret" not in result.stdout + result.stderr


def test_a_flag_wins_over_the_environment_which_wins_over_the_code() -> None:
    app = "tests.apps.ops_settings:app"  # shutdown_timeout=10, http_port=8000 in code
    env = {"TASKFLOW_SHUTDOWN_TIMEOUT": "20", "TASKFLOW_HTTP_PORT": "8100"}

    code = taskflow("info", app)
    from_env = taskflow("info", app, **env)
    flags = taskflow("info", app, "--shutdown-timeout", "5", "--http-port", "0", **env)

    for result in (code, from_env, flags):
        assert result.returncode == 0, result.stderr
    assert code.stdout.startswith(
        "app settings  broker kafka://code-broker:9092  shutdown timeout 10s"
    )
    assert from_env.stdout.startswith(
        "app settings  broker kafka://code-broker:9092  shutdown timeout 20s"
    )
    assert flags.stdout.startswith(
        "app settings  broker kafka://code-broker:9092  shutdown timeout 5s"
    )
    rows = [_settings_rows(r.stdout) for r in (code, from_env, flags)]
    assert [r["shutdown_timeout"] for r in rows] == [
        ["10", "code", "App(shutdown_timeout=...)"],
        ["20", "env", "TASKFLOW_SHUTDOWN_TIMEOUT"],
        ["5", "flag", "--shutdown-timeout"],
    ]
    assert [r["http_port"] for r in rows] == [
        ["8000", "code", "App(http_port=...)"],
        ["8100", "env", "TASKFLOW_HTTP_PORT"],
        ["0", "flag", "--http-port"],
    ]  # fmt: skip


def test_an_option_a_factory_sets_is_the_codes_last_word_below_the_flags() -> None:
    app = "tests.apps.factory:configured_later"  # sets app.shutdown_timeout = 7 after App(...)
    env = {"TASKFLOW_SHUTDOWN_TIMEOUT": "20"}

    from_env = taskflow("info", app, **env)
    flags = taskflow("info", app, "--shutdown-timeout", "5", **env)

    assert from_env.returncode == flags.returncode == 0, from_env.stderr + flags.stderr
    assert from_env.stdout.startswith("app later  broker memory://  shutdown timeout 7s")
    assert _settings_rows(from_env.stdout)["shutdown_timeout"] == [
        "7", "code", "App(shutdown_timeout=...)"
    ]  # fmt: skip
    assert _settings_rows(flags.stdout)["shutdown_timeout"] == ["5", "flag", "--shutdown-timeout"]


def test_a_broker_from_the_environment_is_checked_with_the_codes_options() -> None:
    result = taskflow("info", "tests.apps.ops_settings:app", TASKFLOW_BROKER="memory://")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "Error: TASKFLOW_BROKER: the memory broker takes no broker_options: ['client_id', "
        "'sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol']"
    ]


@pytest.mark.parametrize(
    ("command", "env", "message"),
    [
        (
            "run",
            {"TASKFLOW_SHUTDOWN_TIMEOUT": "abc"},
            "Error: TASKFLOW_SHUTDOWN_TIMEOUT must be a number of seconds from 0 to 86400,"
            " got 'abc'",
        ),
        (
            "info",
            {"TASKFLOW_HTTP_PORT": "80a"},
            "Error: TASKFLOW_HTTP_PORT must be a port number from 0 to 65535, got '80a'",
        ),
        (
            "run",
            {"TASKFLOW_BROKER": "nats://x"},
            "Error: TASKFLOW_BROKER: unsupported broker URL 'nats://x': use memory:// or "
            "kafka://host:port[,host:port…]",
        ),
        (
            "info",
            {"TASKFLOW_IDEMPOTENT": "maybe"},
            "Error: TASKFLOW_IDEMPOTENT must be true or false, got 'maybe'",
        ),
        (
            "run",
            {"TASKFLOW_BROKER": "kafka://k:9092", "TASKFLOW_KAFKA_GROUP_ID": "other"},
            "Error: TASKFLOW_KAFKA_GROUP_ID: Kafka option 'group_id' is set by taskflow: "
            "pass group= to @app.consume",
        ),
        (
            "info",
            {"TASKFLOW_BROKER": "kafka://k:9092", "TASKFLOW_KAFKA_CHECK_CRCS": "maybe"},
            "Error: TASKFLOW_KAFKA_CHECK_CRCS must be true or false, got 'maybe'",
        ),
        (
            "info",
            {"TASKFLOW_BROKER": "kafka://k:9092", "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS": "soon"},
            "Error: TASKFLOW_KAFKA_SESSION_TIMEOUT_MS must be an integer from 1000 to 1800000 "
            "(milliseconds), got 'soon'",
        ),
    ],
)
def test_a_bad_variable_is_one_line_naming_it_and_exit_code_2(
    command: str, env: dict[str, str], message: str
) -> None:
    result = taskflow(command, IDLE, **env)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]


def test_a_bad_log_format_variable_is_a_usage_error_naming_it() -> None:
    result = taskflow("run", IDLE, TASKFLOW_LOG_FORMAT="xml")

    assert result.returncode == 2
    assert (
        "Error: Invalid value for '--log-format' (env var: 'TASKFLOW_LOG_FORMAT'): 'xml' is not "
        "one of 'text', 'json'." in result.stderr
    )


def test_the_log_format_comes_from_the_environment(start: Callable[..., Running]) -> None:
    app = start("tests.apps.chatter:app", TASKFLOW_LOG_FORMAT="json")
    app.wait_for("chatter warning line")
    app.send(signal.SIGTERM)

    assert app.exit() == 0, app.log
    assert all(json.loads(line)["level"] for line in app.lines)


# -- JSON lines say where they apply -----------------------------------------------------------


def _entries(lines: list[str]) -> dict[str, dict[str, object]]:
    return {entry["message"]: entry for entry in map(json.loads, lines)}


def test_json_lines_about_a_message_carry_its_topic_partition_offset_and_trace(
    start: Callable[..., Running],
) -> None:
    from tests.apps.ops_logs import TRACE_ID

    app = start("tests.apps.ops_logs:app", "--log-format", "json")
    app.wait_for("handled job 1")
    app.send(signal.SIGTERM)

    assert app.exit() == 0, app.log
    entries = _entries(app.lines)
    [failure] = [entry for message, entry in entries.items() if "attempt 1 failed" in message]
    assert failure["worker"] == "on_job"
    assert (failure["topic"], failure["offset"]) == ("jobs", 0)
    assert isinstance(failure["partition"], int)
    assert failure["trace_id"] == TRACE_ID  # from the message's traceparent header
    assert "span_id" not in failure
    started = entries["app logs running 1 worker(s): on_job"]
    assert not {"topic", "partition", "offset", "trace_id", "span_id"} & started.keys()
    handled = entries["handled job 1"]  # the handler's own line, through ctx.logger
    assert (handled["worker"], handled["topic"], handled["offset"]) == ("on_job", "jobs", 0)
    assert handled["trace_id"] == TRACE_ID


def test_with_tracing_on_a_handlers_own_lines_carry_its_span_and_message(
    start: Callable[..., Running],
) -> None:
    from tests.apps.ops_logs import TRACE_ID

    app = start("tests.apps.ops_logs:app", "--log-format", "json", OTEL_TRACES_EXPORTER="console")
    app.wait_for("handled job 1")
    app.send(signal.SIGTERM)

    assert app.exit() == 0, app.log
    handled = _entries(app.lines)["handled job 1"]
    assert (handled["worker"], handled["topic"], handled["offset"]) == ("on_job", "jobs", 0)
    assert handled["trace_id"] == TRACE_ID  # the process span continues the producer's trace
    assert isinstance(handled["span_id"], str)
    assert len(handled["span_id"]) == 16


def test_the_json_formatter_takes_the_current_span_and_the_tick() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from taskflow.context import Tick
    from taskflow.logfmt import JsonFormatter

    formatter = JsonFormatter()
    tick = Tick("report", datetime(2026, 1, 1, tzinfo=UTC))

    def line(msg: str, *args: object) -> dict[str, object]:
        record = logging.LogRecord("billing", logging.INFO, __file__, 1, msg, args, None)
        entry: dict[str, object] = json.loads(formatter.format(record))
        return entry

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        inside = line("%s done in 3ms", tick)
    outside = line("nothing to say")

    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["tick"] == "2026-01-01T00:00:00+00:00"
    assert "topic" not in inside  # not a consumer's span
    assert not {"trace_id", "span_id", "tick"} & outside.keys()


# -- trigger -----------------------------------------------------------------------------------

OPS = "tests.apps.ops_tasks:app"


@pytest.fixture
def ops_redis() -> Iterator[Redis]:
    """The tests' Redis database, flushed, for the `ops_tasks` app's runs and the fleet's keys."""
    client = Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


def _ops(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return taskflow(*args, TASKFLOW_REDIS_URL=REDIS_URL, **env)


@pytest.mark.redis
def test_trigger_runs_a_task_once_and_info_shows_its_last_run(ops_redis: Redis) -> None:
    result = _ops("trigger", OPS, "beat")

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    tick, ok, _in, took, how = line.split(" ", 4)
    assert tick.startswith("beat@")
    assert (ok, _in, how) == ("ok", "in", "(claimed through the fleet)")
    assert took.endswith("ms")
    assert len(ops_redis.lrange("ops:runs", 0, -1)) == 1

    info = _ops("info", OPS)

    assert info.returncode == 0, info.stderr
    [beat] = [row for row in info.stdout.splitlines() if row.startswith("  periodic  beat ")]
    last = beat.split("  last ")[1].split()
    assert last[:3] == [tick.removeprefix("beat@"), "ok", "in"]
    assert last[4] == "on"
    assert "  periodic  local  every 1h  next " in info.stdout
    assert "last not recorded (fleet=False)" in info.stdout


@pytest.mark.redis
def test_trigger_reports_a_failing_task_and_exits_1(ops_redis: Redis) -> None:
    result = _ops("trigger", OPS, "broken")

    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith("broken@")
    assert " failed in " in line
    assert line.endswith(": ValueError: boom (claimed through the fleet)")
    assert 'raise ValueError("boom")' in result.stderr  # the traceback


@pytest.mark.redis
def test_trigger_of_an_unknown_task_names_the_tasks_and_exits_2(ops_redis: Redis) -> None:
    result = _ops("trigger", OPS, "on_order")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: app ops has no periodic task 'on_order'; its periodic tasks: beat, broken, local"
    ]


def test_an_unreachable_redis_leaves_info_printed_with_last_runs_unknown_and_exit_code_1() -> None:
    result = taskflow("info", OPS, TASKFLOW_REDIS_URL="redis://:hunter2@127.0.0.1:1/0")

    assert result.returncode == 1
    assert "  periodic  beat  every 1h  next " in result.stdout
    assert "  last unknown" in result.stdout
    assert "redis_url         redis://:***@127.0.0.1:1/0  env" in result.stdout
    [error] = result.stderr.splitlines()
    assert error.startswith(
        "Error: the periodic tasks' last runs are unknown: cannot reach Redis at "
        "redis://:***@127.0.0.1:1/0: "
    )
    assert "hunter2" not in result.stdout + result.stderr


def test_trigger_with_an_unreachable_redis_does_not_run_and_exits_1() -> None:
    result = taskflow("trigger", OPS, "beat", TASKFLOW_REDIS_URL="redis://127.0.0.1:1/0")

    assert result.returncode == 1
    assert result.stdout == ""
    assert "ERROR taskflow beat did not run: cannot reach Redis at redis://127.0.0.1:1/0" in (
        result.stderr
    )


@pytest.mark.redis
def test_two_triggers_at_once_run_the_task_once(ops_redis: Redis) -> None:
    first = subprocess.Popen(
        [*TASKFLOW, "trigger", OPS, "beat"],
        cwd=REPO,
        env=_env(TASKFLOW_REDIS_URL=REDIS_URL, OPS_HOLD="ops:hold"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
    )
    try:
        wait_until(
            lambda: bool(ops_redis.exists("taskflow:{ops:beat}:running")), LOG_TIMEOUT, "the lease"
        )
        second = _ops("trigger", OPS, "beat")  # while the first run waits on `ops:hold`
        ops_redis.rpush("ops:hold", "go")
        out, err = first.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()

    assert first.returncode == 0, err
    assert " ok in " in out
    assert second.returncode == 1
    [line] = second.stdout.splitlines()
    assert line.endswith(")")
    assert " not run: a run of beat is still going (" in line
    assert len(ops_redis.lrange("ops:runs", 0, -1)) == 1


# -- send --------------------------------------------------------------------------------------


def test_send_refuses_the_memory_broker_with_one_line() -> None:
    result = taskflow("send", IDLE, "orders", '{"id": 1}')

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "Error: the app's broker is memory://, which lives inside one process, so a message "
        "sent from here reaches nobody: pass --broker kafka://host:port or set TASKFLOW_BROKER"
    ]


def test_send_refuses_a_header_without_a_value() -> None:
    result = taskflow("send", IDLE, "orders", "x", "--header", "trace")

    assert result.returncode == 2
    assert "Invalid value for '--header': expected NAME=VALUE, got 'trace'" in result.stderr


def test_info_shows_where_each_consumer_starts_its_static_member_and_its_own_options(
    tmp_path: Path,
) -> None:
    result = taskflow(
        "info",
        "tests.apps.starts:app",
        "--instance-id",
        "pod-a",
        STARTS_TOPIC="prices",
        STARTS_OUT=str(tmp_path / "out.txt"),
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == (
        "  consumer  replay  topics prices  group prices-replay  ordering partition"
        "  static member pod-a.replay  isolation_level read_committed"
        "  max_partition_fetch_bytes 65536"
    )
    assert lines[2] == (
        "  consumer  live  topics prices  group prices-live  ordering partition  start latest"
        "  static member pod-a.live"
    )
    assert _settings_rows(result.stdout)["instance_id"] == ["pod-a", "flag", "--instance-id"]


@pytest.mark.parametrize(
    ("codec", "shown"),
    [("json", ""), ("msgpack", "  codec application/msgpack"), ("csv", "  codec text/csv (Csv)")],
)
def test_info_shows_a_consumers_codec_when_it_is_not_json(codec: str, shown: str) -> None:
    result = taskflow("info", "tests.apps.codec_relay:app", RELAY_CODEC=codec, RELAY_GROUP="g")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:3] == [
        f"  consumer  relay  topics lines  group g-relay  ordering partition{shown}"
        "  dead letters lines.DLQ",
        f"  consumer  seen  topics lines.out  group g-seen  ordering partition{shown}",
    ]


def test_dlq_show_refuses_the_memory_broker_with_one_line() -> None:
    result = taskflow("dlq", "show", IDLE, "orders.dlq")

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "Error: the app's broker is memory://, which lives inside one process, so there is no "
        "dead-letter topic to read: pass --broker kafka://host:port or set TASKFLOW_BROKER"
    ]


@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_dlq_show_refuses_a_limit_that_is_not_a_positive_whole_number(limit: str) -> None:
    result = taskflow("dlq", "show", IDLE, "orders.dlq", "--limit", limit)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"Error: Invalid value for '--limit': must be a whole number from 1 to 1000000, "
        f"got '{limit}'"
    ]


def test_dlq_show_without_a_topic_is_a_usage_error() -> None:
    result = taskflow("dlq", "show", IDLE)

    assert result.returncode == 2
    assert "Missing argument 'TOPIC'" in result.stderr


def test_dlq_show_refuses_a_bad_topic_name_with_one_line() -> None:
    result = taskflow("dlq", "show", IDLE, "no spaces", "--broker", "kafka://127.0.0.1:1")

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: ")


def test_dlq_replay_refuses_the_memory_broker_with_one_line() -> None:
    result = taskflow("dlq", "replay", IDLE, "orders.dlq")

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "Error: the app's broker is memory://, which lives inside one process, so there is no "
        "dead-letter topic here to replay from: pass --broker kafka://host:port or set "
        "TASKFLOW_BROKER"
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--since", "yesterday"],
            "Error: --since takes an ISO 8601 time (2026-12-04T10:00:00Z) or a time before now "
            "(30m, 2h, 7d), got 'yesterday'",
        ),
        (
            ["--rate", "5/fortnight"],
            "Error: --rate takes a positive count per second, minute or hour (100/s, 30/m, "
            "1000/h), got '5/fortnight'",
        ),
        (
            ["--rate", "0/s"],
            "Error: --rate takes a positive count per second, minute or hour (100/s, 30/m, "
            "1000/h), got '0/s'",
        ),
        (
            ["--reason", "failed"],
            "Error: Invalid value for '--reason': 'failed' is not one of 'rejected', 'exhausted', "
            "'unretryable'.",
        ),
        (
            ["--limit", "0"],
            "Error: Invalid value for '--limit': must be a whole number from 1 to 1000000000, "
            "got '0'",
        ),
        (["--error", " "], "Error: --error takes an exception type, e.g. KeyError; got ''"),
        (["--group", ""], "Error: --group must not be empty"),
    ],
)
def test_dlq_replay_refuses_a_bad_argument_with_one_line(args: list[str], error: str) -> None:
    result = taskflow("dlq", "replay", IDLE, "orders.dlq", *args, "--broker", "kafka://127.0.0.1:1")

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [error]


def test_dlq_replay_refuses_a_bad_topic_name_with_one_line() -> None:
    result = taskflow("dlq", "replay", IDLE, "no spaces", "--broker", "kafka://127.0.0.1:1")

    assert (result.returncode, result.stdout) == (2, "")
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: ")


def test_info_shows_the_retry_stage_and_where_failures_go() -> None:
    result = taskflow("info", "tests.apps.retry_stages:app", RETRY_STAGES_TOPIC="orders")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == (
        "  consumer  handle  topics orders  group retry-stages  ordering partition"
        "  retries orders.retry.1s, orders.retry.2s  dead letters orders.DLQ"
    )
    assert lines[2] == (
        "  consumer  handle.retry  topics orders.retry.1s, orders.retry.2s"
        "  group retry-stages.retry  runs the retries of handle"
    )


# -- taskflow dashboard ------------------------------------------------------------------------


def test_dashboard_on_a_port_in_use_is_one_line_and_exit_code_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = taskflow("dashboard", IDLE, "--port", str(port))

    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in line


def test_dashboard_with_an_unreachable_redis_is_exit_code_1() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = taskflow(
        "dashboard", IDLE, "--port", "0", "--redis", f"redis://:pw@127.0.0.1:{port}/0"
    )

    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr
    assert ":pw@" not in result.stderr


def test_dashboard_refuses_a_port_that_is_not_one() -> None:
    result = taskflow("dashboard", IDLE, "--port", "web")

    assert result.returncode == 2
    assert "--port" in result.stderr
