"""The Consuming guide's batch consumer: events written to a store 500 at a
time, a row the store refuses named with `BatchError`.

    taskflow run examples.batches:app
"""

from __future__ import annotations

from dataclasses import dataclass

from taskflow import App, BatchError, Context, Reject

app = App("warehouse")


class Conflict(Exception):
    """The store refused one row."""


class EventStore:
    """A stand-in for a database table that takes rows in bulk."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    async def insert_many(self, rows: list[dict]) -> None:
        """Insert `rows` in order; raise at the first one the table refuses."""
        for index, row in enumerate(rows):
            if "id" not in row:
                raise RowRefused(index, Conflict(f"row {row} has no id"))
            self.rows[row["id"]] = row


@dataclass
class RowRefused(Exception):
    """What the store's bulk insert raises: which row, and why."""

    index: int
    error: Exception


store = EventStore()


# --8<-- [start:batch]
@app.consume("events", batch=500, batch_wait=0.2, dead_letter="events.DLQ")
async def save_events(events: list[dict], ctx: Context) -> None:
    try:
        await store.insert_many(events)  # one round trip, up to 500 rows
    except RowRefused as refused:
        # rows before it are stored, it is rejected, the rest run again
        why = Reject(str(refused.error))
        raise BatchError(refused.index, why) from refused


# --8<-- [end:batch]
