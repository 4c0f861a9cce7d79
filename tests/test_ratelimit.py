"""Rate limits as values: the forms `rate_limit()` accepts, the ones it refuses, and per_second."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from taskflow.exceptions import ConfigurationError
from taskflow.ratelimit import RateLimit, rate_limit

SECOND, MINUTE, HOUR = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [
        ("100/s", 100, SECOND),
        ("100/sec", 100, SECOND),
        ("100/second", 100, SECOND),
        ("100/seconds", 100, SECOND),
        ("100/secs", 100, SECOND),
        ("30/m", 30, MINUTE),
        ("30/min", 30, MINUTE),
        ("30/minute", 30, MINUTE),
        ("30/minutes", 30, MINUTE),
        ("30/mins", 30, MINUTE),
        ("1000/h", 1000, HOUR),
        ("1000/hour", 1000, HOUR),
        ("1000/hours", 1000, HOUR),
        ("2.5/s", 2.5, SECOND),
        (" 100 / s ", 100, SECOND),
        ("100/S", 100, SECOND),
        ("30/Min", 30, MINUTE),
    ],
)
def test_accepted_forms(text: str, count: float, per: timedelta) -> None:
    assert rate_limit(text) == RateLimit(count, per=per)


def test_a_rate_limit_value_passes_through_unchanged() -> None:
    limit = RateLimit(7, per=timedelta(seconds=2))
    assert rate_limit(limit) is limit


def test_the_default_period_is_one_second() -> None:
    assert RateLimit(100) == rate_limit("100/s")


@pytest.mark.parametrize(
    "value",
    [
        "100",
        "/s",
        "100/",
        "abc",
        "100/d",
        "100/day",
        "100/fortnight",
        "100/ms",
        "100/hs",
        "-5/s",
        "1e3/s",
        ".5/s",
        "100 per s",
        "",
        100,
        None,
        timedelta(seconds=1),
    ],
)
def test_unknown_forms_are_refused_in_one_sentence_naming_the_accepted_ones(value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        rate_limit(value)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"unknown rate limit {value!r}: write '100/s', '30/m' or '1000/h', "
        "or pass RateLimit(count, per=timedelta(...))"
    )


@pytest.mark.parametrize("text", ["0/s", "0.0/m", "00/h"])
def test_a_zero_count_is_refused_as_written(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        rate_limit(text)
    assert str(caught.value) == f"a rate limit count must be positive, got {text!r}"


@pytest.mark.parametrize("count", [0, -1, math.nan, math.inf])
def test_a_count_must_be_a_positive_finite_number(count: float) -> None:
    with pytest.raises(ConfigurationError, match=r"^a rate limit count must be positive, got "):
        RateLimit(count)


@pytest.mark.parametrize("count", [True, "100", None])
def test_a_count_must_be_a_number(count: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^a rate limit count is a number, got "):
        RateLimit(count)  # type: ignore[arg-type]


@pytest.mark.parametrize("per", [timedelta(0), timedelta(seconds=-1), 1, None])
def test_a_period_must_be_a_positive_timedelta(per: object) -> None:
    with pytest.raises(
        ConfigurationError, match=r"^a rate limit period must be a positive timedelta, got "
    ):
        RateLimit(1, per=per)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("100/s", 100.0),
        ("30/m", 0.5),
        ("1800/h", 0.5),
        (RateLimit(5, per=timedelta(milliseconds=500)), 10.0),
        (RateLimit(1, per=timedelta(days=1)), 1 / 86400),
    ],
)
def test_per_second(limit: RateLimit | str, expected: float) -> None:
    assert rate_limit(limit).per_second == pytest.approx(expected)


def test_a_rate_limit_reads_as_count_per_seconds() -> None:
    assert str(rate_limit("30/m")) == "30/60s"
    assert str(RateLimit(2.5)) == "2.5/1s"
