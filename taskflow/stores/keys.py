"""Every Redis key taskflow writes, in one place.

Each key is ``taskflow:{<tag>}:<kind>[:<rest>]``. The braces are a Redis Cluster *hash tag*: a
cluster places a key by the part between the first ``{`` and ``}`` only, so every key with one tag
lives on one node, and a script may touch all of them at once. The tag is the registration the key
belongs to, so what one script touches always shares it.

| Key | Holds | Writer |
| --- | --- | --- |
| ``taskflow:{app:task}:tick:<unix seconds>`` | the owner token that claimed one tick | scheduler |
| ``taskflow:{app:task}:running`` | the owner token of the run holding the lease | scheduler |
| ``taskflow:{app:task}:last`` | a hash: tick, time, replica, outcome, duration | scheduler |
| ``taskflow:{app:task}:next`` | the next tick, ISO 8601 UTC | scheduler |
| ``taskflow:{app:task}:idem:<tick ISO>`` | a periodic run's claim or done mark | idempotency |
| ``taskflow:{group}:idem:<identity>`` | a keyed message's claim or done mark | idempotency |
| ``taskflow:{group}:offsets:<topic>:<p>`` | a hash: ``base``, offsets done above | idempotency |
| ``taskflow:{group}:owner:<topic>:<p>`` | the token holding partition p's lease | idempotency |
| ``taskflow:{app:consumer}:ratelimit`` | the limit's theoretical arrival time (µs) | rate limit |
| ``taskflow:{app:fleet}:replica:<id>`` | a replica's status snapshot (JSON), short TTL | fleet |
| ``taskflow:{app:fleet}:seen`` | a hash: replica → identity, last snapshot time | fleet |

The schedule's claim script touches the tick, ``running``, ``last`` and ``next`` keys of one task:
they share the ``{app:task}`` tag. The idempotency scripts touch the keys of one consumer group
(``{group}``): a fetched batch, all partitions, is claimed in one call. A message's identity is its
``idempotency_key`` or its ``idempotency-key`` header; a message with neither is known by its
offset, in its partition's ``offsets`` hash (`taskflow.stores.ledger`). The rate limit's script
touches one key. The fleet's script writes a snapshot and the ``seen`` record together: they share
the ``{app:fleet}`` tag.
"""

from __future__ import annotations

__all__ = [
    "fleet",
    "idempotency",
    "offsets",
    "partition_owner",
    "rate_limit",
    "schedule",
    "tick",
    "tick_idempotency",
]

PREFIX = "taskflow"


def _tag(*parts: str) -> str:
    return "{" + ":".join(parts) + "}"


def schedule(app: str, task: str, suffix: str) -> str:
    """``taskflow:{app:task}:<suffix>``: ``tick:<unix s>``, ``running``, ``last`` or ``next``."""
    return f"{PREFIX}:{_tag(app, task)}:{suffix}"


def tick(app: str, task: str, unix: str) -> str:
    """The claim of one tick: ``taskflow:{app:task}:tick:<unix seconds>``."""
    return schedule(app, task, f"tick:{unix}")


def idempotency(group: str, identity: str) -> str:
    """A consumed message's claim: ``taskflow:{group}:idem:<identity>``."""
    return f"{PREFIX}:{_tag(group)}:idem:{identity}"


def offsets(group: str, topic: str, partition: int) -> str:
    """A partition's ledger: ``taskflow:{group}:offsets:<topic>:<partition>``."""
    return f"{PREFIX}:{_tag(group)}:offsets:{topic}:{partition}"


def partition_owner(group: str, topic: str, partition: int) -> str:
    """A partition's lease: ``taskflow:{group}:owner:<topic>:<partition>``."""
    return f"{PREFIX}:{_tag(group)}:owner:{topic}:{partition}"


def tick_idempotency(app: str, task: str, tick_iso: str) -> str:
    """An idempotent periodic run's claim: ``taskflow:{app:task}:idem:<tick ISO>``."""
    return f"{PREFIX}:{_tag(app, task)}:idem:{tick_iso}"


def rate_limit(app: str, consumer: str) -> str:
    """A global rate limit: ``taskflow:{app:consumer}:ratelimit``."""
    return f"{PREFIX}:{_tag(app, consumer)}:ratelimit"


def fleet(app: str, suffix: str) -> str:
    """The fleet's records: ``taskflow:{app:fleet}:<suffix>``, ``replica:<replica>`` or ``seen``."""
    return f"{PREFIX}:{_tag(app, 'fleet')}:{suffix}"
