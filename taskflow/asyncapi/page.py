"""The AsyncAPI document as one HTML page, rendered on the server: no script, nothing fetched.

Every value from the document is escaped; the page reads only the parts taskflow writes
(servers, channels, operations, messages with their headers and payload schemas, in JSON
Schema or another schema format such as Avro's).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

__all__ = ["page"]

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;margin-top:2rem}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .6rem;
border-bottom:1px solid #eee;vertical-align:top}code{background:#f4f4f4;padding:0 .2rem}
pre{background:#f4f4f4;padding:.6rem;overflow:auto;font-size:13px}.muted{color:#666}
"""


def page(built: dict[str, Any]) -> str:
    """The HTML page of an AsyncAPI document made by `taskflow.asyncapi.document`."""
    info = built.get("info", {})
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(info.get('title'))} · AsyncAPI</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(info.get('title'))}</h1>",
        f'<p class="muted">version {_e(info.get("version"))} · AsyncAPI '
        f'{_e(built.get("asyncapi"))} · <a href="asyncapi.json">asyncapi.json</a></p>',
    ]
    if info.get("description"):
        parts.append(f"<p>{_e(info['description'])}</p>")
    parts += _servers(built)
    parts += _operations(built)
    parts += _channels(built)
    parts += _components(built)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _servers(built: dict[str, Any]) -> list[str]:
    servers = built.get("servers") or {}
    out = ["<h2>Servers</h2>"]
    if not servers:
        broker = built.get("x-taskflow-broker", "")
        return [*out, f"<p>None: the app runs on <code>{_e(broker)}</code>.</p>"]
    out.append("<table><tr><th>Name</th><th>Host</th><th>Protocol</th></tr>")
    for name, server in servers.items():
        out.append(
            f"<tr><td>{_e(name)}</td><td><code>{_e(server.get('host'))}</code></td>"
            f"<td>{_e(server.get('protocol'))}</td></tr>"
        )
    return [*out, "</table>"]


def _operations(built: dict[str, Any]) -> list[str]:
    out = [
        "<h2>Operations</h2>",
        "<table><tr><th>Operation</th><th>Action</th><th>Channel</th><th>Details</th></tr>",
    ]
    for name, operation in built.get("operations", {}).items():
        channel = _ref_name(operation.get("channel", {}))
        out.append(
            f"<tr><td>{_e(name)}</td><td>{_e(operation.get('action'))}</td>"
            f'<td><a href="#channel-{_e(channel)}"><code>{_e(channel)}</code></a></td>'
            f"<td>{_details(operation)}</td></tr>"
        )
    return [*out, "</table>"]


def _details(operation: dict[str, Any]) -> str:
    rows: list[str] = []
    if operation.get("summary"):
        rows.append(_e(operation["summary"]))
    for field, value in operation.items():
        if field.startswith("x-taskflow-") and field != "x-taskflow-consumer":
            label = field.removeprefix("x-taskflow-").replace("-", " ")
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            rows.append(f"{_e(label)}: <code>{_e(shown)}</code>")
    client = operation.get("bindings", {}).get("kafka", {}).get("clientId")
    if client:
        rows.append(f"client id: <code>{_e(', '.join(client.get('enum', [])))}</code>")
    return "<br>".join(rows)


def _channels(built: dict[str, Any]) -> list[str]:
    out = ["<h2>Channels</h2>"]
    for name, channel in built.get("channels", {}).items():
        out.append(f'<h3 id="channel-{_e(name)}"><code>{_e(channel.get("address"))}</code></h3>')
        if channel.get("description"):
            out.append(f"<p>{_e(channel['description'])}</p>")
        for ident, message in channel.get("messages", {}).items():
            out += _message(ident, message)
    return out


def _message(ident: str, message: dict[str, Any]) -> list[str]:
    name = message.get("name", ident)
    title = message.get("title")
    shown = title if title and title != name else name
    out = [f"<h4>Message {_e(shown)}</h4>"]
    if message.get("description"):
        out.append(f"<p>{_e(message['description'])}</p>")
    out.append("<ul>")
    if message.get("contentType"):
        out.append(f"<li>content type <code>{_e(message['contentType'])}</code></li>")
    if message.get("summary"):
        out.append(f"<li>{_e(message['summary'])}</li>")
    key = message.get("bindings", {}).get("kafka", {}).get("key")
    if key:
        out.append(f"<li>key <code>{_e(json.dumps(key, ensure_ascii=False))}</code></li>")
    shown_inline: list[str] = []
    for part in ("headers", "payload"):
        schema = message.get(part)
        if schema is None:
            continue
        named = _ref_name(schema) if isinstance(schema, dict) and len(schema) == 1 else ""
        if named:
            out.append(f'<li>{part} <a href="#schema-{_e(named)}">{_e(named)}</a></li>')
        elif isinstance(schema, dict) and "schemaFormat" in schema:
            out.append(f"<li>{part} schema format <code>{_e(schema['schemaFormat'])}</code></li>")
            shown_inline.append(f"<pre>{_e(_json(schema.get('schema')))}</pre>")
        else:
            out.append(f"<li>{part}:</li>")
            shown_inline.append(f"<pre>{_e(_json(schema))}</pre>")
    out.append("</ul>")
    return out + shown_inline


def _components(built: dict[str, Any]) -> list[str]:
    schemas = built.get("components", {}).get("schemas", {})
    if not schemas:
        return []
    out = ["<h2>Schemas</h2>"]
    for name, schema in schemas.items():
        out.append(f'<h3 id="schema-{_e(name)}">{_e(name)}</h3>')
        if isinstance(schema, dict) and "schemaFormat" in schema:
            out.append(f"<p>schema format <code>{_e(schema['schemaFormat'])}</code></p>")
            schema = schema.get("schema")
        out.append(f"<pre>{_e(_json(schema))}</pre>")
    return out


def _ref_name(ref: dict[str, Any]) -> str:
    return str(ref.get("$ref", "")).rpartition("/")[2]


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)
