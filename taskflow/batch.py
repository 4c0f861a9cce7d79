"""Batches: the records a batch consumer's handler receives at once, and what its middleware sees.

A consumer registered with ``batch=`` is called with a list of payloads; its middleware receives a
`Batch` as the job, where a per-record consumer's middleware receives a `Message`. A `Batch` holds
the messages and their decoded payloads, position for position.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from taskflow.message import Message, TopicPartition

__all__ = ["Batch"]


@dataclass(frozen=True, slots=True)
class Batch:
    """Records handed to a batch handler in one call, in offset order within each partition.

    Attributes:
        messages: The records, as the broker delivered them.
        payloads: Each record's payload decoded to the handler's element type (the message
            itself for ``list[Message]``), at the same position as its message.
    """

    messages: tuple[Message, ...]
    payloads: tuple[Any, ...]

    @classmethod
    def of(cls, messages: Sequence[Message], payloads: Sequence[Any] | None = None) -> Batch:
        """A batch of `messages`; their payloads are the messages themselves unless given."""
        messages = tuple(messages)
        return cls(messages, messages if payloads is None else tuple(payloads))

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def select(self, indexes: Iterable[int]) -> Batch:
        """The batch of the records at `indexes`, in the order given."""
        chosen = list(indexes)
        return Batch(
            tuple(self.messages[i] for i in chosen), tuple(self.payloads[i] for i in chosen)
        )

    @property
    def partitions(self) -> list[TopicPartition]:
        """The partitions the records belong to, in order of first appearance."""
        return list(dict.fromkeys(TopicPartition(m.topic, m.partition) for m in self.messages))

    def __str__(self) -> str:
        messages = self.messages
        if not messages:
            return "an empty batch"
        partitions = self.partitions
        if len(partitions) == 1:
            return f"{partitions[0]}@{messages[0].offset}..{messages[-1].offset} ({len(self)})"
        return f"a batch of {len(self)} of {', '.join(map(str, partitions))}"
