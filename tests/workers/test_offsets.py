from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskflow.message import Message
from taskflow.workers.offsets import OffsetTracker, SequentialTracker


def tracker_with(*offsets: int, epoch: int = 1) -> OffsetTracker:
    tracker = OffsetTracker(epoch)
    for offset in offsets:
        tracker.dispatched(offset)
    return tracker


def test_nothing_dispatched_means_nothing_to_commit() -> None:
    tracker = OffsetTracker(epoch=1)

    assert tracker.commit_target is None
    assert tracker.in_flight == 0


def test_dispatched_but_unfinished_work_commits_its_first_offset() -> None:
    tracker = tracker_with(10, 11, 12)

    assert tracker.commit_target == 10
    assert tracker.in_flight == 3


def test_finishing_in_order_moves_the_target_one_past_each_record() -> None:
    tracker = tracker_with(10, 11, 12)
    targets = []

    for offset in (10, 11, 12):
        tracker.finished(offset)
        targets.append(tracker.commit_target)

    assert targets == [11, 12, 13]
    assert tracker.in_flight == 0


def test_out_of_order_finishing_commits_no_further_than_the_lowest_unfinished_offset() -> None:
    tracker = tracker_with(10, 11, 12, 13)

    tracker.finished(12)
    tracker.finished(11)
    assert tracker.commit_target == 10

    tracker.finished(10)
    assert tracker.commit_target == 13

    tracker.finished(13)
    assert tracker.commit_target == 14


def test_gaps_in_offsets_are_skipped_over() -> None:
    tracker = tracker_with(3, 7, 8)

    tracker.finished(7)
    assert tracker.commit_target == 3

    tracker.finished(3)
    assert tracker.commit_target == 8

    tracker.finished(8)
    assert tracker.commit_target == 9


def test_the_target_survives_new_work_being_dispatched() -> None:
    tracker = tracker_with(0, 1)
    tracker.finished(0)
    tracker.finished(1)

    tracker.dispatched(5)

    assert tracker.commit_target == 5
    tracker.finished(5)
    assert tracker.commit_target == 6


def test_in_flight_counts_finished_records_still_behind_an_unfinished_one() -> None:
    tracker = tracker_with(1, 2, 3, 4)

    tracker.finished(3)
    tracker.finished(4)

    assert tracker.in_flight == 4  # a restart would deliver all four again
    tracker.finished(1)
    assert tracker.in_flight == 3
    tracker.finished(2)
    assert tracker.in_flight == 0


def test_finishing_a_record_twice_changes_nothing() -> None:
    tracker = tracker_with(1, 2, 3)
    tracker.finished(1)

    tracker.finished(1)

    assert tracker.commit_target == 2
    tracker.finished(2)
    tracker.finished(3)
    assert tracker.commit_target == 4


def test_the_tracker_keeps_its_assignment_epoch() -> None:
    assert OffsetTracker(epoch=7).epoch == 7


@st.composite
def work(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Increasing offsets with gaps, and an order in which their handlers finish."""
    start = draw(st.integers(min_value=0, max_value=1_000))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=40))
    offsets = [start + sum(gaps[:i]) for i in range(len(gaps))]
    return offsets, draw(st.permutations(offsets))


@given(work())
def test_the_target_never_passes_an_unfinished_record(work: tuple[list[int], list[int]]) -> None:
    offsets, order = work
    tracker = tracker_with(*offsets)
    unfinished = set(offsets)

    for offset in order:
        tracker.finished(offset)
        unfinished.discard(offset)
        target = tracker.commit_target
        assert target is not None
        if unfinished:
            assert target == min(unfinished)
        assert tracker.in_flight == len([o for o in offsets if o >= target])

    assert tracker.commit_target == offsets[-1] + 1
    assert tracker.in_flight == 0


def test_sequential_tracker_commits_one_past_the_last_finished_record() -> None:
    tracker = SequentialTracker(epoch=1)
    assert tracker.commit_target is None
    tracker.dispatched_run(10, 3)  # offsets 10, 11 and 13 (12 was compacted away)
    assert tracker.commit_target == 10  # nothing finished: where this assignment started
    assert tracker.in_flight == 3
    tracker.finished(10)
    tracker.finished(11)
    assert tracker.commit_target == 12
    assert tracker.in_flight == 1
    tracker.finished(13)
    assert tracker.commit_target == 14
    assert tracker.in_flight == 0


def test_sequential_tracker_never_moves_past_an_unfinished_record() -> None:
    tracker = SequentialTracker(epoch=1)
    tracker.dispatched(5)
    tracker.dispatched(6)
    tracker.finished(5)
    assert tracker.commit_target == 6  # 6 is still running: a restart starts there


def test_sequential_tracker_reads_a_run_in_progress_from_the_running_record() -> None:
    running: dict[object, Message] = {}
    tracker = SequentialTracker(epoch=1, running=running)
    run = [Message("orders", 0, offset, None, b"") for offset in (10, 11, 13, 14)]
    tracker.dispatched_run(10, len(run))
    tracker.started(run)

    running[None] = run[2]  # 10 and 11 finished, 13 is running

    assert tracker.commit_target == 13
    assert tracker.in_flight == 2
    running.clear()
    tracker.settled(run, None)
    assert (tracker.commit_target, tracker.in_flight) == (15, 0)


def test_sequential_tracker_settles_only_below_the_record_a_lane_stopped_at() -> None:
    running: dict[object, Message] = {}
    tracker = SequentialTracker(epoch=1, running=running)
    run = [Message("orders", 0, offset, None, b"") for offset in (3, 4, 5)]
    tracker.dispatched_run(3, len(run))
    tracker.started(run)

    tracker.settled(run, run[1])  # closed while 4 was retried: it and 5 stay unfinished

    assert tracker.commit_target == 4
    assert tracker.in_flight == 2
