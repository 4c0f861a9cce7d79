"""The built-in payload formats, JSON and MessagePack, and what they share.

Each built-in codec reads a payload type in two parts, chosen once per registration:

- a *fast* function from the record's value to the payload, which raises `ValueError`,
  `TypeError` or `RecursionError` on anything it does not take as it is;
- a *slow* function of the message, called only when the fast one failed: it reads the payload
  the forgiving way (a UTF-8 byte order mark, say) or raises the `DecodeError` that says why not.

So a record that decodes costs one call into the parser and nothing more; what went wrong is
worked out only on failure. `taskflow.codec` calls the parts; the codecs never see a tombstone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeAlias

import msgspec

from taskflow.exceptions import DecodeError, HandlerSignatureError
from taskflow.message import Message

__all__ = [
    "ALLOWED",
    "Fast",
    "Parts",
    "Slow",
    "does_not_fit",
    "holds_structs",
    "is_dataclass_type",
    "is_pydantic_model",
    "is_struct",
    "loose",
    "name_of",
    "pydantic_summary",
    "unsupported",
]

Fast: TypeAlias = Callable[[bytes], Any]
Slow: TypeAlias = Callable[[Message], Any]
Parts: TypeAlias = tuple[Fast, Slow]

ALLOWED = (
    "Message, bytes, str, dict or list, a dataclass, a msgspec Struct, or a pydantic model "
    "(when pydantic is installed)"
)


def unsupported(annotation: Any) -> HandlerSignatureError:
    """The error of a payload type no built-in codec reads."""
    return HandlerSignatureError(
        f"payload type {name_of(annotation)} is not supported; use {ALLOWED}"
    )


def name_of(annotation: Any) -> str:
    """How an annotation is named in a message: a class by its qualified name."""
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__qualname__
    return repr(annotation)


def is_dataclass_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def is_struct(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)


def holds_structs(annotation: Any) -> bool:
    """True for a ``list`` or ``dict`` of Structs (``list[Line]``, ``dict[str, list[Line]]``):
    msgspec then decodes and validates the whole payload, as it does a Struct."""
    if typing.get_origin(annotation) not in (list, dict):
        return False
    return any(is_struct(arg) or holds_structs(arg) for arg in typing.get_args(annotation))


def is_pydantic_model(annotation: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:
        return False
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def pydantic_summary(exc: Any) -> str:
    """A pydantic ValidationError in one line: each failing field's path and message."""
    return "; ".join(
        f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in exc.errors()
    )


def does_not_fit(message: Message, cls: type, exc: Exception) -> DecodeError:
    """The error of a payload whose fields a dataclass refused."""
    return DecodeError(f"payload of {message} does not fit {cls.__name__}: {exc}")


class _Loose(Message):
    """A value decoded on its own, outside any record: errors name it "the value"."""

    def __str__(self) -> str:
        return "the value"


def loose(parts: Parts) -> Any:
    """``value -> payload`` from the parts, for a codec used outside a consumer."""
    fast, slow = parts

    def decode(value: bytes) -> Any:
        try:
            return fast(value)
        except (ValueError, TypeError, RecursionError):
            return slow(_Loose("", 0, 0, None, value))

    return decode
