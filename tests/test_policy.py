"""The error policy: one decision after a failed attempt, for the worker and for telemetry."""

from __future__ import annotations

import asyncio

import pytest

from taskflow import App, DecodeError, Defer, Message, Reject, Retry
from taskflow.policy import (
    DEAD_LETTER_EXHAUSTED,
    DEAD_LETTER_REJECTED,
    DEFER,
    RAISE,
    RETRY,
    SKIP,
    Decision,
    ErrorPolicy,
    retry_stage,
)


class Blocked(Exception):
    pass


WITH_DLQ = ErrorPolicy((Reject, Blocked), dead_letter="orders.DLQ", max_attempts=3)
WITHOUT_DLQ = ErrorPolicy((Reject, Blocked))


@pytest.mark.parametrize(
    ("policy", "exc", "attempt", "decision"),
    [
        (WITH_DLQ, RuntimeError("down"), 1, RETRY),
        (WITH_DLQ, Retry("later"), 2, RETRY),
        (WITH_DLQ, RuntimeError("down"), 3, DEAD_LETTER_EXHAUSTED),
        (WITH_DLQ, Reject("bad"), 1, DEAD_LETTER_REJECTED),
        (WITH_DLQ, DecodeError("not json"), 1, DEAD_LETTER_REJECTED),
        (WITH_DLQ, Blocked("customer"), 1, DEAD_LETTER_REJECTED),
        (WITH_DLQ, Defer("not yet", 1.0), 3, DEFER),
        (WITHOUT_DLQ, RuntimeError("down"), 1000, RETRY),  # no topic: retried until it works
        (WITHOUT_DLQ, Reject("bad"), 1, SKIP),
        (WITHOUT_DLQ, Blocked("customer"), 1, SKIP),
        (WITH_DLQ, MemoryError(), 1, RAISE),
        (WITH_DLQ, asyncio.CancelledError(), 1, RAISE),
        (WITH_DLQ, KeyboardInterrupt(), 3, RAISE),
    ],
)
def test_what_happens_after_a_failed_attempt(
    policy: ErrorPolicy, exc: BaseException, attempt: int, decision: Decision
) -> None:
    assert policy.after_failure(exc, attempt) == decision


STAGED = ErrorPolicy((Reject, Blocked), dead_letter="orders.DLQ", stages=2)


@pytest.mark.parametrize(
    ("exc", "attempt", "decision"),
    [
        (RuntimeError("down"), 1, retry_stage(1)),
        (Retry("later"), 2, retry_stage(2)),  # an explicit Retry goes to the next stage too
        (RuntimeError("down"), 3, DEAD_LETTER_EXHAUSTED),  # two stages: the third attempt ends
        (Reject("bad"), 2, DEAD_LETTER_REJECTED),
        (DecodeError("not json"), 1, DEAD_LETTER_REJECTED),
        (Blocked("customer"), 1, DEAD_LETTER_REJECTED),
        (Defer("not yet", 1.0), 1, DEFER),  # waits in place
        (asyncio.CancelledError(), 1, RAISE),
    ],
)
def test_with_retry_topics_each_failure_goes_to_the_next_stage(
    exc: BaseException, attempt: int, decision: Decision
) -> None:
    assert STAGED.after_failure(exc, attempt) == decision


def test_the_policy_of_a_registration() -> None:
    app = App("shop")

    async def handle(message: Message) -> None:
        pass

    with_dlq = app.add_consumer(
        handle, "orders", name="orders", dead_letter="orders.DLQ", reject_on=[Blocked]
    )
    plain = app.add_consumer(handle, "payments", name="payments")
    assert ErrorPolicy.of(with_dlq) == ErrorPolicy((Reject, Blocked), "orders.DLQ", 5)
    assert ErrorPolicy.of(plain) == ErrorPolicy((Reject,), None, 1)
    assert DEAD_LETTER_EXHAUSTED.reason == "exhausted"
    assert DEAD_LETTER_REJECTED.reason == "rejected"
