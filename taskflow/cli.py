"""The command line: ``taskflow run module:app`` and ``taskflow info module:app``.

Every mistake a person can make on the command line (a module that does not import, a missing
attribute, something that is not an App, a bad broker URL) ends with one line on stderr and exit
code 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

from taskflow import logfmt, otel
from taskflow.app import App
from taskflow.exceptions import AppLoadError, ConfigurationError, TaskflowError
from taskflow.runner import EXIT_CLEAN, EXIT_UNCLEAN, serve

__all__ = ["load_app", "main"]

EXIT_USAGE = 2

logger = logging.getLogger("taskflow")


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


def _prepare(reference: str, app_dir: str, debug: bool, configure: Callable[[App], None]) -> App:
    try:
        app = load_app(reference, app_dir)
        configure(app)
    except TaskflowError as exc:
        _fail(str(exc), debug)
    return app


def _configure(
    broker: str | None, redis: str | None, timeout: float | None
) -> Callable[[App], None]:
    def apply(app: App) -> None:
        if broker is not None:
            _check_broker_url(broker, app)
            app.broker = broker
        elif isinstance(app.broker, str) or app.broker is None:
            _check_broker_url(app.broker_url, app)
        if redis is not None:
            app.redis_url = redis
        if timeout is not None:
            if not timeout >= 0:  # also refuses NaN
                raise ConfigurationError(
                    f"--shutdown-timeout must be a number of seconds >= 0, got {timeout:g}"
                )
            app.shutdown_timeout = timeout

    return apply


def _check_broker_url(url: str, app: App) -> None:
    from taskflow.brokers import broker_from_url

    try:
        broker_from_url(url, app.broker_options)
    except ConfigurationError:
        raise
    except ValueError as exc:  # urlsplit's own complaints, e.g. "Invalid IPv6 URL"
        raise ConfigurationError(f"malformed broker URL {url!r}: {exc}") from exc


_app_dir = click.option(
    "--app-dir",
    default=".",
    show_default=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory added to sys.path before importing the app.",
)
_broker = click.option(
    "--broker", envvar="TASKFLOW_BROKER", help="memory:// or kafka://host:port[,…]"
)
_redis = click.option(
    "--redis", envvar="TASKFLOW_REDIS_URL", help="Redis URL, e.g. redis://localhost:6379/0"
)
_debug = click.option("--debug", is_flag=True, help="Show tracebacks of errors.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskflow")
def main() -> None:
    """taskflow: Kafka consumers and periodic tasks as asyncio workers."""


@main.command()
@click.argument("app_ref", metavar="MODULE:APP")
@_app_dir
@_broker
@_redis
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"], case_sensitive=False),
)
@click.option(
    "--shutdown-timeout", type=float, help="Seconds to finish in-flight work on shutdown."
)
@_debug
def run(
    app_ref: str,
    app_dir: str,
    broker: str | None,
    redis: str | None,
    log_level: str,
    log_format: str,
    shutdown_timeout: float | None,
    debug: bool,
) -> None:
    """Run the app's workers until SIGINT or SIGTERM, then shut down gracefully.

    Exit code 0 after a clean shutdown, 1 when work had to be cancelled or startup failed, 2 for a
    usage error.
    """
    logfmt.configure(log_level, "json" if log_format.lower() == "json" else "text")
    app = _prepare(app_ref, app_dir, debug, _configure(broker, redis, shutdown_timeout))
    try:
        flush_telemetry = otel.configure_from_env(app.name)
    except ConfigurationError as exc:
        _fail(str(exc), debug)
    try:
        report = asyncio.run(serve(app))
    except ConfigurationError as exc:
        _fail(str(exc), debug)
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
    sys.exit(EXIT_CLEAN if report.clean else EXIT_UNCLEAN)


@main.command()
@click.argument("app_ref", metavar="MODULE:APP")
@_app_dir
@_broker
@_redis
@_debug
def info(app_ref: str, app_dir: str, broker: str | None, redis: str | None, debug: bool) -> None:
    """List the app's workers: kind, topics and group, or schedule and next run."""
    app = _prepare(app_ref, app_dir, debug, _configure(broker, redis, None))
    now = app.clock.now()
    click.echo(
        f"app {app.name}  broker {app.broker_url}  shutdown timeout {app.shutdown_timeout:g}s"
    )
    for spec in app.consumers:
        click.echo(
            f"  consumer  {spec.name}  topics {', '.join(spec.topics)}  group {spec.group}"
            f"  ordering {spec.ordering}"
        )
    for task in app.schedules:
        nxt = task.schedule.next_after(now).isoformat()
        click.echo(f"  periodic  {task.name}  {task.schedule.describe()}  next {nxt}")
    for worker in app.function_workers:
        click.echo(f"  worker    {worker.name}")
    for custom in app.workers:
        click.echo(f"  worker    {custom.name}  ({type(custom).__qualname__})")
