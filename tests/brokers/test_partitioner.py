"""Kafka's default partitioner, taskflow's own copy: the same hash and partition as aiokafka's."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from taskflow.brokers.partitioner import murmur2, partition_for_key


@given(st.binary(max_size=256))
def test_murmur2_is_the_hash_aiokafka_computes(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=1000))
def test_a_key_gets_the_partition_kafkas_default_partitioner_picks(
    key: bytes, partitions: int
) -> None:
    everything = list(range(partitions))
    assert partition_for_key(key, partitions) == DefaultPartitioner()(key, everything, everything)


def test_murmur2_matches_the_java_clients_known_values() -> None:
    # From Kafka's UtilsTest.testMurmur2 (the Java client's signed ints, here as unsigned).
    known = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert {key: murmur2(key) for key in known} == {k: v & 0xFFFFFFFF for k, v in known.items()}
