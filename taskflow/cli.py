"""The command line: ``taskflow run``, ``info``, ``asyncapi``, ``trigger``, ``send``, ``dlq show``
and ``dlq replay`` of a ``module:app``.

Every mistake a person can make on the command line (a module that does not import, a missing
attribute, something that is not an App, a bad broker URL, a bad ``TASKFLOW_*`` variable) ends
with one line on stderr and exit code 2; ``--debug`` adds the traceback.

Flags win over the ``TASKFLOW_*`` variables, which win over the App's arguments (see
`taskflow.config`); the app reads the variables itself when it is made, and the flags are put
over its settings here, once it is loaded, in one new `Settings` value handed back to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from taskflow import asyncapi as contract
from taskflow import logfmt, operations, supervisor
from taskflow import replay as replaying
from taskflow.app import App
from taskflow.asyncapi.schemas import type_name
from taskflow.codec import codec_shown
from taskflow.config import Settings, mask_url, quoted, shown, whole_number_text
from taskflow.exceptions import (
    AppLoadError,
    BrokerError,
    ConfigurationError,
    PublishError,
    StartupInterrupted,
    StoreError,
    TaskflowError,
)
from taskflow.leftovers import name_leftovers
from taskflow.manager import ShutdownReport
from taskflow.ratelimit import RateLimit, rate_limit
from taskflow.runner import (
    EXIT_CLEAN,
    EXIT_UNCLEAN,
    catch_early_signals,
    group_instance_id,
    serve,
)
from taskflow.specs import ConsumerSpec, retry_stage_spec
from taskflow.telemetry import setup as otel
from taskflow.topic import Topic
from taskflow.workers.dead_letter import DeadLetterHeaders

__all__ = ["load_app", "main"]

EXIT_USAGE = 2
LEFTOVER_GRACE = 0.5  # how long tasks left after the app stopped may take to end once cancelled

logger = logging.getLogger("taskflow")
T = TypeVar("T")


def load_app(reference: str, app_dir: str = ".") -> App:
    """Import ``module:attribute`` (an App, or a function returning one) with `app_dir` importable.

    Raises:
        AppLoadError: saying what was wrong with the reference.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise AppLoadError(
            f"expected module:attribute (for example billing:app), got {reference!r}"
        )
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ConfigurationError:
        raise  # says what to change, e.g. "TASKFLOW_HTTP_PORT must be a port number …"
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise AppLoadError(
                f"cannot import module {module_name!r} from {directory}: check the name, "
                "or pass --app-dir"
            ) from exc
        raise AppLoadError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return _resolve(module, module_name, attribute)


def _resolve(module: object, module_name: str, attribute: str) -> App:
    target: Any = module
    reference = f"{module_name}:{attribute}"
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if isinstance(target, App):
        return target
    if not callable(target):
        raise AppLoadError(
            f"{reference} is {_a(target)}, not a taskflow App or a function returning one"
        )
    try:
        made = target()
    except ConfigurationError:
        raise
    except Exception as exc:
        raise AppLoadError(f"calling {reference}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(made, App):
        raise AppLoadError(f"{reference}() returned {_a(made)}, not a taskflow App")
    return made


def _a(value: object) -> str:
    """'an int', 'a dict': the type of `value` with its article."""
    kind = type(value).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _fail(message: str, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _on_the_broker(work: Coroutine[Any, Any, T], debug: bool) -> T:
    """Run a one-off command's `work` against the broker: a ConfigurationError is a usage error
    (exit 2), a BrokerError an unreachable or refusing broker (one line, exit 1)."""
    try:
        return asyncio.run(work)
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    except BrokerError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_UNCLEAN)


def _prepare(
    reference: str, app_dir: str, debug: bool, flags: Mapping[str, Any], *, serve_http: bool = True
) -> App:
    """Load the app and give it its settings with the flags given (None: not given) over them.

    Without `serve_http` no operations endpoint is served, whatever the settings say.
    """
    try:
        app = load_app(reference, app_dir)
        settings = app.settings.with_flags(flags)
        if not serve_http:
            settings = settings.with_code({"http_port": None})
        app.settings = settings  # checked: a bad --broker is refused here
    except TaskflowError as exc:
        _fail(str(exc), debug)
    return app


_app_dir = click.option(
    "--app-dir",
    default=".",
    show_default=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory added to sys.path before importing the app.",
)
# The App options' flags have no `envvar=`: the App reads its TASKFLOW_* variables itself, so a
# flag is only ever what was typed, and `info` can tell the two apart.
_broker = click.option(
    "--broker", help="memory:// or kafka://host:port[,…] (over TASKFLOW_BROKER)."
)
_redis = click.option(
    "--redis", help="Redis URL, e.g. redis://localhost:6379/0 (over TASKFLOW_REDIS_URL)."
)
# Typed as text: `Settings.with_flags` reads them as it reads their variables, with one sentence
# for a bad value that names the flag and the values it takes.
_shutdown_timeout = click.option(
    "--shutdown-timeout",
    metavar="SECONDS",
    help="Seconds to finish in-flight work on shutdown, 0 to 86400 "
    "(over TASKFLOW_SHUTDOWN_TIMEOUT).",
)
_buffer_bytes = click.option(
    "--buffer-bytes",
    metavar="SIZE",
    help="Memory budget of fetched records for the process, e.g. 256MiB or 1GB; default 64MiB "
    "(over TASKFLOW_BUFFER_BYTES).",
)
_http_port = click.option(
    "--http-port",
    metavar="PORT",
    help="Serve /healthz, /readyz, /metrics and /status on this port; 0: any free port "
    "(over TASKFLOW_HTTP_PORT).",
)
_http_host = click.option(
    "--http-host",
    help="The address the operations endpoint listens on (default 0.0.0.0, every interface; "
    "over TASKFLOW_HTTP_HOST).",
)
_instance_id = click.option(
    "--instance-id",
    help="This replica's stable name (e.g. the pod name) for Kafka static group membership; "
    "with --processes each process gets <id>-<index> (over TASKFLOW_INSTANCE_ID).",
)
_log_level = click.option(
    "--log-level",
    envvar="TASKFLOW_LOG_LEVEL",
    show_envvar=True,
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
_log_format = click.option(
    "--log-format",
    envvar="TASKFLOW_LOG_FORMAT",
    show_envvar=True,
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="Compact text lines, or one JSON object per line.",
)
_debug = click.option("--debug", is_flag=True, help="Show tracebacks of errors.")


def _configure_logging(level: str, fmt: str) -> None:
    logfmt.configure(level, "json" if fmt.lower() == "json" else "text")


_QUOTED = re.compile(r"'([^'\n]*)'")


class _OneLine(click.ClickException):
    """A bad option value: one line on stderr and exit code 2, like every configuration error."""

    exit_code = EXIT_USAGE


class _Command(click.Command):
    """A command whose bad option values (a flag's or its variable's) are one line, no usage."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.BadParameter as exc:
            # click quotes the value it refuses: shown as taskflow shows any refused value.
            message = _QUOTED.sub(lambda m: quoted(m[1]), exc.format_message())
            raise _OneLine(message) from exc


class _WholeNumber(click.ParamType[int]):
    """A whole number from `low` to `high`, or (with `auto`) ``auto``: one per usable CPU."""

    def __init__(self, low: int, high: int, *, auto: bool = False) -> None:
        self.low, self.high, self.auto = low, high, auto
        self.name = "N|auto" if auto else "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            count: int | None = value
        elif self.auto and isinstance(value, str) and value.strip().lower() == "auto":
            return supervisor.usable_cpus()
        else:
            count = whole_number_text(str(value))
        if count is None or not self.low <= count <= self.high:
            auto = " or 'auto'" if self.auto else ""
            self.fail(
                f"must be a whole number from {self.low} to {self.high}{auto}, "
                f"got {quoted(str(value))}",
                param,
                ctx,
            )
        return count


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskflow")
def main() -> None:
    """taskflow: Kafka consumers and periodic tasks as asyncio workers."""


@main.command(cls=_Command)
@click.argument("app_ref", metavar="MODULE:APP")
@_app_dir
@_broker
@_redis
@_log_level
@_log_format
@_shutdown_timeout
@_buffer_bytes
@_http_port
@_http_host
@_instance_id
@click.option(
    "--processes",
    envvar="TASKFLOW_PROCESSES",
    show_envvar=True,
    default="1",
    show_default=True,
    type=_WholeNumber(1, supervisor.PROCESSES_CEILING, auto=True),
    help="Worker processes under one supervisor ('auto': one per usable CPU); at most 4 per "
    "usable CPU (at least 8) unless --processes-limit allows more.",
)
@click.option(
    "--processes-limit",
    envvar="TASKFLOW_PROCESSES_LIMIT",
    show_envvar=True,
    type=_WholeNumber(1, supervisor.PROCESSES_CEILING),
    help=f"The most --processes allowed, up to {supervisor.PROCESSES_CEILING} "
    "(default: 4 per usable CPU, at least 8).",
)
@_debug
def run(
    app_ref: str,
    app_dir: str,
    broker: str | None,
    redis: str | None,
    log_level: str,
    log_format: str,
    shutdown_timeout: str | None,
    buffer_bytes: str | None,
    http_port: str | None,
    http_host: str | None,
    instance_id: str | None,
    processes: int,
    processes_limit: int | None,
    debug: bool,
) -> None:
    """Run the app's workers until SIGINT, SIGTERM or SIGHUP, then shut down gracefully.

    Exit code 0 after a clean shutdown, 1 when work had to be cancelled or abandoned or startup
    failed or was interrupted by a signal, 2 for a usage error; a handler's `sys.exit(n)` stops
    the process with code n.
    """
    # A stop signal while the app is imported is kept, not fatal; the old handlers come back after.
    click.get_current_context().call_on_close(catch_early_signals())
    _configure_logging(log_level, log_format)
    try:
        _check_processes(processes, processes_limit)
        supervisor.configure_child()
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    flags = {
        "broker": broker,
        "redis_url": redis,
        "shutdown_timeout": shutdown_timeout,
        "buffer_bytes": buffer_bytes,
        "http_port": http_port,
        "http_host": http_host,
        "instance_id": instance_id,
    }
    app = _prepare(app_ref, app_dir, debug, flags)
    if processes > 1:
        sys.exit(_supervise(app, processes, processes_limit, debug))
    try:
        flush_telemetry = otel.configure_from_env(app.name)
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    try:
        report = asyncio.run(_serve(app, flush_telemetry, app_ref))
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    except StartupInterrupted as exc:
        logger.warning("app %s did not run: start-up interrupted: %s", app.name, exc)
        sys.exit(EXIT_UNCLEAN)
    except TaskflowError as exc:
        logger.error("app %s did not run: %s", app.name, exc, exc_info=exc if debug else None)
        sys.exit(EXIT_UNCLEAN)
    except asyncio.CancelledError:
        logger.error("app %s: a second signal cancelled its startup or teardown", app.name)
        sys.exit(EXIT_UNCLEAN)
    except Exception:
        logger.exception("app %s failed", app.name)
        sys.exit(EXIT_UNCLEAN)
    finally:
        if flush_telemetry is not None:
            flush_telemetry()
    sys.exit(_exit_code(report))


def _exit_code(report: ShutdownReport) -> int:
    if report.exit_code is not None:
        return report.exit_code
    return EXIT_CLEAN if report.clean else EXIT_UNCLEAN


async def _serve(
    app: App, flush_telemetry: Callable[[], None] | None, app_ref: str
) -> ShutdownReport:
    """Serve `app`, loaded from `app_ref`; then, if handler threads or tasks would not end, name
    them and exit at once.

    Python would wait for them forever (it joins executor threads at exit), so the process ends
    with `os._exit`, after the log and telemetry are flushed. Only `taskflow run` does this.
    """
    report = await serve(app, app_ref=app_ref)
    if await name_leftovers(LEFTOVER_GRACE):
        if flush_telemetry is not None:
            flush_telemetry()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_UNCLEAN if report.exit_code is None else report.exit_code)
    return report


def _check_processes(processes: int, limit: int | None) -> None:
    """Refuse more processes than the limit, naming the flag or variable that asked for them."""
    ctx = click.get_current_context()
    from_env = ctx.get_parameter_source("processes") is ParameterSource.ENVIRONMENT
    supervisor.check_processes(
        processes, limit, label="TASKFLOW_PROCESSES" if from_env else "--processes"
    )


def _supervise(app: App, processes: int, limit: int | None, debug: bool) -> int:
    """Run `processes` children of this very `taskflow run` under a supervisor; its exit code."""
    skip = {"processes", "processes_limit", "http_port", "instance_id"}
    args = _child_args(click.get_current_context(), skip=skip)
    port, instance = app.settings.http_port, app.settings.instance_id
    if port and port + processes - 1 > 65535:
        _fail(f"--http-port {port} with {processes} processes needs ports past 65535", debug)

    def command(index: int) -> list[str]:
        # Each child is a replica of its own: a port and a static identity of its own.
        ports = [] if port is None else ["--http-port", str(port and port + index)]
        ids = [] if instance is None else ["--instance-id", f"{instance}-{index}"]
        return [sys.executable, "-m", "taskflow", "run", *args, *ports, *ids]

    env = {name: value for name, value in os.environ.items() if name != "TASKFLOW_PROCESSES"}
    watch = supervisor.Supervisor(
        command, processes, shutdown_timeout=app.settings.shutdown_timeout, env=env, limit=limit
    )
    return asyncio.run(watch.run())


def _child_args(ctx: click.Context, skip: set[str]) -> list[str]:
    """The arguments and options given on the command line again, except those in `skip`.

    Options that came from the environment are left out: the children inherit it.
    """
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in skip:
            continue
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[name]
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif isinstance(param, click.Option) and param.is_flag:
            if value:
                args.append(param.opts[0])
        else:
            for item in value if isinstance(value, tuple) else (value,):
                args += [param.opts[0], str(item)]
    return args


@main.command(cls=_Command)
@click.argument("app_ref", metavar="MODULE:APP")
@_app_dir
@_broker
@_redis
@_shutdown_timeout
@_buffer_bytes
@_http_port
@_http_host
@_instance_id
@_debug
def info(
    app_ref: str,
    app_dir: str,
    broker: str | None,
    redis: str | None,
    shutdown_timeout: str | None,
    buffer_bytes: str | None,
    http_port: str | None,
    http_host: str | None,
    instance_id: str | None,
    debug: bool,
) -> None:
    """Show the app's workers and its settings.

    For each periodic task, its schedule and next run and, when Redis is configured, its last run
    as the fleet recorded it. For each setting, the value in effect (secrets masked) and where it
    came from: a flag, the environment, the code or the default. The flags are those of `run`.
    Exit code 1 when Redis is configured but cannot be read.
    """
    flags = {
        "broker": broker,
        "redis_url": redis,
        "shutdown_timeout": shutdown_timeout,
        "buffer_bytes": buffer_bytes,
        "http_port": http_port,
        "http_host": http_host,
        "instance_id": instance_id,
    }
    app = _prepare(app_ref, app_dir, debug, flags)
    recorded: dict[str, operations.Recorded] | None = {}
    problem: TaskflowError | None = None
    if app.settings.redis_url:
        try:
            recorded = asyncio.run(operations.recorded_runs(app))
        except (StoreError, ConfigurationError) as exc:
            recorded, problem = None, exc
    _show_workers(app, recorded)
    _show_settings(app.settings)
    if problem is not None:
        click.echo(f"Error: the periodic tasks' last runs are unknown: {problem}", err=True)
        sys.exit(EXIT_UNCLEAN)


def _show_workers(app: App, recorded: dict[str, operations.Recorded] | None) -> None:
    """The workers; `recorded` is None when Redis could not be read, {} without Redis."""
    now = app.clock.now()
    click.echo(
        f"app {app.name}  broker {mask_url(app.broker_url)}  "
        f"shutdown timeout {app.settings.shutdown_timeout:g}s"
    )
    for spec in app.consumers:
        click.echo(
            f"  consumer  {spec.name}  topics {', '.join(spec.topics)}  group {spec.group}"
            f"  ordering {spec.ordering}{_consumer_settings(app, spec)}{_failures(spec)}"
        )
        if spec.retry_topics is not None:
            stage = retry_stage_spec(spec)
            click.echo(
                f"  consumer  {stage.name}  topics {', '.join(stage.topics)}"
                f"  group {stage.consumer_group}  runs the retries of {spec.name}"
            )
    for topic in app.topics:
        click.echo(f"  publishes {topic.name}  {_declared(app, topic)}")
    for task in app.schedules:
        nxt = task.schedule.next_after(now).isoformat()
        line = f"  periodic  {task.name}  {task.schedule.describe()}  next {nxt}"
        if app.settings.redis_url:
            line += f"  last {_last_run(task.fleet, task.name, recorded)}"
        click.echo(line)
    for worker in app.function_workers:
        click.echo(f"  worker    {worker.name}")
    for custom in app.workers:
        click.echo(f"  worker    {custom.name}  ({type(custom).__qualname__})")


def _declared(app: App, topic: Topic[Any]) -> str:
    """What a topic declared with `app.topic` carries: its payload and key types and codec."""
    text = f"payload {type_name(topic.payload)}"
    text += f"  key {topic.key.__name__}" if topic.key is not None else ""
    shown_codec = codec_shown(topic.codec or app.codec)
    return text + (f"  codec {shown_codec}" if shown_codec else "")


def _failures(spec: ConsumerSpec) -> str:
    """Where a consumer's failed messages go: its retry topics and its dead-letter topic."""
    text = f"  retries {', '.join(spec.stage_topics)}" if spec.stage_topics else ""
    return text + (f"  dead letters {spec.dead_letter}" if spec.dead_letter else "")


def _consumer_settings(app: App, spec: ConsumerSpec) -> str:
    """What a consumer's line adds when it has them: its start, static member id and options."""
    text = f"  start {spec.start}" if spec.start else ""
    if app.settings.instance_id:
        text += f"  static member {group_instance_id(app.settings.instance_id, spec.name)}"
    for name, value in spec.consumer_options.items():
        text += f"  {name} {shown(name, value)}"
    shown_codec = codec_shown(spec.codec or app.codec)
    return text + (f"  codec {shown_codec}" if shown_codec else "")


def _last_run(fleet: bool, task: str, recorded: dict[str, operations.Recorded] | None) -> str:
    if not fleet:
        return "not recorded (fleet=False)"
    if recorded is None:
        return "unknown"
    found = recorded.get(task)
    last = found.last if found is not None else None
    if last is None:
        return "never"
    tick, where = last.tick.isoformat(), f"on {last.replica}"
    if last.outcome == "running" or last.duration is None:
        return f"{tick} running since {_clock_time(last.time)} {where}"
    return f"{tick} {last.outcome} in {_duration(last.duration)} {where}"


def _clock_time(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _show_settings(settings: Settings) -> None:
    """One row per setting: name, value (secrets masked), source and the flag or variable."""
    rows = settings.rows()
    names = max(len(row.name) for row in rows)
    values = max(len(row.shown) for row in rows)
    click.echo("settings")
    for row in rows:
        line = f"  {row.name:<{names}}  {row.shown:<{values}}  {row.source:<7}  {row.origin}"
        click.echo(line.rstrip())


@main.command(cls=_Command)
@click.argument("app_ref", metavar="MODULE:APP")
@_app_dir
@_broker
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "yaml"], case_sensitive=False),
    default="json",
    show_default=True,
    help="JSON, or YAML (needs PyYAML: taskflow[yaml]).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the document to FILE instead of stdout.",
)
@_debug
def asyncapi(
    app_ref: str, app_dir: str, broker: str | None, fmt: str, output: str | None, debug: bool
) -> None:
    """Write the app's AsyncAPI 3.0.0 document.

    One channel per topic consumed or declared with app.topic(...), a receive operation per
    consumer (its group, ordering, dead-letter and retry topics), a send operation per declared
    topic, and each message's payload schema from the handler's annotation. The servers are
    the Kafka broker's (--broker over TASKFLOW_BROKER over the code); nothing secret is written.
    """
    app = _prepare(app_ref, app_dir, debug, {"broker": broker}, serve_http=False)
    try:
        built = contract.document(app)
        text = contract.as_yaml(built) if fmt.lower() == "yaml" else contract.as_json(built)
    except TaskflowError as exc:
        _fail(str(exc), debug)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}", debug)


@main.command(cls=_Command)
@click.argument("app_ref", metavar="MODULE:APP")
@click.argument("task")
@_app_dir
@_broker
@_redis
@_log_level
@_log_format
@_debug
def trigger(
    app_ref: str,
    task: str,
    app_dir: str,
    broker: str | None,
    redis: str | None,
    log_level: str,
    log_format: str,
    debug: bool,
) -> None:
    """Run the periodic task TASK once now, here, and print how it went.

    The app's lifespan and startup hooks run first (so app.state is set up) and its shutdown
    hooks after; no worker starts and no operations endpoint is served. With Redis the run goes
    through the fleet's claim: it does not run while another run of the task is going on any
    replica, and none starts there meanwhile. Exit code 0 when it ran and succeeded, 1 when it
    failed or did not run, 2 for a usage error (such as an unknown TASK).
    """
    _configure_logging(log_level, log_format)
    # A replica on this host may have the port: trigger serves nothing.
    flags = {"broker": broker, "redis_url": redis}
    app = _prepare(app_ref, app_dir, debug, flags, serve_http=False)
    try:
        operations.periodic_task(app, task)
        flush_telemetry = otel.configure_from_env(app.name)
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    try:
        result = asyncio.run(operations.trigger(app, task, install_signal_handlers=True))
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    except TaskflowError as exc:
        logger.error("%s did not run: %s", task, exc, exc_info=exc if debug else None)
        sys.exit(EXIT_UNCLEAN)
    except (asyncio.CancelledError, KeyboardInterrupt):
        logger.error("%s: a second signal cancelled the run", task)
        sys.exit(EXIT_UNCLEAN)
    finally:
        if flush_telemetry is not None:
            flush_telemetry()
    if result.claimed:
        how = "claimed through the fleet"
    else:
        how = "run here only: " + (
            "fleet=False" if app.settings.redis_url else "no Redis configured"
        )
    click.echo(_outcome(result, how))
    if result.error is not None:
        logger.error("%s failed", result.tick, exc_info=result.error)
    sys.exit(EXIT_CLEAN if result.outcome == "ok" else EXIT_UNCLEAN)


def _outcome(result: operations.Triggered, how: str) -> str:
    """One line: what happened to the triggered run."""
    tick, took = result.tick, _duration(result.duration)
    if result.outcome == "ok":
        return f"{tick} ok in {took} ({how})"
    if result.outcome == "failed":
        error = result.error
        return f"{tick} failed in {took}: {type(error).__name__}: {error} ({how})"
    if result.outcome == "lost":
        return f"{tick} cancelled after {took}: its lease was lost, a replica may run the task"
    if result.outcome == "busy":
        return f"{tick} not run: a run of {tick.task} is still going ({result.holder})"
    if result.outcome == "elsewhere":
        return f"{tick} not run: the tick was claimed by {result.holder}"
    return f"{tick} cancelled after {took}"


def _header(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Any]:
    headers = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", ctx, param)
        headers.append((name, value.encode("utf-8", "surrogateescape")))  # bytes as given
    return headers


@main.command(cls=_Command)
@click.argument("app_ref", metavar="MODULE:APP")
@click.argument("topic")
@click.argument("value")
@click.option("--key", help="The message key (UTF-8).")
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_header,
    help="A header; repeat for more.",
)
@click.option("--raw", is_flag=True, help="Send VALUE as it is, never as JSON.")
@click.option(
    "--content-type",
    metavar="TYPE",
    help="Encode VALUE with the app's codec of this content type (default: the app's codec).",
)
@_app_dir
@_broker
@_debug
def send(
    app_ref: str,
    topic: str,
    value: str,
    key: str | None,
    headers: list[tuple[str, bytes]],
    raw: bool,
    content_type: str | None,
    app_dir: str,
    broker: str | None,
    debug: bool,
) -> None:
    """Publish VALUE to TOPIC through the app's broker, and print its partition and offset.

    VALUE is sent as the app would publish it when it parses as JSON (42, '{"id": 1}', '"text"'),
    through its codec and with its content-type header, else as UTF-8 text; --raw sends it
    exactly as given; '-' reads it from standard input. The
    broker must be Kafka: the memory broker lives inside one process. Exit code 0 once the broker
    has the message, 1 when it cannot be reached or refuses it, 2 for a usage error.
    """
    _configure_logging("WARNING", "text")
    app = _prepare(app_ref, app_dir, debug, {"broker": broker})
    # Bytes that are not UTF-8 become surrogate escapes, as in sys.argv, whatever the locale.
    text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape") if value == "-" else value
    try:
        payload, sent = operations.record_from_text(
            app, text, raw=raw, content_type=content_type, headers=headers
        )
    except (ConfigurationError, PublishError) as exc:
        _fail(str(exc), debug)
    message_key = None if key is None else key.encode("utf-8", "surrogateescape")
    where, offset = _on_the_broker(
        operations.send(app, topic, payload, key=message_key, headers=sent), debug
    )
    click.echo(f"sent to {where}@{offset}")


@main.command(cls=_Command)
@click.argument("app_ref", metavar="MODULE:APP")
@_app_dir
@_broker
@_redis
@click.option(
    "--port",
    default="8080",
    show_default=True,
    type=_WholeNumber(0, 65535),
    help="The port to serve the dashboard on; 0: any free port.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on; 0.0.0.0 for every interface (set TASKFLOW_DASHBOARD_TOKEN).",
)
@_log_level
@_log_format
@_debug
def dashboard(
    app_ref: str,
    app_dir: str,
    broker: str | None,
    redis: str | None,
    port: int,
    host: str,
    log_level: str,
    log_format: str,
    debug: bool,
) -> None:
    """Serve the operations dashboard of the app until SIGINT or SIGTERM.

    One page shows every replica that publishes to the app's Redis, their consumers' partitions,
    the periodic tasks' runs and the dead-letter topics, read-only. It runs no worker and joins no
    consumer group. With TASKFLOW_DASHBOARD_TOKEN set, the page asks for that token (open
    /?token=... once, or send an 'Authorization: Bearer' header). Exit code 0 on a signal; 1 when
    Redis cannot be reached; 2 for a usage error (a port that cannot be listened on).
    """
    from taskflow.dashboard import serve as serve_dashboard

    _configure_logging(log_level, log_format)
    app = _prepare(app_ref, app_dir, debug, {"broker": broker, "redis_url": redis})
    try:
        asyncio.run(serve_dashboard(app, host=host, port=port, app_ref=app_ref))
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    except StoreError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_UNCLEAN)


@main.group()
def dlq() -> None:
    """Look at dead-letter topics, and replay them."""


DLQ_LIMIT = 20
MESSAGE_SHOWN = 80  # characters of an exception message in the text view


@dlq.command(cls=_Command)
@click.argument("app_ref", metavar="MODULE:APP")
@click.argument("topic")
@click.option(
    "--limit",
    default=str(DLQ_LIMIT),
    show_default=True,
    type=_WholeNumber(1, 1_000_000),
    help="Show at most this many dead letters, the newest.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line, then a summary object."
)
@_app_dir
@_broker
@_debug
def show(
    app_ref: str,
    topic: str,
    limit: int,
    as_json: bool,
    app_dir: str,
    broker: str | None,
    debug: bool,
) -> None:
    """Print the newest dead letters on TOPIC, and counts of every one by reason and exception.

    TOPIC is read through the app's broker (with its broker_options), every partition from its
    beginning to its end as of now, without joining a consumer group or committing anything. Any
    dead-letter topic taskflow wrote can be read, another app's too. Newest first: by the time
    each dead letter was written. Exit code 0; 1 when the broker cannot be reached (or stops
    answering while the topic is read); 2 for a usage error (the memory broker, whose topics live
    inside one process, or a topic that does not exist).
    """
    _configure_logging("WARNING", "text")
    app = _prepare(app_ref, app_dir, debug, {"broker": broker})
    found = _on_the_broker(operations.dead_letters(app, topic, limit), debug)
    if as_json:
        _dead_letters_json(found)
    else:
        _dead_letters_text(found)


def _dead_letters_text(found: operations.DeadLetters) -> None:
    for letter in found.newest:
        click.echo(_printable(_dead_letter_line(letter)))
    click.echo(
        f"{len(found.newest)} of {found.read} record(s) shown, newest first; "
        "counted over all of them:"
    )
    click.echo(_printable("  by reason     " + _counts(found.by_reason)))
    click.echo(_printable("  by exception  " + _counts(found.by_exception)))


# C0 and C1 control characters, and the two separators `str.splitlines` breaks lines at.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _printable(text: str) -> str:
    """`text` with its control characters escaped (``\\x1b``, ``\\n``): the `taskflow-` headers
    of a record are whatever its writer chose, and printed raw they could forge a line, clear
    the terminal or retitle it."""
    return _CONTROL.sub(lambda match: match[0].encode("unicode_escape").decode(), text)


def _dead_letter_line(letter: DeadLetterHeaders) -> str:
    written = _ms_time(letter.timestamp_ms) or f"(timestamp {letter.timestamp_ms} ms)"
    where = f"{letter.topic}[{letter.partition}]@{letter.offset}  {written}"
    if not letter.taskflow:
        return f"{where}  {operations.NOT_TASKFLOW}"
    origin = (
        f"{_known(letter.original_topic)}[{_known(letter.original_partition)}]"
        f"@{_known(letter.original_offset)}"
    )
    message = (letter.exception_message or "").splitlines()
    text = message[0] if message else ""
    if len(text) > MESSAGE_SHOWN or len(message) > 1:
        text = text[: MESSAGE_SHOWN - 1] + "…"
    return (
        f"{where}  from {origin}  group {_known(letter.consumer_group)}  {_known(letter.reason)}"
        f" after {_known(letter.attempts)} attempt(s)  {_known(letter.exception_type)}: {text}"
    )


def _known(value: object) -> str:
    """`value` as printed, or ``?`` for a header the record does not carry (or not as a number
    where one belongs)."""
    return "?" if value is None else str(value)


def _ms_time(timestamp_ms: int) -> str | None:
    """`timestamp_ms` in ISO 8601, or None beyond the years datetime has (a record's timestamp is
    whatever its producer chose)."""
    try:
        moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return moment.isoformat(timespec="milliseconds")


def _counts(counts: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts) or "none"


def _dead_letters_json(found: operations.DeadLetters) -> None:
    for letter in found.newest:
        row = {**dataclasses.asdict(letter), "time": _ms_time(letter.timestamp_ms)}
        click.echo(json.dumps(row, ensure_ascii=False))
    summary = {
        "shown": len(found.newest),
        "read": found.read,
        "by_reason": dict(found.by_reason),
        "by_exception_type": dict(found.by_exception),
    }
    click.echo(json.dumps({"summary": summary}, ensure_ascii=False))


@dlq.command(name="replay", cls=_Command)
@click.argument("app_ref", metavar="MODULE:APP")
@click.argument("topic")
@click.option(
    "--reason",
    type=click.Choice(replaying.REASONS),
    help="Only dead letters given up for this reason.",
)
@click.option(
    "--error",
    "error_type",
    metavar="TYPE",
    help="Only those whose exception is TYPE: its qualified name or its last part (KeyError).",
)
@click.option(
    "--since",
    metavar="TIME",
    help="Only those written at or after TIME: ISO 8601 (UTC without an offset), or a time "
    "before now such as 30m, 2h, 7d.",
)
@click.option("--limit", type=_WholeNumber(1, 1_000_000_000), help="Replay at most N.")
@click.option("--rate", metavar="RATE", help="Replay at most RATE, e.g. 100/s, 30/m, 1000/h.")
@click.option(
    "--group",
    metavar="NAME",
    help="The consumer group that keeps the replay's place (default: one named after TOPIC and "
    "the filters).",
)
@click.option("--dry-run", is_flag=True, help="List what would be replayed; change nothing.")
@_app_dir
@_broker
@_debug
def replay(
    app_ref: str,
    topic: str,
    reason: str | None,
    error_type: str | None,
    since: str | None,
    limit: int | None,
    rate: str | None,
    group: str | None,
    dry_run: bool,
    app_dir: str,
    broker: str | None,
    debug: bool,
) -> None:
    """Publish the dead letters on TOPIC back to the topic and partition each came from.

    Each goes back with its value, key and own headers, plus taskflow-replayed-from naming it.
    The replay keeps its place in a consumer group (printed; --group names another), so the
    same command run again resumes where it stopped, even after a crash, and replays nothing
    twice. A dead letter without its value or without taskflow headers is reported and skipped.
    Exit code 0 when it reached the topic's end or the limit; 1 when stopped by a signal
    (SIGINT, SIGTERM) or when the broker cannot be reached or fails; 2 for a usage error.
    """
    _configure_logging("WARNING", "text")
    app = _prepare(app_ref, app_dir, debug, {"broker": broker})
    try:
        filters = _replay_filters(reason, error_type, since)
        limiter = None if rate is None else _replay_rate(rate)
        if group is not None and not group.strip():
            raise ConfigurationError("--group must not be empty")
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    # The default group is named after the filters as typed, not what they match: say so where
    # the group is named, since a rerun spelt otherwise would replay the same dead letters again.
    spelling = "" if group else "a different filter spelling starts a new replay"
    group = group or replaying.default_group(topic, filters)

    def opened() -> None:
        if dry_run:
            note = f" ({spelling})" if spelling else ""
            click.echo(
                f"dry run of {topic}: nothing is published or committed; group {group}{note}"
            )
        else:
            note = f"; {spelling}" if spelling else ""
            click.echo(f"replaying {topic} with group {group} (the same command resumes{note})")

    work = _replaying(app, topic, filters, group, limit, limiter, dry_run, opened)
    try:
        summary = _on_the_broker(work, debug)
    except KeyboardInterrupt:
        click.echo("Error: interrupted again: stopped at once; the same command resumes", err=True)
        sys.exit(EXIT_UNCLEAN)
    click.echo(_replay_summary(summary, dry_run))
    if hint := _nothing_matched(summary, filters):
        click.echo(_printable(hint), err=True)
    if hint := _window_moves(summary, filters, group, dry_run):
        click.echo(hint, err=True)
    sys.exit(EXIT_UNCLEAN if summary.stopped else EXIT_CLEAN)


def _replay_rate(text: str) -> RateLimit:
    try:
        return rate_limit(text)
    except ConfigurationError:
        raise ConfigurationError(
            f"--rate takes a positive count per second, minute or hour (100/s, 30/m, 1000/h), "
            f"got {text!r}"
        ) from None


def _replay_filters(
    reason: str | None, error_type: str | None, since: str | None
) -> replaying.Filters:
    if error_type is not None and not error_type.strip():
        raise ConfigurationError("--error takes an exception type, e.g. KeyError; got ''")
    moment = None if since is None else replaying.parse_since(since, datetime.now(UTC))
    return replaying.Filters(reason, error_type and error_type.strip(), moment, since)


async def _replaying(
    app: App,
    topic: str,
    filters: replaying.Filters,
    group: str,
    limit: int | None,
    rate: RateLimit | None,
    dry_run: bool,
    opened: Callable[[], None],
) -> replaying.ReplaySummary:
    """The replay, stopped after the dead letter in hand by a first SIGINT or SIGTERM (a second
    one acts as without taskflow)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def stop(sig: signal.Signals) -> None:
        click.echo(f"{sig.name}: stopping after the dead letter in hand", err=True)
        stopping.set()
        for each in signals:
            loop.remove_signal_handler(each)

    for sig in signals:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await replaying.replay(
            app,
            topic,
            filters=filters,
            group=group,
            limit=limit,
            rate=rate,
            dry_run=dry_run,
            report=_replay_step,
            opened=opened,
            stopping=stopping,
        )
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _replay_step(step: replaying.Step) -> None:
    click.echo(_printable(_replay_line(step)))


def _replay_line(step: replaying.Step) -> str:
    letter = step.letter
    where = f"{letter.topic}[{letter.partition}]@{letter.offset}"
    target = "" if step.target is None else f"{step.target[0]}[{step.target[1]}]"
    if step.outcome == "replayed":
        return f"replayed {where} to {target}@{step.offset}"
    if step.outcome == "would replay":
        return f"would replay {where} to {target}  {letter.reason}  {letter.exception_type}"
    if step.outcome == "already replayed":
        return f"already replayed {where} to {target} (by an interrupted run): not again"
    return f"skipped {where}: {_skip_reason(step)}"


def _skip_reason(step: replaying.Step) -> str:
    letter = step.letter
    original = f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"
    if step.why == replaying.NOT_A_DEAD_LETTER:
        return (
            "it has no taskflow-reason header, so it is not a dead letter (a retry topic's "
            "record, whose retry stage delivers it)"
        )
    if step.why == replaying.VALUE_LEFT_OUT:
        return f"its value was left out ({letter.value_omitted}); the original is at {original}"
    if step.why == replaying.NO_TOPIC:
        return f"its original topic {letter.original_topic!r} does not exist"
    if step.why == replaying.NO_PARTITION:
        return f"its original partition {original} does not exist"
    if step.why == replaying.NO_ORIGIN:
        return (
            "its taskflow headers do not say where it came from (taskflow-original-topic, and "
            "taskflow-original-partition as a whole number)"
        )
    return "it has no taskflow headers, so where it came from is unknown"


def _window_moves(
    summary: replaying.ReplaySummary, filters: replaying.Filters, group: str, dry_run: bool
) -> str | None:
    """When a replay with a relative `--since` did not reach the end: how to go on with the
    same window, since the same command counts it again from its own start."""
    if dry_run or summary.finished or not filters.since_moves or filters.since is None:
        return None
    moment = filters.since.isoformat(timespec="seconds").replace("+00:00", "Z")
    return (
        f"note: --since {filters.since_text} counts back from each run's start, so the same "
        "command run later leaves out the dead letters that have aged out of its window "
        f"meanwhile; to go on with this run's window: --group {group} --since {moment}"
    )


def _nothing_matched(summary: replaying.ReplaySummary, filters: replaying.Filters) -> str | None:
    """When `--reason` or `--error` matched none of the dead letters read: what they were."""
    matched = summary.replayed + summary.already
    # Every skip but one without taskflow headers (which no filter can look at) came after a match.
    matched += sum(count for why, count in summary.skipped if why != replaying.NOT_TASKFLOW)
    if matched or not summary.filtered_out or not summary.finished:
        return None
    given, counts = [], []
    if filters.reason is not None:
        given.append(f"--reason {filters.reason}")
        counts.append("by reason " + _counts(summary.filtered_reasons))
    if filters.error is not None:
        given.append(f"--error {filters.error}")
        counts.append("by exception " + _counts(summary.filtered_exceptions))
    if not given:
        return None
    if filters.since_text is not None:  # then the types counted may be there, but older
        given.append(f"--since {filters.since_text}")
    return (
        f"nothing matched {' '.join(given)}; the {summary.filtered_out} dead letter(s) "
        f"filtered out were {'; '.join(counts)}"
    )


def _replay_summary(summary: replaying.ReplaySummary, dry_run: bool) -> str:
    skipped = sum(count for _, count in summary.skipped)
    why = f" ({_counts(summary.skipped)})" if skipped else ""
    counts = (
        f"{'would replay' if dry_run else 'replayed'} {summary.replayed}, "
        f"already replayed {summary.already}, skipped {skipped}{why}, "
        f"filtered out {summary.filtered_out}"
    )
    # A dry run commits nothing, so the same command does not go on from where it stopped.
    again = " (a dry run commits nothing: run again, it lists the same)"
    if summary.stopped:
        return f"{counts}; stopped{again if dry_run else ': the same command resumes'}"
    if not summary.finished:
        return (
            f"{counts}; the limit was reached{again if dry_run else ': the same command goes on'}"
        )
    return f"{counts}; the end of the topic was reached"
