"""Kafka's default partitioner for keyed records: murmur2 of the key, modulo the partition count.

The memory broker places a keyed record with it, so a key lands on the partition number it would
get on Kafka (from the Java client, aiokafka or librdkafka's ``murmur2_random``). It lives here, not
in aiokafka, so that `memory://` apps never import the Kafka client.
"""

from __future__ import annotations

import struct

__all__ = ["murmur2", "partition_for_key"]

_SEED = 0x9747B28C
_M = 0x5BD1E995  # the mixing constant of MurmurHash2
_R = 24
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I")  # the body is read as little-endian 32-bit words


def murmur2(data: bytes) -> int:
    """MurmurHash2 of `data` as Kafka computes it (``Utils.murmur2``), as an unsigned 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    body = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:body]):
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[body:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` among `partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
