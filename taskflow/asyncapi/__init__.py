"""The app's own contract as an AsyncAPI 3.0 document: `document`, and its JSON, YAML and HTML.

``taskflow asyncapi MODULE:APP`` writes it; the operations endpoint serves it at
``/asyncapi.json`` and as a page at ``/asyncapi``. See [AsyncAPI](../asyncapi.md).
"""

from __future__ import annotations

import json
from typing import Any

from taskflow.asyncapi.document import ASYNCAPI_VERSION, document
from taskflow.asyncapi.page import page
from taskflow.exceptions import ConfigurationError

__all__ = ["ASYNCAPI_VERSION", "as_json", "as_yaml", "document", "page"]


def as_json(built: dict[str, Any]) -> str:
    """The document as indented JSON text, ending in a newline."""
    return json.dumps(built, indent=2, ensure_ascii=False) + "\n"


def as_yaml(built: dict[str, Any]) -> str:
    """The document as YAML text, its keys in the document's order.

    Raises:
        ConfigurationError: when PyYAML is not installed.
    """
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(
            "writing YAML needs PyYAML: pip install 'taskflow[yaml]', or use --format json"
        ) from None
    text: str = yaml.safe_dump(built, sort_keys=False, allow_unicode=True, width=72)
    return text
