"""Payload schemas: the JSON Schema of a payload annotation, its named parts kept apart.

msgspec writes the schema of dataclasses, msgspec Structs, ``dict``, ``list`` and their
parametrised forms; pydantic (``TypeAdapter``) that of any annotation holding a pydantic model.
The definitions of named types (``Order``, ``Parcel``) go to the document's
``components.schemas``, and the schemas refer to them there.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import msgspec

from taskflow.formats import is_pydantic_model, name_of
from taskflow.message import Message

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

    def _msgspec(self, annotation: Any) -> dict[str, Any]:
        (schema,), components = msgspec.json.schema_components(
            (annotation,), ref_template=REF_TEMPLATE
        )
        self.components.update(components)
        return dict(schema)

    def _pydantic(self, annotation: Any) -> dict[str, Any]:
        from pydantic import TypeAdapter

        schema = TypeAdapter(annotation).json_schema(
            ref_template=REF_TEMPLATE.replace("{name}", "{model}")
        )
        self.components.update(schema.pop("$defs", {}))
        if not is_pydantic_model(annotation):
            return schema
        # a model is named, as msgspec names a Struct: its schema goes with the others
        name = _UNSAFE.sub("_", annotation.__name__).strip("_")
        self.components[name] = schema
        return {"$ref": REF_TEMPLATE.format(name=name)}


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
