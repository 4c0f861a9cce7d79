"""Settings: the value in effect of each App option, and where it came from.

Every App option that can be written as text has a ``TASKFLOW_*`` environment variable, and the
ones an operator changes for one run also have a ``taskflow`` flag. One order holds for all::

    CLI flag  >  TASKFLOW_* variable  >  App(...) argument  >  taskflow's default

What the code passes is the app's default; the environment is the deployment's say over it, and a
flag the operator's, for one run. An empty variable counts as unset. Kafka client options follow
the same order one option at a time: ``TASKFLOW_KAFKA_<OPTION>`` over ``broker_options[option]``,
for a ``kafka://`` broker only.

Pure logic, no I/O: parsing and checking values (each error names the argument, variable or flag
it came from), the order above, and masking secrets for display. `Settings.resolve` is the one
place the ``TASKFLOW_*`` variables of App options are read, when the App is made; the App holds the
result, and everything that uses an option reads it there (``app.settings``). The CLI puts its
flags over it (`Settings.with_flags`) and gives the app the new value; code that sets an option on
the app later goes through `Settings.with_code`; ``taskflow info`` shows `Settings.rows`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from taskflow.exceptions import ConfigurationError
from taskflow.redis_url import CLUSTER_SCHEMES, SCHEMES, SENTINEL_SCHEMES, RedisTarget

__all__ = [
    "DEFAULT_BROKER",
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_COMMIT_INTERVAL",
    "DEFAULT_HTTP_HOST",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "KAFKA_PREFIX",
    "OPTIONS",
    "POSITIVE_SECONDS",
    "Option",
    "Seconds",
    "Setting",
    "Settings",
    "Source",
    "flag",
    "flag_text",
    "mask_url",
    "number_text",
    "quoted",
    "shown",
    "shown_value",
    "size_text",
    "whole_number_text",
]

Source = Literal["flag", "env", "code", "default"]
KafkaParser = Callable[[Mapping[str, str]], Mapping[str, Any]]
"""Reads the ``TASKFLOW_KAFKA_*`` variables of an environment as typed aiokafka options."""

DEFAULT_BROKER: Final = "memory://"
DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0
DEFAULT_COMMIT_INTERVAL: Final = 1.0
DEFAULT_HTTP_HOST: Final = "0.0.0.0"  # every interface: probes come from the node
# A quarter of a 512 MiB pod: the rest is the interpreter and its libraries (about 60-100 MiB),
# the payloads handlers decode from the raw bytes (often several times their size) and their work.
DEFAULT_BUFFER_BYTES: Final = 64 * 2**20
MIN_BUFFER_BYTES: Final = 2**20  # below this a budget is smaller than one ordinary fetch
MAX_BUFFER_BYTES: Final = 2**40  # past this a value is a unit slip
KAFKA_PREFIX: Final = "TASKFLOW_KAFKA_"
MAX_PORT: Final = 65535
# Past these a value is a mistake (milliseconds written as seconds, "inf"), not a choice.
MAX_SHUTDOWN_TIMEOUT: Final = 86400.0  # a day
MAX_COMMIT_INTERVAL: Final = 3600.0  # an hour
MASK: Final = "***"
_SHOWN_MAX = 60  # characters of a refused value an error message repeats
_NUMBER_MAX = 30
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WHOLE = re.compile(r"[+-]?[0-9]+")
_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[A-Za-z]*)")
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_REDIS_SCHEMES = SCHEMES  # redis, rediss, unix, and the +cluster and +sentinel forms
# Option names whose values are never shown.
_SECRET = re.compile(r"password|secret|token|credential|sasl_oauth", re.IGNORECASE)
# A query parameter, in a URL or in anything shown as one, whose value is never shown: its name
# says password, secret, token, key, auth, credential or signature.
_SECRET_PARAMETER = re.compile(
    r"(?P<name>(?:^|[?&;#])[^=&;#?/@\s]*?(?:pass|pwd|secret|token|key|auth|credential|sig)"
    r"[^=&;#?/@\s]*=)[^&;#]*",
    re.IGNORECASE,
)


# -- checking values -----------------------------------------------------------------------
#
# Each check takes the value and the label of where it came from: the argument's name
# (`shutdown_timeout`), the variable (`TASKFLOW_SHUTDOWN_TIMEOUT`) or the flag
# (`--shutdown-timeout`), so that the error names what the person has to change.


def _got(value: object) -> str:
    return shown_value(value)


def shown_value(value: object) -> str:
    """`value` as an error message shows a value it refuses: text `quoted`, anything else short."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return quoted(value)
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python turns into text
        return f"a whole number of {value.bit_length() if isinstance(value, int) else '?'} bits"
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 1] + "…"


def quoted(text: str) -> str:
    """`text` as an error message shows a value it refuses: quoted, any secret masked, cut short.

    A value given in the wrong place may still be a URL with a password, and one of 5,000
    characters would bury the sentence around it.
    """
    masked = mask_url(text)
    if len(masked) > _SHOWN_MAX:
        masked = masked[: _SHOWN_MAX - 1] + "…"
    return repr(masked)


def number_text(text: str) -> float | None:
    """The number `text` writes in ASCII decimal (``5``, ``-1.5``, ``2e3``), or None.

    Stricter than `float`: no ``inf``, ``nan``, ``1_000`` or non-ASCII digits, and none of more
    than 30 characters, so that no text reads as a number that is not finite.
    """
    stripped = text.strip()
    if len(stripped) > _NUMBER_MAX or not _NUMBER.fullmatch(stripped):
        return None
    value = float(stripped)
    return value if math.isfinite(value) else None


def whole_number_text(text: str) -> int | None:
    """The whole number `text` writes in ASCII digits (``5``, ``-1``), or None; at most 30."""
    stripped = text.strip()
    if len(stripped) > _NUMBER_MAX or not _WHOLE.fullmatch(stripped):
        return None
    return int(stripped)


def size_text(text: str) -> int | None:
    """The bytes `text` writes: a whole number of bytes (``67108864``) or a number with a unit
    (``64MiB``, ``1.5 GiB``, ``500MB``, ``512KiB``), or None.

    Units, in any case: ``B``; ``KB``, ``MB``, ``GB``, ``TB`` (powers of 1000); ``KiB``, ``MiB``,
    ``GiB``, ``TiB`` (powers of 1024). A fraction is rounded to the nearest byte. Nothing else is
    read: no sign, no ``1_000``, no ``K`` or ``M`` alone (which would leave 1000 or 1024 a guess).
    """
    stripped = text.strip()
    found = _SIZE.fullmatch(stripped) if len(stripped) <= _NUMBER_MAX else None
    if found is None:
        return None
    unit = _SIZE_UNITS.get(found["unit"].lower())
    if unit is None:
        return None
    number: str = found["number"]
    if "." not in number:
        return int(number) * unit
    whole, _, fraction = number.partition(".")
    scale = int(10 ** len(fraction))
    return (int(whole + fraction) * unit * 2 + scale) // (2 * scale)  # exact, half rounds up


def _size_rule(label: str) -> str:
    return (
        f"{label} must be a size from 1MiB to 1TiB: bytes, or a number with a unit such as "
        "64MiB, 512MB or 1GiB"
    )


def _buffer_bytes(value: Any, label: str) -> int:
    """A budget given in code: a whole number of bytes, or text as the variable takes it."""
    if isinstance(value, str):
        return _buffer_bytes_text(value, label)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_BUFFER_BYTES <= value <= MAX_BUFFER_BYTES
    ):
        raise ConfigurationError(f"{_size_rule(label)}, got {_got(value)}")
    return value


def _buffer_bytes_text(text: str, label: str) -> int:
    value = size_text(text)
    if value is None or not MIN_BUFFER_BYTES <= value <= MAX_BUFFER_BYTES:
        raise ConfigurationError(f"{_size_rule(label)}, got {quoted(text)}")
    return value


@dataclass(frozen=True, slots=True)
class Seconds:
    """The rule a number of seconds is checked by: the one rule for every duration taskflow takes.

    An App option (``shutdown_timeout``, ``commit_interval``) runs from 0, which means "at once",
    to a `maximum` past which a value is a unit slip; a lease, a grace period or a timeout is more
    than 0 and finite. NaN, infinities and booleans are refused by both.

    Attributes:
        maximum: The largest value taken; infinite for no bound but finiteness.
        zero: Whether 0 is taken (else a value must be more than 0).
    """

    maximum: float = math.inf
    zero: bool = True

    def check(self, value: Any, label: str) -> float:
        """`value`, a number given in code or by a flag, as float seconds.

        Raises:
            ConfigurationError: naming `label` and the values taken.
        """
        if isinstance(value, bool) or not isinstance(value, int | float) or not self._takes(value):
            raise ConfigurationError(f"{self._rule(label)}, got {_got(value)}")
        return float(value)

    def parse(self, text: str, label: str) -> float:
        """The seconds `text` writes (a variable's or a flag's value), read by `number_text`.

        Raises:
            ConfigurationError: naming `label` and the values taken.
        """
        value = number_text(text)
        if value is None or not self._takes(value):
            raise ConfigurationError(f"{self._rule(label)}, got {quoted(text)}")
        return value

    def _takes(self, value: float) -> bool:
        low_ok = value >= 0 if self.zero else value > 0  # NaN is neither
        return low_ok and value <= self.maximum and math.isfinite(value)

    def _rule(self, label: str) -> str:
        if math.isinf(self.maximum):
            kind = "a number of seconds from 0" if self.zero else "a positive number of seconds"
            return f"{label} must be {kind}"
        low = "0" if self.zero else "more than 0"
        return f"{label} must be a number of seconds from {low} to {self.maximum:g}"


POSITIVE_SECONDS: Final = Seconds(zero=False)
"""More than 0 and finite: leases, grace periods, retentions and timeouts."""


def _port(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PORT:
        raise ConfigurationError(
            f"{label} must be a port number from 0 to {MAX_PORT} (0 picks a free one), "
            f"got {_got(value)}"
        )
    return value


def _port_text(text: str, variable: str) -> int:
    value = whole_number_text(text)
    if value is None or not 0 <= value <= MAX_PORT:
        raise ConfigurationError(
            f"{variable} must be a port number from 0 to {MAX_PORT}, got {quoted(text)}"
        )
    return value


def _host(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ConfigurationError(
            f"{label} must be an address to listen on, such as 127.0.0.1 or 0.0.0.0, "
            f"got {_got(value)}"
        )
    return value


def _host_text(text: str, variable: str) -> str:
    return _host(text, variable)


def flag(value: Any, label: str) -> bool:
    """`value` if it is True or False; nothing merely truthy.

    Raises:
        ConfigurationError: naming `label`.
    """
    if not isinstance(value, bool):
        raise ConfigurationError(f"{label} is True or False, got {_got(value)}")
    return value


def flag_text(text: str, label: str) -> bool:
    """The truth `text` writes: ``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``.

    The one reading of true or false in a variable: ``TASKFLOW_IDEMPOTENT`` and every
    true-or-false ``TASKFLOW_KAFKA_*`` option. Case and surrounding blanks do not matter.

    Raises:
        ConfigurationError: naming `label`.
    """
    lowered = text.strip().lower()
    if lowered not in _TRUE + _FALSE:
        raise ConfigurationError(f"{label} must be true or false, got {quoted(text)}")
    return lowered in _TRUE


def _broker(value: Any, label: str) -> Any:
    """A URL, or (from code only) a Broker object: the App checks a URL when it is built."""
    if not isinstance(value, str) and not (hasattr(value, "url") and hasattr(value, "consumer")):
        raise ConfigurationError(
            f"{label} is a broker URL such as kafka://host:9092 or a Broker, got {_got(value)}"
        )
    return value


def _broker_text(text: str, variable: str) -> str:
    return text


def _redis_url(value: Any, label: str) -> str:
    """A URL from code is checked to be text here, and a cluster or Sentinel one to be whole; the
    runner refuses a malformed plain one."""
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{label} is a Redis URL such as redis://localhost:6379/0, got {_got(value)}"
        )
    if _scheme(value) in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        RedisTarget.parse(value, label)
    return value


def _redis_url_text(text: str, variable: str) -> str:
    RedisTarget.parse(text, variable)
    return text


def _secret(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{label} is text, got {_got(value)}")
    return value


def _secret_text(text: str, variable: str) -> str:
    return text


_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]+")  # used with fullmatch: what Kafka allows
MAX_INSTANCE_ID: Final = 100  # leaves room, in Kafka's 249 characters, for the consumer's part


def _instance_id(value: Any, label: str) -> str:
    if (
        not isinstance(value, str)
        or not _INSTANCE_ID.fullmatch(value)
        or len(value) > MAX_INSTANCE_ID
    ):
        raise ConfigurationError(
            f"{label} is this replica's stable name (such as the pod name): letters, digits, "
            f"'.', '_' and '-', at most {MAX_INSTANCE_ID}, got {_got(value)}"
        )
    return value


def _instance_id_text(text: str, variable: str) -> str:
    return _instance_id(text.strip(), variable)


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower() if "://" in url else ""
    except ValueError:
        return ""


@dataclass(frozen=True, slots=True)
class Option:
    """One App option that the environment, and maybe a flag, can set.

    Attributes:
        name: The `App(...)` argument and attribute (the Redis credentials are settings only:
            they come from the environment, never from code).
        variable: Its environment variable.
        flag: Its CLI flag, if it has one.
        default: taskflow's default, used when nothing else gives a value.
        check: Checks a value given in code or by a flag: ``check(value, label)``.
        parse: Reads the variable's text: ``parse(text, variable)``.
    """

    name: str
    variable: str
    flag: str | None
    default: Any
    check: Callable[[Any, str], Any] = field(repr=False)
    parse: Callable[[str, str], Any] = field(repr=False)


OPTIONS: Final = (
    Option("broker", "TASKFLOW_BROKER", "--broker", None, _broker, _broker_text),
    Option("redis_url", "TASKFLOW_REDIS_URL", "--redis", None, _redis_url, _redis_url_text),
    Option("redis_username", "TASKFLOW_REDIS_USERNAME", None, None, _secret, _secret_text),
    Option("redis_password", "TASKFLOW_REDIS_PASSWORD", None, None, _secret, _secret_text),
    Option(
        "shutdown_timeout",
        "TASKFLOW_SHUTDOWN_TIMEOUT",
        "--shutdown-timeout",
        DEFAULT_SHUTDOWN_TIMEOUT,
        Seconds(MAX_SHUTDOWN_TIMEOUT).check,
        Seconds(MAX_SHUTDOWN_TIMEOUT).parse,
    ),
    Option(
        "commit_interval",
        "TASKFLOW_COMMIT_INTERVAL",
        None,
        DEFAULT_COMMIT_INTERVAL,
        Seconds(MAX_COMMIT_INTERVAL).check,
        Seconds(MAX_COMMIT_INTERVAL).parse,
    ),
    Option(
        "buffer_bytes",
        "TASKFLOW_BUFFER_BYTES",
        "--buffer-bytes",
        DEFAULT_BUFFER_BYTES,
        _buffer_bytes,
        _buffer_bytes_text,
    ),
    Option("idempotent", "TASKFLOW_IDEMPOTENT", None, False, flag, flag_text),
    Option("http_port", "TASKFLOW_HTTP_PORT", "--http-port", None, _port, _port_text),
    Option("http_host", "TASKFLOW_HTTP_HOST", "--http-host", DEFAULT_HTTP_HOST, _host, _host_text),
    Option(
        "instance_id",
        "TASKFLOW_INSTANCE_ID",
        "--instance-id",
        None,
        _instance_id,
        _instance_id_text,
    ),
)
"""The options read from the environment, in the order `taskflow info` lists them."""

_BY_NAME: Final = {option.name: option for option in OPTIONS}


# -- showing values ------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """`url` with its password, and any secret query parameter, replaced by ``***``.

    ``redis://:pw@host:6379/0`` becomes ``redis://:***@host:6379/0``; a user name without a
    password (``redis://pw@host``, which some clients read as the password) is masked whole. Any
    text is taken, valid URL or not: ``user:pw@host`` without a scheme, a password holding ``/``
    or ``@``, ``kafka://k:9092?password=pw`` all lose their secret. Everything before the last
    ``@`` (and after the scheme's ``//``) is user information, so a mistake masks too much rather
    than too little.
    """
    masked = _SECRET_PARAMETER.sub(lambda m: m["name"] + MASK, url)
    at = masked.rfind("@")
    if at < 0:
        return masked
    slashes = masked.find("//")
    start = slashes + 2 if 0 <= slashes < at else 0
    user, colon, _ = masked[start:at].partition(":")
    userinfo = f"{user}:{MASK}" if colon else MASK
    return masked[:start] + userinfo + masked[at:]


def shown(name: str, value: Any) -> str:
    """`value` of the setting `name` as `taskflow info` prints it, secrets masked."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if _SECRET.search(name):
        return MASK
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, int):
        return str(value)
    url = getattr(value, "url", None)  # a Broker object
    if isinstance(url, str):
        return f"{mask_url(url)} ({type(value).__name__})"
    return f"<{type(value).__name__}>"  # an SSLContext, a token provider: not text


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as `taskflow info` shows it.

    Attributes:
        name: The option (``broker_options.<option>`` for a Kafka option).
        value: The value in effect (not masked: use `shown`).
        source: ``flag``, ``env``, ``code`` or ``default``.
        origin: The flag or variable it came from, ``App(name=...)``, or ``""`` for a default.
    """

    name: str
    value: Any
    source: Source
    origin: str

    @property
    def shown(self) -> str:
        """The value as text, with any secret masked."""
        return shown(self.name, self.value)


# -- resolving -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layers:
    """What each source said, checked: the values the settings in effect are chosen from."""

    code: Mapping[str, Any]
    env: Mapping[str, Any]
    flags: Mapping[str, Any]
    code_options: Mapping[str, Any]
    kafka_variables: Mapping[str, str]  # the raw TASKFLOW_KAFKA_* variables, read when needed
    kafka_parser: KafkaParser | None


@dataclass(frozen=True, slots=True)
class Settings:
    """The App options in effect and where each came from; see the module docstring.

    Attributes:
        broker: A broker URL, a Broker object given in code, or None for ``memory://``.
        broker_options: The broker options, read-only: ``broker_options`` with, for Kafka,
            the ``TASKFLOW_KAFKA_<OPTION>`` variables over it.
        redis_url: The Redis URL, or None (``""`` in code also means no Redis).
        redis_username: The Redis user name when the URL has none, or None.
        redis_password: The Redis password when the URL has none, or None (never shown).
        shutdown_timeout: Seconds in-flight work may take to finish on shutdown.
        commit_interval: Seconds between offset commits.
        buffer_bytes: The bytes of fetched records the process holds at most, over every
            consumer (see `taskflow.workers.budget`).
        idempotent: The default of ``idempotent=`` for every registration.
        http_port: The operations endpoint's port, or None for no endpoint.
        http_host: The address the operations endpoint listens on.
        instance_id: This replica's stable name, from which each consumer's static group
            membership is made; None for dynamic membership.
        sources: Where each option came from, by name (``broker_options.<option>`` too).
    """

    broker: Any = None
    broker_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    redis_url: str | None = None
    redis_username: str | None = None
    redis_password: str | None = None
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    commit_interval: float = DEFAULT_COMMIT_INTERVAL
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    idempotent: bool = False
    http_port: int | None = None
    http_host: str = DEFAULT_HTTP_HOST
    instance_id: str | None = None
    sources: Mapping[str, Source] = field(default_factory=dict)
    _layers: _Layers | None = field(default=None, repr=False, compare=False)

    @classmethod
    def resolve(
        cls,
        code: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        *,
        kafka_parser: KafkaParser | None = None,
    ) -> Settings:
        """The settings from the App's arguments (`code`, None meaning "not given") and `environ`.

        Args:
            code: The App arguments by name: ``broker``, ``broker_options``, ``redis_url``,
                ``shutdown_timeout``, ``commit_interval``, ``buffer_bytes``, ``idempotent``,
                ``http_port``, ``http_host``, ``instance_id``.
            environ: The environment; default ``os.environ``.
            kafka_parser: Reads ``TASKFLOW_KAFKA_*`` variables as typed options; without one
                they are not read.

        Raises:
            ConfigurationError: for a bad argument or variable, naming it.
        """
        env = os.environ if environ is None else environ
        unknown = set(code) - set(_BY_NAME) - {"broker_options"}
        if unknown:
            raise ConfigurationError(f"unknown App options {sorted(unknown)}")
        given = {
            name: _BY_NAME[name].check(value, name)
            for name, value in code.items()
            if name in _BY_NAME and value is not None
        }
        from_env = {}
        for option in OPTIONS:
            text = env.get(option.variable, "").strip()
            if text:
                from_env[option.name] = option.parse(text, option.variable)
        layers = _Layers(
            code=given,
            env=from_env,
            flags={},
            code_options=_options(code.get("broker_options")),
            kafka_variables={
                name: raw
                for name, raw in env.items()
                if name.startswith(KAFKA_PREFIX) and len(name) > len(KAFKA_PREFIX)
            },
            kafka_parser=kafka_parser,
        )
        return _combine(layers)

    def with_flags(self, flags: Mapping[str, Any]) -> Settings:
        """These settings with CLI flags over them; a None flag was not given.

        `flags` is keyed by option name (``broker``, ``redis_url``, ``shutdown_timeout``,
        ``buffer_bytes``, ``http_port``, ``http_host``, ``instance_id``): only options that have
        a flag.

        Raises:
            ConfigurationError: for a bad flag value, naming the flag.
        """
        checked: dict[str, Any] = {}
        for name, value in flags.items():
            option = _BY_NAME.get(name)
            if option is None or option.flag is None:
                raise ConfigurationError(f"{name} has no CLI flag")
            if isinstance(value, str):  # typed on a command line: read like the variable
                checked[name] = option.parse(value, option.flag)
            elif value is not None:
                checked[name] = option.check(value, option.flag)
        layers = self._layers_or_empty()
        return _combine(replace(layers, flags={**layers.flags, **checked}))

    def with_code(self, values: Mapping[str, Any]) -> Settings:
        """These settings with values that code set on the app after it was made.

        ``app.redis_url = ...`` in a factory is code that ran after the environment was read: it is
        the code's last word, shown as ``code``, and the variable is not read again for it (None
        leaves the default). A flag still wins. For ``broker_options``, each option given is the
        code's, except one still holding the value its ``TASKFLOW_KAFKA_*`` variable gave.

        Raises:
            ConfigurationError: for a bad value, naming the attribute.
        """
        layers = self._layers_or_empty()
        code, env = dict(layers.code), dict(layers.env)
        options, variables = dict(layers.code_options), dict(layers.kafka_variables)
        for name, value in values.items():
            if name == "broker_options":
                options = {}
                for key, item in _options(value).items():
                    source = self.sources.get(f"broker_options.{key}")
                    if source == "env" and _same(item, self.broker_options.get(key)):
                        continue  # still the variable's value
                    options[key] = item
                    variables.pop(KAFKA_PREFIX + key.upper(), None)
                continue
            option = _BY_NAME.get(name)
            if option is None:
                raise ConfigurationError(f"unknown App option {name!r}")
            env.pop(name, None)
            if value is None:
                code.pop(name, None)
            else:
                code[name] = option.check(value, f"app.{name}")
        return _combine(
            replace(layers, code=code, env=env, code_options=options, kafka_variables=variables)
        )

    def variable(self, name: str) -> str | None:
        """The ``TASKFLOW_*`` variable that gave the option `name` (``broker_options.<option>``
        for a broker option), or None when a flag, the code or the default did."""
        if self.sources.get(name) != "env":
            return None
        _, dot, option = name.partition(".")
        return KAFKA_PREFIX + option.upper() if dot else _BY_NAME[name].variable

    @property
    def option_variables(self) -> Mapping[str, str]:
        """The ``TASKFLOW_KAFKA_*`` variable of each broker option the environment gave."""
        found = {name: self.variable(f"broker_options.{name}") for name in self.broker_options}
        return {name: variable for name, variable in found.items() if variable is not None}

    def rows(self) -> list[Setting]:
        """Every setting, each broker option on its own row, in `OPTIONS` order."""
        rows = [
            Setting(o.name, getattr(self, o.name), *self._where(o.name, o.flag)) for o in OPTIONS
        ]
        if rows[0].value is None:  # the broker's default
            rows[0] = replace(rows[0], value=DEFAULT_BROKER)
        for name in sorted(self.broker_options):
            key = f"broker_options.{name}"
            rows.append(Setting(key, self.broker_options[name], *self._where(key, None)))
        return rows

    def _where(self, name: str, flag: str | None) -> tuple[Source, str]:
        source = self.sources.get(name, "default")
        if source == "flag":
            return source, flag or ""
        if source == "env":
            return source, self.variable(name) or ""
        if source == "code":
            option = name.split(".", 1)
            return source, f"App({option[0]}=...)" if len(option) == 1 else f"App({name})"
        return source, ""

    def _layers_or_empty(self) -> _Layers:
        return self._layers or _Layers({}, {}, {}, {}, {}, None)


def _combine(layers: _Layers) -> Settings:
    """The settings in effect: for each option its flag, else its variable, else the code's
    value, else the default."""
    order: tuple[tuple[Source, Mapping[str, Any]], ...] = (
        ("flag", layers.flags),
        ("env", layers.env),
        ("code", layers.code),
    )
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for option in OPTIONS:
        values[option.name], sources[option.name] = option.default, "default"
        for source, layer in order:
            if option.name in layer:
                values[option.name], sources[option.name] = layer[option.name], source
                break
    options = dict(layers.code_options)
    for name in options:
        sources[f"broker_options.{name}"] = "code"
    if _is_kafka(values["broker"]) and layers.kafka_variables and layers.kafka_parser:
        for name, value in layers.kafka_parser(layers.kafka_variables).items():
            options[name] = value
            sources[f"broker_options.{name}"] = "env"
    return Settings(
        broker_options=MappingProxyType(options), sources=sources, _layers=layers, **values
    )


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(
            f"broker_options is a mapping of option names to values, got {value!r}"
        )
    return dict(value)


def _is_kafka(broker: Any) -> bool:
    return isinstance(broker, str) and _scheme(broker) == "kafka"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, str | int | float | bool) or a is None:
        return bool(a == b) and type(a) is type(b)
    return a is b
