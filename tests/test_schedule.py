from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from taskflow import App
from taskflow.exceptions import ConfigurationError
from taskflow.schedule import EPOCH, Cron, Interval, Schedule, interval

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


# -- Cron ----------------------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")


def fires(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """The next `count` fire times after `start`, each computed from the one before."""
    times, moment = [], start
    for _ in range(count):
        moment = schedule.next_after(moment)
        times.append(moment)
    return times


def local(times: list[datetime], zone: ZoneInfo = BERLIN) -> list[str]:
    return [moment.astimezone(zone).isoformat() for moment in times]


def test_a_cron_fires_at_the_times_its_expression_names_in_utc() -> None:
    schedule = Cron("*/5 * * * *")

    assert schedule.next_after(NOON + timedelta(minutes=3)) == NOON + timedelta(minutes=5)
    assert schedule.next_after(NOON + timedelta(minutes=5)) == NOON + timedelta(minutes=10)
    assert schedule.next_after(NOON + timedelta(minutes=4, seconds=59.5)) == NOON + timedelta(
        minutes=5
    )
    assert schedule.next_after(NOON).tzinfo is UTC


def test_a_cron_reads_its_expression_in_its_time_zone() -> None:
    schedule = Cron("30 2 * * *", tz="Europe/Berlin")

    # 02:30 in Berlin is 01:30 UTC in winter (UTC+1) and 00:30 UTC in summer (UTC+2).
    assert schedule.next_after(datetime(2026, 1, 10, tzinfo=UTC)) == datetime(
        2026, 1, 10, 1, 30, tzinfo=UTC
    )
    assert schedule.next_after(datetime(2026, 7, 10, tzinfo=UTC)) == datetime(
        2026, 7, 10, 0, 30, tzinfo=UTC
    )
    assert Cron("0 9 * * *", tz=BERLIN) == Cron("0 9 * * *", tz="Europe/Berlin")


def test_a_cron_with_a_sixth_field_fires_on_seconds() -> None:
    schedule = Cron("* * * * * */10")  # croniter's order: the seconds come last

    assert fires(schedule, NOON + timedelta(seconds=3), 3) == [
        NOON + timedelta(seconds=10),
        NOON + timedelta(seconds=20),
        NOON + timedelta(seconds=30),
    ]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("@hourly", datetime(2026, 1, 1, 13, 0, tzinfo=UTC)),
        ("0 0 L * *", datetime(2026, 1, 31, tzinfo=UTC)),  # the last day of the month
        ("0 0 * * 5#3", datetime(2026, 1, 16, tzinfo=UTC)),  # the third Friday
        ("0 0 * * L5", datetime(2026, 1, 30, tzinfo=UTC)),  # the last Friday
        ("0 9 17W * *", datetime(2026, 1, 16, 9, tzinfo=UTC)),  # Sat 17th: Friday before
        ("0 0 ? * mon", datetime(2026, 1, 5, tzinfo=UTC)),
        ("0 0 1 1 * 0 2030", datetime(2030, 1, 1, tzinfo=UTC)),  # a year field
    ],
)
def test_a_cron_takes_croniters_extensions(expr: str, expected: datetime) -> None:
    assert Cron(expr).next_after(NOON) == expected


def test_h_hashes_the_hash_id_alike_everywhere_and_apart_for_other_ids() -> None:
    one = Cron("H H * * *", hash_id="billing:report")
    again = Cron("H H * * *", hash_id="billing:report")
    other = Cron("H H * * *", hash_id="billing:cleanup")

    assert fires(one, NOON, 3) == fires(again, NOON, 3)
    assert fires(one, NOON, 3) != fires(other, NOON, 3)
    assert one.hashed
    assert not Cron("0 * * * *").hashed


# croniter's documented DST rules (its tests test_std_dst, test_dst_iter, test_dst_hourly),
# checked on Berlin's 2026 changes: 29 March 02:00 -> 03:00, 25 October 03:00 -> 02:00.


def test_spring_forward_an_hourly_cron_skips_the_hour_that_does_not_exist() -> None:
    times = fires(Cron("0 * * * *", tz="Europe/Berlin"), datetime(2026, 3, 28, 23, tzinfo=UTC), 4)

    assert local(times) == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 does not exist
        "2026-03-29T04:00:00+02:00",
        "2026-03-29T05:00:00+02:00",
    ]


def test_spring_forward_a_time_in_the_gap_fires_when_the_gap_ends() -> None:
    times = fires(Cron("30 2 * * *", tz="Europe/Berlin"), datetime(2026, 3, 28, tzinfo=UTC), 3)

    assert local(times) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist: the first moment after the gap
        "2026-03-30T02:30:00+02:00",
    ]


def test_fall_back_an_hourly_cron_fires_in_both_copies_of_the_repeated_hour() -> None:
    times = fires(Cron("0 * * * *", tz="Europe/Berlin"), datetime(2026, 10, 24, 23, tzinfo=UTC), 4)

    assert local(times) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",  # the same wall time an hour later
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]
    assert [t.hour for t in times] == [0, 1, 2, 3]  # UTC: one hour apart, nothing skipped


def test_fall_back_a_daily_time_in_the_repeated_hour_fires_twice() -> None:
    times = fires(Cron("30 2 * * *", tz="Europe/Berlin"), datetime(2026, 10, 24, 12, tzinfo=UTC), 3)

    assert local(times) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ]


def test_a_daily_cron_outside_the_changes_keeps_its_wall_time() -> None:
    times = fires(Cron("0 9 * * *", tz="Europe/Berlin"), datetime(2026, 3, 28, tzinfo=UTC), 3)

    assert local(times) == [
        "2026-03-28T09:00:00+01:00",
        "2026-03-29T09:00:00+02:00",
        "2026-03-30T09:00:00+02:00",
    ]
    assert [t.hour for t in times] == [8, 7, 7]


def test_a_cron_is_a_schedule_that_describes_itself() -> None:
    assert isinstance(Cron("0 * * * *"), Schedule)
    assert Cron("*/5  * * * *", tz="Europe/Berlin").describe() == (
        "cron '*/5 * * * *' in Europe/Berlin"
    )


def test_a_cron_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        Cron("0 * * * *").next_after(datetime(2026, 1, 1, 12, 0))


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", r"invalid cron expression '61 \* \* \* \*': .*out of range"),
        ("* * *", r"invalid cron expression '\* \* \*': Exactly 5, 6 or 7 columns"),
        ("", "invalid cron expression ''"),
        ("0 0 * * funday", "invalid cron expression"),
        ("0 0 31 2 *", r"the cron expression '0 0 31 2 \*' never fires again"),
        ("0 0 1 1 * 0 2020", "never fires again"),
        ("R * * * *", "uses R \\(random\\), which each replica would draw differently"),
        ("H * * * *", "the H in the cron expression 'H \\* \\* \\* \\*' needs hash_id="),
        (5, "a cron expression is a string, got 5"),
    ],
    ids=repr,
)
def test_a_cron_refuses_a_bad_expression(expr: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Cron(expr)  # type: ignore[arg-type]


@pytest.mark.parametrize("tz", ["Europe/Berln", "Mars/Olympus", "../etc/passwd", "", 5])
def test_a_cron_refuses_an_unknown_time_zone(tz: object) -> None:
    with pytest.raises(ConfigurationError, match="time zone"):
        Cron("0 * * * *", tz=tz)  # type: ignore[arg-type]


# -- App.cron and friends ------------------------------------------------------------------


async def job() -> None:
    pass


def test_app_cron_registers_a_cron_schedule() -> None:
    app = App("billing")
    returned = app.cron("*/5 * * * *", tz="Europe/Berlin", jitter=3, catch_up="latest")(job)

    (spec,) = app.schedules
    assert returned is job
    assert spec.schedule == Cron("*/5 * * * *", tz="Europe/Berlin", hash_id="billing:job")
    assert (spec.name, spec.catch_up, spec.jitter) == ("job", "latest", timedelta(seconds=3))
    assert spec.fleet


def test_app_cron_hashes_on_the_app_and_task_name() -> None:
    app = App("billing")
    app.cron("H H * * *")(job)
    app.cron("H H * * *", name="other")(job)

    first, second = (spec.schedule for spec in app.schedules)
    assert isinstance(first, Cron)
    assert isinstance(second, Cron)
    assert (first.hash_id, second.hash_id) == ("billing:job", "billing:other")


def test_app_cron_refuses_a_bad_expression_or_zone_before_decorating() -> None:
    app = App("billing")

    with pytest.raises(ConfigurationError, match="invalid cron expression"):
        app.cron("*/5 * * *")
    with pytest.raises(ConfigurationError, match="unknown time zone 'Europe/Berln'"):
        app.cron("*/5 * * * *", tz="Europe/Berln")
    assert app.schedules == []


def test_add_schedule_takes_a_cron_or_a_cron_expression_in_utc() -> None:
    app = App("billing")
    app.add_schedule(job, Cron("0 3 * * *", tz="Europe/Berlin"), name="nightly")
    app.add_schedule(job, "0 3 * * *", name="nightly_utc")

    assert app.schedules[0].schedule == Cron("0 3 * * *", tz="Europe/Berlin")
    assert app.schedules[1].schedule == Cron("0 3 * * *", hash_id="billing:nightly_utc")


def test_fleet_options_have_their_defaults() -> None:
    app = App("billing")
    spec = app.add_schedule(job, 60)

    assert (spec.fleet, spec.catch_up, spec.grace, spec.lease) == (True, "none", 3600.0, 30.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fleet": "yes"}, "fleet is True or False"),
        ({"catch_up": "some"}, "catch_up is 'none', 'latest' or 'all'"),
        ({"catch_up": "all", "fleet": False}, "catch_up= needs fleet=True"),
        ({"grace": 0}, "grace must be a positive number of seconds"),
        ({"lease": -1}, "lease must be a positive number of seconds"),
        ({"lease": timedelta(0)}, "lease must be a positive number of seconds"),
    ],
    ids=repr,
)
def test_bad_fleet_options_are_refused_at_registration(
    options: dict[str, object], message: str
) -> None:
    app = App("billing")

    with pytest.raises(ConfigurationError, match=message):
        app.add_schedule(job, 60, **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message):
        app.every(seconds=60, **options)(job)
