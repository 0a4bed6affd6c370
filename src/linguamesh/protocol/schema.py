"""Machine-readable schemas of the wire protocol, made from the message types themselves
(``msgspec.json.schema``): one JSON Schema per direction of each socket, and an AsyncAPI 3
document that ties them to ``/ws/session`` and ``/ws/node``. ``linguamesh schema --out
docs/schema`` writes them; a test fails when the committed files differ from the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from . import messages as m
from .messages import PROTOCOL_VERSION

#: (file stem, union type, title) for each direction of each socket
DIRECTIONS: tuple[tuple[str, Any, str], ...] = (
    ("session-client", m.ClientMessage, "Client to scheduler on /ws/session"),
    ("session-server", m.SessionEvent, "Scheduler to client on /ws/session"),
    ("node-node", m.NodeMessage, "Node to scheduler on /ws/node"),
    ("node-server", m.SchedulerToNode, "Scheduler to node on /ws/node"),
)


def direction_schema(union: Any, title: str) -> dict[str, Any]:
    schema = msgspec.json.schema(union)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document: two channels, the messages each side sends."""
    messages: dict[str, Any] = {}
    channel_messages: dict[str, dict[str, Any]] = {"session": {}, "node": {}}
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for stem, union, _title in DIRECTIONS:
        channel, side = stem.split("-")
        schema = msgspec.json.schema(union)
        schemas.update(schema.get("$defs", {}))
        refs = []
        for name in sorted(schema["discriminator"]["mapping"].values()):
            msg = name.rsplit("/", 1)[-1]
            messages[msg] = {"name": msg, "payload": {"$ref": f"#/components/schemas/{msg}"}}
            channel_messages[channel][msg] = {"$ref": f"#/components/messages/{msg}"}
            refs.append({"$ref": f"#/channels/{channel}/messages/{msg}"})
        # from the server's point of view: what it receives, what it sends
        action = "send" if side == "server" else "receive"
        operations[f"{channel}-{action}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": refs,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "LinguaMesh wire protocol",
            "version": str(PROTOCOL_VERSION),
            "description": "JSON text frames over WebSocket; every message has a `type`. "
            "The rules (order, limits, errors, resume) are in docs/protocol.md.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "scheduler": {
                "host": "127.0.0.1:5010",
                "protocol": "ws",
                "description": "a scheduler (wss with TLS)",
            }
        },
        "channels": {
            "session": {"address": "/ws/session", "messages": channel_messages["session"]},
            "node": {"address": "/ws/node", "messages": channel_messages["node"]},
        },
        "operations": operations,
        "components": {
            "messages": dict(sorted(messages.items())),
            "schemas": _refs_to_components(dict(sorted(schemas.items()))),
        },
    }


def _refs_to_components(value: Any) -> Any:
    """msgspec's ``#/$defs/X`` references, pointed at AsyncAPI's components."""
    if isinstance(value, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" and isinstance(v, str)
                else _refs_to_components(v))
            for k, v in value.items()
        }  # fmt: skip
    if isinstance(value, list):
        return [_refs_to_components(v) for v in value]
    return value


def documents() -> dict[str, str]:
    """File name -> text, as committed under ``docs/schema``."""
    out = {
        f"{stem}.schema.json": json.dumps(direction_schema(union, title), indent=2, sort_keys=True) + "\n"
        for stem, union, title in DIRECTIONS
    }
    out["asyncapi.json"] = json.dumps(asyncapi(), indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in documents().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
