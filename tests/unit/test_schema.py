"""The wire protocol's schemas in ``docs/schema`` are the code's (regenerated and compared),
and every JSON example in ``docs/protocol.md`` is valid against them and against the
decoders, with an example for every message type."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from linguamesh import protocol as p
from linguamesh.protocol.schema import DIRECTIONS, documents

from ..procs import cli

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "docs" / "schema"
#: the section headings of docs/protocol.md's examples -> (schema stem, decoder)
SECTIONS = {
    "`/ws/session`, client → scheduler": ("session-client", p.decode_client),
    "`/ws/session`, scheduler → client": ("session-server", p.decode_event),
    "`/ws/node`, node → scheduler": ("node-node", p.decode_node),
    "`/ws/node`, scheduler → node": ("node-server", p.decode_to_node),
}


def examples() -> list[tuple[str, str]]:
    """(section, JSON text) of every ```json block under an examples heading."""
    out: list[tuple[str, str]] = []
    section = None
    for block in re.split(r"(?m)^(### .*)$", (ROOT / "docs" / "protocol.md").read_text()):
        if block.startswith("### "):
            section = block[4:].strip()
            continue
        if section in SECTIONS:
            out += [(section, text) for text in re.findall(r"```json\n(.*?)```", block, re.S)]
    return out


def test_the_committed_schemas_are_the_codes() -> None:
    for name, text in documents().items():
        committed = SCHEMA_DIR / name
        assert committed.exists() and committed.read_text() == text, (
            f"docs/schema/{name} differs from the code: run `linguamesh schema --out docs/schema`"
        )
    check = subprocess.run(cli("schema", "--check", "--out", str(SCHEMA_DIR)), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_check_fails_on_a_stale_schema(tmp_path: Path) -> None:
    for name, text in documents().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "session-client.schema.json").write_text("{}\n")
    check = subprocess.run(cli("schema", "--check", "--out", str(tmp_path)), capture_output=True, text=True)
    assert check.returncode != 0 and "session-client.schema.json" in check.stderr


@pytest.mark.parametrize(("section", "text"), examples(), ids=lambda x: x[:40] if isinstance(x, str) else "")
def test_each_example_is_valid(section: str, text: str) -> None:
    stem, decode = SECTIONS[section]
    schema = json.loads((SCHEMA_DIR / f"{stem}.schema.json").read_text())
    instance = json.loads(text)
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)
    decoded = decode(text.encode())  # the server's own decoder takes it
    again = msgspec.json.decode(p.encode(decoded))  # and nothing is lost on the way back
    defaults = {
        f.encode_name: f.default_factory() if f.default is msgspec.NODEFAULT else f.default
        for f in msgspec.structs.fields(type(decoded))
        if f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT
    }
    dropped = {k: v for k, v in instance.items() if k not in again}
    assert all(defaults.get(k, object()) == v for k, v in dropped.items()), f"dropped {dropped}"


def test_every_message_type_has_an_example() -> None:
    seen: dict[str, set[str]] = {stem: set() for stem, _ in SECTIONS.values()}
    for section, text in examples():
        seen[SECTIONS[section][0]].add(json.loads(text)["type"])
    for stem, union, _title in DIRECTIONS:
        wanted = {t.__struct_config__.tag for t in union.__args__}
        assert wanted <= seen[stem], f"{stem}: no example of {sorted(wanted - seen[stem])}"


def test_the_asyncapi_document_names_both_channels_and_every_message() -> None:
    doc: dict[str, Any] = json.loads((SCHEMA_DIR / "asyncapi.json").read_text())
    assert doc["asyncapi"].startswith("3.") and {c["address"] for c in doc["channels"].values()} == {
        "/ws/session",
        "/ws/node",
    }
    refs = re.findall(r'"\$ref": "#/components/schemas/([A-Za-z]+)"', json.dumps(doc))
    assert refs and set(refs) <= set(doc["components"]["schemas"])  # every reference resolves
