from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from taskflow.exceptions import ConfigurationError
from taskflow.schedule import EPOCH, Interval, Schedule, interval

NOON = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def since_epoch(moment: datetime) -> timedelta:
    return moment - EPOCH


@pytest.mark.parametrize(
    ("period", "moment", "expected"),
    [
        (timedelta(minutes=5), NOON + timedelta(minutes=3), NOON + timedelta(minutes=5)),
        (timedelta(seconds=7), EPOCH + timedelta(seconds=20), EPOCH + timedelta(seconds=21)),
        (timedelta(seconds=1.5), EPOCH + timedelta(seconds=4), EPOCH + timedelta(seconds=4.5)),
        (timedelta(days=1), NOON, datetime(2026, 1, 2, tzinfo=UTC)),
    ],
    ids=["5m", "7s", "1.5s", "1d"],
)
def test_next_fire_time_is_the_next_multiple_of_the_period_since_the_epoch(
    period: timedelta, moment: datetime, expected: datetime
) -> None:
    assert Interval(period).next_after(moment) == expected


@pytest.mark.parametrize(
    "period", [timedelta(seconds=7), timedelta(seconds=1.5), timedelta(days=1)], ids=str
)
def test_next_fire_time_is_on_the_grid_whatever_the_start_time(period: timedelta) -> None:
    start = datetime(2026, 3, 14, 15, 9, 26, 535_897, tzinfo=UTC)

    fire = Interval(period).next_after(start)

    assert since_epoch(fire) % period == timedelta(0)
    assert start < fire <= start + period


def test_a_moment_exactly_on_the_grid_fires_one_period_later() -> None:
    schedule = Interval(timedelta(minutes=5))

    assert schedule.next_after(NOON) == NOON + timedelta(minutes=5)


def test_a_microsecond_before_a_grid_point_fires_on_that_point() -> None:
    schedule = Interval(timedelta(seconds=7))
    point = EPOCH + timedelta(seconds=7 * 1000)

    assert schedule.next_after(point - timedelta(microseconds=1)) == point


@pytest.mark.parametrize(
    "period", [timedelta(seconds=7), timedelta(seconds=1.5), timedelta(days=1)], ids=str
)
def test_ten_thousand_consecutive_ticks_do_not_drift(period: timedelta) -> None:
    schedule = Interval(period)
    previous = schedule.next_after(datetime(2026, 1, 1, 0, 0, 3, 141_592, tzinfo=UTC))

    for _ in range(10_000):
        fire = schedule.next_after(previous)
        assert fire - previous == period
        assert since_epoch(fire) % period == timedelta(0)
        previous = fire


def test_aware_non_utc_moments_are_placed_on_the_utc_grid() -> None:
    tokyo = timezone(timedelta(hours=9))
    odd_offset = timezone(timedelta(hours=5, minutes=45))
    schedule = Interval(timedelta(hours=1))

    assert schedule.next_after(datetime(2026, 1, 1, 21, 30, tzinfo=tokyo)) == NOON + timedelta(
        hours=1
    )
    # 17:45+05:45 is exactly 12:00 UTC: on the UTC grid, so strictly after means 13:00 UTC
    assert schedule.next_after(datetime(2026, 1, 1, 17, 45, tzinfo=odd_offset)) == (
        NOON + timedelta(hours=1)
    )


def test_fire_times_are_returned_in_utc() -> None:
    moment = datetime(2026, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))

    assert Interval(timedelta(minutes=1)).next_after(moment).tzinfo is UTC


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        Interval(timedelta(minutes=1)).next_after(datetime(2026, 1, 1, 12, 0))


def test_an_interval_is_a_schedule() -> None:
    assert isinstance(Interval(timedelta(seconds=1)), Schedule)


@pytest.mark.parametrize("period", [timedelta(0), timedelta(seconds=-1)], ids=str)
def test_an_interval_needs_a_positive_period(period: timedelta) -> None:
    with pytest.raises(ConfigurationError, match="must be positive"):
        Interval(period)


def test_an_interval_period_must_be_a_timedelta() -> None:
    with pytest.raises(ConfigurationError, match="timedelta"):
        Interval(5)  # type: ignore[arg-type]


# -- interval() ----------------------------------------------------------------------------


def test_interval_takes_a_timedelta() -> None:
    assert interval(timedelta(minutes=5)) == Interval(timedelta(minutes=5))


@pytest.mark.parametrize(("seconds", "expected"), [(30, 30_000_000), (1.5, 1_500_000)])
def test_interval_takes_a_number_of_seconds(seconds: float, expected: int) -> None:
    assert interval(seconds).period == timedelta(microseconds=expected)


def test_interval_unit_keywords_add_up() -> None:
    period = interval(days=1, hours=2, minutes=3, seconds=4.5).period

    assert period == timedelta(days=1, hours=2, minutes=3, seconds=4.5)


def test_interval_without_a_period_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs a period"):
        interval()


def test_interval_with_both_forms_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="either positionally or with"):
        interval(10, seconds=5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: interval(0),
        lambda: interval(timedelta(0)),
        lambda: interval(-5),
        lambda: interval(timedelta(seconds=-5)),
        lambda: interval(minutes=-1),
        lambda: interval(minutes=1, seconds=-60),
    ],
    ids=["zero", "zero timedelta", "negative", "negative timedelta", "negative unit", "sum zero"],
)
def test_interval_refuses_a_period_that_is_not_positive(call: object) -> None:
    with pytest.raises(ConfigurationError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("every", [True, "5", "5s", [5]], ids=repr)
def test_interval_refuses_a_period_that_is_not_a_timedelta_or_number(every: object) -> None:
    with pytest.raises(ConfigurationError, match="timedelta or a number of seconds"):
        interval(every)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [True, "5", None], ids=repr)
def test_interval_refuses_unit_keywords_that_are_not_numbers(amount: object) -> None:
    with pytest.raises(ConfigurationError, match="minutes= is a number"):
        interval(minutes=amount)  # type: ignore[arg-type]


@pytest.mark.parametrize("every", [float("nan"), float("inf"), 1e20], ids=repr)
def test_interval_refuses_a_period_that_is_not_a_finite_time(every: float) -> None:
    with pytest.raises(ConfigurationError, match="finite"):
        interval(every)


# -- describe() ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "text"),
    [
        (timedelta(minutes=5), "every 5m"),
        (timedelta(hours=2), "every 2h"),
        (timedelta(hours=25), "every 25h"),
        (timedelta(days=1), "every 1d"),
        (timedelta(seconds=7), "every 7s"),
        (timedelta(seconds=90), "every 90s"),
        (timedelta(seconds=1.5), "every 1.5s"),
        (timedelta(microseconds=250), "every 0.00025s"),
        (timedelta(seconds=1_234_567), "every 1234567s"),
        (timedelta(days=1, microseconds=1), "every 86400.000001s"),
    ],
    ids=str,
)
def test_describe_names_the_period_in_its_largest_whole_unit(period: timedelta, text: str) -> None:
    assert Interval(period).describe() == text
