"""The pure parts of `taskflow dlq replay`: its filters, --since and the default group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskflow.exceptions import ConfigurationError
from taskflow.message import Message
from taskflow.replay import Filters, default_group, parse_since
from taskflow.workers.dead_letter import dead_letter, dead_letter_headers, read_dead_letter

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        (" 7D ", NOW - timedelta(days=7)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-12-04T10:00:00Z", datetime(2026, 12, 4, 10, tzinfo=UTC)),
        ("2026-12-04T11:00:00+01:00", datetime(2026, 12, 4, 10, tzinfo=UTC)),
        ("2026-12-04 10:00", datetime(2026, 12, 4, 10, tzinfo=UTC)),  # no offset: UTC
        ("2026-12-04", datetime(2026, 12, 4, tzinfo=UTC)),
    ],
)
def test_since_takes_iso_8601_or_a_time_before_now(text: str, moment: datetime) -> None:
    assert parse_since(text, NOW) == moment


def test_since_refuses_a_time_in_the_future_which_no_dead_letter_comes_after() -> None:
    with pytest.raises(ConfigurationError) as refused:
        parse_since("2027-01-01T00:00:00Z", NOW)
    assert str(refused.value) == (
        f"--since 2027-01-01T00:00:00Z is in the future ({NOW.isoformat(timespec='seconds')} "
        "now): no dead letter was written after it"
    )


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2h", "2 hours", ""])
def test_since_refuses_anything_else_naming_the_forms_it_takes(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"ISO 8601 time .* or a time before now"):
        parse_since(text, NOW)


def _failed(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as caught:
        return caught


def _letter(reason: str, exc: Exception, written: datetime) -> Message:
    original = Message("orders", 1, 7, b"k", b"v", (), 1)
    ours = dead_letter_headers(original, "billing", _failed(exc), 1, reason)
    headers = dead_letter(original, ours).headers
    return Message("orders.dlq", 0, 3, b"k", b"v", headers, int(written.timestamp() * 1000))


def test_filters_match_the_reason_the_exception_type_and_the_time_written() -> None:
    letter = read_dead_letter(_letter("exhausted", KeyError("total"), NOW))

    assert Filters().matches(letter)
    assert Filters(reason="exhausted").matches(letter)
    assert not Filters(reason="rejected").matches(letter)
    assert Filters(error="KeyError").matches(letter)
    assert Filters(error="builtins.KeyError").matches(letter)
    assert not Filters(error="Error").matches(letter)
    assert not Filters(error="ValueError").matches(letter)
    assert Filters(since=NOW).matches(letter)
    assert not Filters(since=NOW + timedelta(milliseconds=1)).matches(letter)
    assert not Filters(reason="exhausted", error="ValueError").matches(letter)


def test_the_default_group_is_the_same_for_the_same_topic_and_filters_only() -> None:
    rejected = Filters(reason="rejected", since=NOW, since_text="2h")
    later = Filters(reason="rejected", since=NOW + timedelta(hours=1), since_text="2h")

    assert default_group("orders.dlq", rejected) == default_group("orders.dlq", later)
    assert default_group("orders.dlq", rejected).startswith("taskflow-replay.orders.dlq.")
    assert default_group("orders.dlq", rejected) != default_group("orders.dlq", Filters())
    assert default_group("orders.dlq", rejected) != default_group("other.dlq", rejected)
    assert default_group("orders.dlq", Filters(error="KeyError")) != default_group(
        "orders.dlq", Filters(error="ValueError")
    )


@pytest.mark.parametrize("text", ["1000000w", "99999999999999999999d"])
def test_since_refuses_a_time_before_now_that_reaches_past_the_year_1(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"--since takes a time after the year 1, got"):
        parse_since(text, NOW)


@pytest.mark.parametrize(
    ("text", "moves"), [("2h", True), (" 90 S ", True), ("2026-12-04T10:00:00Z", False)]
)
def test_a_since_given_as_a_time_before_now_moves_with_each_run(text: str, moves: bool) -> None:
    assert Filters(since=NOW, since_text=text).since_moves is moves
    assert not Filters().since_moves
