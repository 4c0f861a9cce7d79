"""Avro (``application/avro``): records in Avro's binary encoding, by a schema given in code.

Each value is one record in the schemaless binary encoding (no container file, no schema id in
front): the schema is the codec's, given by the application, as both ends of a topic agree on it
without a registry. fastavro reads and writes it; it is the ``avro`` extra
(``pip install 'path/to/taskflow[avro]'``).

A record is read as a dict, and from it a dataclass or a msgspec Struct when the handler's payload
is annotated with one. A value that ends too soon, or has bytes left over after the record, is
refused (a `ValueError`, so taskflow dead-letters it): it was not written with this schema.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import io
import json
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from taskflow.exceptions import ConfigurationError, PublishError
from taskflow.formats import is_dataclass_type, is_struct, name_of

__all__ = ["AvroCodec"]

CONTENT_TYPE = "application/avro"
AVRO_SCHEMA_FORMAT = "application/vnd.apache.avro;version=1.9.0"
"""How AsyncAPI 3.0 names a schema written in Avro."""

# What Avro's logical types read as: kept as they are when a Struct is written.
_AVRO_BUILTINS: tuple[type, ...] = (bytes, bytearray, datetime.datetime, datetime.date)
_AVRO_BUILTINS += (datetime.time, decimal.Decimal, uuid.UUID)

_UNREADABLE = (EOFError, ValueError, TypeError, IndexError, KeyError, OverflowError)


def _fastavro() -> Any:
    """The fastavro module, or the ConfigurationError naming the extra that installs it."""
    try:
        import fastavro
    except ImportError as exc:
        raise ConfigurationError(
            "AvroCodec needs fastavro, which is not installed: install taskflow with its avro "
            "extra (pip install 'path/to/taskflow[avro]'), or fastavro itself"
        ) from exc
    return fastavro


@dataclass(frozen=True, slots=True, eq=False)  # a schema is a dict: compared, hashed by identity
class AvroCodec:
    """Avro (``application/avro``), in the binary encoding of the `schema` given.

    Reads dict, a dataclass (built from the record's fields) and a msgspec Struct (converted and
    validated by msgspec); writes a dict, a dataclass or a Struct as a record of the schema.

    Args:
        schema: the Avro schema, as parsed JSON (a dict such as ``{"type": "record", ...}``).

    Raises:
        ConfigurationError: when fastavro is not installed (the ``avro`` extra), or the schema
            is not a valid Avro schema.
    """

    content_type: ClassVar[str] = CONTENT_TYPE

    schema: Mapping[str, Any]
    _parsed: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        fastavro = _fastavro()
        try:
            parsed = fastavro.parse_schema(dict(self.schema))
        except Exception as exc:  # fastavro raises SchemaParseException, and others on odd input
            raise ConfigurationError(f"AvroCodec: not a valid Avro schema: {exc}") from exc
        object.__setattr__(self, "_parsed", parsed)

    def decoder(self, annotation: Any) -> Callable[[bytes], Any]:
        """The function from a value to `annotation`; see `taskflow.Codec`.

        Raises:
            TypeError: for a payload type other than dict, a dataclass or a Struct.
        """
        read = self._reader()
        if (typing.get_origin(annotation) or annotation) is dict:
            return read
        if is_struct(annotation):
            return _then(read, lambda fields: msgspec.convert(fields, annotation))
        if is_dataclass_type(annotation):
            return _then(read, lambda fields: annotation(**fields))
        raise TypeError(
            f"Avro records are read as dict, a dataclass or a msgspec Struct, not "
            f"{name_of(annotation)}"
        )

    def payload_schema(self, annotation: Any) -> dict[str, Any]:
        """The codec's Avro schema, as AsyncAPI's multi-format schema object: whichever type
        `annotation` is (a dict, a dataclass, a Struct), the bytes are records of this schema."""
        return {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": json.loads(json.dumps(self.schema))}

    def encode(self, value: Any) -> bytes:
        """`value` as a record of the schema: a dict, a dataclass or a Struct.

        Raises:
            PublishError: when the value does not fit the schema.
        """
        kind = type(value).__name__
        if isinstance(value, msgspec.Struct):
            value = msgspec.to_builtins(value, builtin_types=_AVRO_BUILTINS)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        out = io.BytesIO()
        try:
            _fastavro().schemaless_writer(out, self._parsed, value, strict_allow_default=True)
        except _UNREADABLE as exc:
            raise PublishError(f"cannot publish a {kind} as Avro {self._name()}: {exc}") from exc
        return out.getvalue()

    def _name(self) -> str:
        return str(self.schema.get("name") or self.schema.get("type"))

    def _reader(self) -> Callable[[bytes], Any]:
        reader, parsed, name = _fastavro().schemaless_reader, self._parsed, self._name()

        def read(value: bytes) -> Any:
            stream = io.BytesIO(value)
            try:
                record = reader(stream, parsed, None)
            except EOFError as exc:
                raise ValueError(f"the value ends before a whole {name} record") from exc
            except _UNREADABLE as exc:
                raise ValueError(f"not a {name} record: {exc}") from exc
            left = len(value) - stream.tell()
            if left:
                raise ValueError(f"{left} byte(s) left over after a {name} record")
            return record

        return read


def _then(read: Callable[[bytes], Any], build: Callable[[Any], Any]) -> Callable[[bytes], Any]:
    def decode(value: bytes) -> Any:
        # msgspec.ValidationError (a ValueError) and TypeError: taskflow dead-letters the record
        return build(read(value))

    return decode
