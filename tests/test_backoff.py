from __future__ import annotations

import random

import pytest

from taskflow.backoff import Backoff
from taskflow.exceptions import ConfigurationError


def test_waits_double_after_each_failure_up_to_the_maximum() -> None:
    backoff = Backoff(initial=1, maximum=30, jitter=0)

    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_the_multiplier_sets_the_growth() -> None:
    backoff = Backoff(initial=0.5, maximum=100, multiplier=3, jitter=0)

    assert [backoff.delay(n) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]


def test_a_multiplier_of_one_waits_the_same_every_time() -> None:
    backoff = Backoff(initial=2, maximum=30, multiplier=1, jitter=0)

    assert {backoff.delay(n) for n in range(1, 50)} == {2}


def test_zero_or_negative_failures_wait_the_initial_delay() -> None:
    backoff = Backoff(initial=1, maximum=30, jitter=0)

    assert backoff.delay(0) == backoff.delay(-3) == 1


@pytest.mark.parametrize("failures", [100, 10_000])
def test_many_failures_wait_the_maximum(failures: int) -> None:
    assert Backoff(initial=1, maximum=30, jitter=0).delay(failures) == 30


def test_a_huge_multiplier_waits_the_maximum_instead_of_overflowing() -> None:
    backoff = Backoff(initial=1, maximum=30, multiplier=1e10, jitter=0)

    assert backoff.delay(40) == 30


def test_jitter_scatters_each_wait_within_its_fraction() -> None:
    backoff = Backoff(initial=1, maximum=30, jitter=0.25)
    rng = random.Random(7)

    waits = [backoff.delay(3, rng) for _ in range(500)]

    assert all(3.0 <= wait <= 5.0 for wait in waits)
    assert min(waits) < 3.2
    assert max(waits) > 4.8


def test_jitter_never_pushes_a_wait_past_the_maximum() -> None:
    backoff = Backoff(initial=1, maximum=10, jitter=0.5)
    rng = random.Random(1)

    waits = [backoff.delay(failures, rng) for failures in range(1, 20) for _ in range(50)]

    assert max(waits) == 10
    assert min(backoff.delay(20, rng) for _ in range(200)) < 10


def test_the_same_seed_gives_the_same_waits() -> None:
    backoff = Backoff(initial=1, maximum=30, jitter=0.3)

    first = [backoff.delay(n, random.Random(42)) for n in range(1, 10)]
    second = [backoff.delay(n, random.Random(42)) for n in range(1, 10)]
    other = [backoff.delay(n, random.Random(43)) for n in range(1, 10)]

    assert first == second
    assert first != other


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial": 0}, "0 < initial <= maximum"),
        ({"initial": -1}, "0 < initial <= maximum"),
        ({"initial": 5, "maximum": 1}, "0 < initial <= maximum"),
        ({"maximum": float("inf")}, "0 < initial <= maximum"),
        ({"initial": float("nan")}, "0 < initial <= maximum"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"multiplier": float("nan")}, "multiplier must be >= 1"),
        ({"jitter": -0.1}, r"jitter is a fraction in \[0, 1\)"),
        ({"jitter": 1}, r"jitter is a fraction in \[0, 1\)"),
        ({"jitter": float("nan")}, r"jitter is a fraction in \[0, 1\)"),
        ({"initial": "1"}, "initial is a number"),
        ({"maximum": True}, "maximum is a number"),
    ],
    ids=repr,
)
def test_an_invalid_configuration_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Backoff(**options)  # type: ignore[arg-type]
