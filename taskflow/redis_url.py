"""Redis URLs: which deployment a URL names, read without connecting.

Four forms, each with a TLS twin (``rediss`` for ``redis``):

- ``redis://[user:password@]host[:port][/db]`` and ``unix://``: one server, read by redis-py.
- ``redis+cluster://[user:password@]host[:port][,host[:port]…]``: a Redis Cluster; the hosts
  are nodes to start from, the client finds the rest. A cluster has one database, so no ``/db``.
- ``redis+sentinel://[user:password@]host[:port][,host[:port]…]/service[/db]``: the primary
  that Sentinel names `service`, followed across failovers. The hosts are Sentinels.

A password in the URL is the server's (the cluster nodes', or the primary's behind Sentinel); one
given apart (``TASKFLOW_REDIS_PASSWORD``) is used when the URL has none. Pure logic, no I/O:
`RedisTarget.parse` says what is wrong with a URL in one sentence, before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from taskflow.exceptions import ConfigurationError

__all__ = ["CLUSTER_SCHEMES", "SCHEMES", "SENTINEL_SCHEMES", "RedisTarget"]

Kind = Literal["single", "cluster", "sentinel"]

SINGLE_SCHEMES: Final = ("redis", "rediss", "unix")
CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
SCHEMES: Final = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES
"""Every scheme a Redis URL may have."""

DEFAULT_PORT: Final = 6379
DEFAULT_SENTINEL_PORT: Final = 26379
_MAX_PORT: Final = 65535


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """The deployment a Redis URL names.

    Attributes:
        kind: ``single``, ``cluster`` or ``sentinel``.
        url: The URL as given (for ``single``, what redis-py reads).
        tls: Whether connections use TLS.
        hosts: The cluster nodes to start from, or the Sentinels, as (host, port); none for
            ``single``.
        service: The primary's name for Sentinel; "" otherwise.
        db: The database number behind Sentinel (0 by default); 0 otherwise.
        username: The user name in the URL, if any.
        password: The password in the URL, if any.
    """

    kind: Kind
    url: str
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, label: str = "the Redis URL") -> RedisTarget:
        """What `url` names; `label` is where it came from, for the error.

        Raises:
            ConfigurationError: naming `label` and what is wrong, in one sentence.
        """
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in SCHEMES:
            raise ConfigurationError(
                f"{label} must be a redis://, rediss://, unix://, redis+cluster:// or "
                f"redis+sentinel:// URL, got {_shown(url)}"
            )
        if scheme in SINGLE_SCHEMES:
            return cls("single", url, tls=scheme == "rediss")
        return _parse_multi(scheme, rest, url, label)


def _parse_multi(scheme: str, rest: str, url: str, label: str) -> RedisTarget:
    sentinel = scheme in SENTINEL_SCHEMES
    if "?" in rest or "#" in rest:
        raise ConfigurationError(f"{label} takes no query options, got {_shown(url)}")
    at = rest.rfind("@")
    userinfo, rest = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    netloc, _, path = rest.partition("/")
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
    if not netloc:
        raise ConfigurationError(f"{label} names no host, got {_shown(url)}")
    hosts = tuple(_host_port(part, default_port, label, url) for part in netloc.split(","))
    username, password = _userinfo(userinfo)
    tls = scheme.startswith("rediss")
    if not sentinel:
        if path.strip("/"):
            raise ConfigurationError(
                f"{label} is a cluster URL, and a cluster has no database number: drop "
                f"'/{path}', got {_shown(url)}"
            )
        return RedisTarget("cluster", url, tls, hosts, username=username, password=password)
    service, _, db_text = path.strip("/").partition("/")
    if not service:
        raise ConfigurationError(
            f"{label} names no Sentinel service: write redis+sentinel://host:port/SERVICE, "
            f"got {_shown(url)}"
        )
    if db_text and not db_text.isdigit():
        raise ConfigurationError(
            f"{label} has a database that is not a number: {db_text!r}, got {_shown(url)}"
        )
    db = int(db_text) if db_text else 0
    return RedisTarget("sentinel", url, tls, hosts, unquote(service), db, username, password)


def _host_port(part: str, default: int, label: str, url: str) -> tuple[str, int]:
    if part.startswith("["):  # [::1]:6379
        host, _, tail = part[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = part.partition(":")
    if not host or any(c.isspace() for c in host):
        raise ConfigurationError(f"{label} has an empty host, got {_shown(url)}")
    if not port_text:
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) <= _MAX_PORT:
        raise ConfigurationError(
            f"{label} has a bad port {port_text!r} (1 to {_MAX_PORT}), got {_shown(url)}"
        )
    return host, int(port_text)


def _userinfo(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    if not colon:  # redis://secret@host: redis-py reads a lone name as the password
        return None, unquote(user)
    return unquote(user) or None, unquote(password)


def _shown(url: str) -> str:
    from taskflow.config import quoted  # config imports this module; quoted masks the secret

    return quoted(url)
