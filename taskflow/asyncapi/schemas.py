"""Payload schemas: the JSON Schema of a payload annotation, its named parts kept apart.

msgspec writes the schema of dataclasses, msgspec Structs, ``dict``, ``list`` and their
parametrised forms; pydantic (``TypeAdapter``) that of any annotation holding a pydantic model.
The definitions of named types (``Order``, ``Parcel``) go to the document's
``components.schemas``, and the schemas refer to them there; two types of one name get two
(``Order``, ``Order_2``). A codec that carries its own schema (Avro's) gives it instead, through
`DescribesPayload`.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Any

import msgspec

from taskflow.exceptions import ConfigurationError
from taskflow.formats import is_pydantic_model, name_of
from taskflow.message import Message
from taskflow.types import DescribesPayload

__all__ = ["REF_TEMPLATE", "Schemas"]

REF_TEMPLATE = "#/components/schemas/{name}"

_UNSAFE = re.compile(r"[^\w.-]+")  # what a name in components.schemas may not hold
RAW = {"type": "string", "format": "binary"}
TEXT = {"type": "string"}


class Schemas:
    """The schemas of the payloads of one document, and the definitions they share."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, annotation: Any) -> dict[str, Any] | None:
        """The JSON Schema of `annotation`; None when it says nothing of the payload (none, a
        `Message`, ``Any``) or is a type neither msgspec nor pydantic describes."""
        if annotation is None or annotation is Message or annotation is Any:
            return None
        if annotation is bytes:
            return dict(RAW)
        if annotation is str:
            return dict(TEXT)
        try:
            if _holds_pydantic(annotation):
                return self._pydantic(annotation)
            return self._msgspec(annotation)
        except (TypeError, ValueError):
            return None

    def of_codec(self, annotation: Any, codec: object) -> dict[str, Any] | None:
        """The schema `codec` gives of `annotation` (see `DescribesPayload`), else `of`'s.

        Raises:
            ConfigurationError: when the codec's schema is not a JSON object.
        """
        if isinstance(codec, DescribesPayload):
            given = codec.payload_schema(annotation)
            if given is not None:
                if not isinstance(given, Mapping):
                    raise ConfigurationError(
                        f"{type(codec).__name__}.payload_schema returned a "
                        f"{type(given).__name__}, not a schema (a dict) or None"
                    )
                return dict(given)
        return self.of(annotation)

    def _msgspec(self, annotation: Any) -> dict[str, Any]:
        (schema,), components = msgspec.json.schema_components(
            (annotation,), ref_template=REF_TEMPLATE
        )
        return self._merged(dict(schema), components)

    def _merged(self, schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
        """Add `components` to the document's, and return `schema`: a name already taken by
        another definition (two classes ``Order`` of different modules) gets the first free
        ``Order_2``, ``Order_3``…, and the references to it follow."""
        renamed: dict[str, str] = {}
        for _ in range(len(components) + 1):  # a renamed one changes those referring to it
            refs = _refs(renamed)
            again = {
                name: self._free(name, _rerefed(definition, refs))
                for name, definition in components.items()
            }
            if again == renamed:
                break
            renamed = again
        refs = _refs(renamed)
        for name, definition in components.items():
            self.components[renamed[name]] = _rerefed(definition, refs)
        return dict(_rerefed(schema, refs))

    def _free(self, name: str, definition: Any) -> str:
        """`name`, or the first of ``name_2``, ``name_3``… not taken by another definition."""
        unique, number = name, 1
        while unique in self.components and self.components[unique] != definition:
            number += 1
            unique = f"{name}_{number}"
        return unique

    def _pydantic(self, annotation: Any) -> dict[str, Any]:
        from pydantic import TypeAdapter

        schema = TypeAdapter(annotation).json_schema(
            ref_template=REF_TEMPLATE.replace("{name}", "{model}")
        )
        components = schema.pop("$defs", {})
        if not is_pydantic_model(annotation):
            return self._merged(schema, components)
        # a model is named, as msgspec names a Struct: its schema goes with the others
        name = _UNSAFE.sub("_", annotation.__name__).strip("_")
        components[name] = schema
        return self._merged({"$ref": REF_TEMPLATE.format(name=name)}, components)


def _refs(renamed: dict[str, str]) -> dict[str, str]:
    """The references to change, from the names that changed."""
    return {
        REF_TEMPLATE.format(name=old): REF_TEMPLATE.format(name=new)
        for old, new in renamed.items()
        if new != old
    }


def _rerefed(value: Any, refs: dict[str, str]) -> Any:
    """`value` with each ``$ref`` in `refs` pointed at its new name."""
    if not refs:
        return value
    if isinstance(value, dict):
        return {
            key: refs.get(item, item) if key == "$ref" else _rerefed(item, refs)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_rerefed(item, refs) for item in value]
    return value


def _holds_pydantic(annotation: Any) -> bool:
    """True for a pydantic model, or an annotation with one inside (``list[Order]``)."""
    if is_pydantic_model(annotation):
        return True
    return any(_holds_pydantic(arg) for arg in typing.get_args(annotation))


def type_name(annotation: Any) -> str:
    """How a payload type is named in the document: ``Order``, ``dict[str, int]``, ``any``."""
    if annotation is None or annotation is Any:
        return "any"
    if annotation is Message:
        return "Message"
    return name_of(annotation).replace("typing.", "")
