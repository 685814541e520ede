"""Every wire model's JSON Schema against a committed copy: a breaking change must be a decision.

After a deliberate change, regenerate with ``SKYBUS_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_schema_snapshot.py``
and commit the new ``tests/snapshots/wire_schemas.json`` with the change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from schemas.registry import all_message_types

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "wire_schemas.json"


def current_schemas() -> dict[str, dict]:
    return {model.message_type: model.model_json_schema() for model in all_message_types()}


def test_wire_schemas_match_the_snapshot() -> None:
    schemas = current_schemas()
    if os.environ.get("SKYBUS_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(schemas, indent=2, sort_keys=True) + "\n")
    committed = json.loads(SNAPSHOT.read_text())
    assert sorted(schemas) == sorted(committed), "message types were added or removed"
    for name, schema in schemas.items():
        assert schema == committed[name], f"the wire schema of {name!r} changed"
